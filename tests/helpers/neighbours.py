"""The neighbours that patch threads too (Sentry, OpenTelemetry, ddtrace), applied in a given order.

Used in two places, with the same checks:

- ``python -m tests.helpers.neighbour_probe sentry,otel,install`` applies the order in
  a fresh interpreter (Sentry has no uninstall) and runs every entry point
  inside a simulated task (tests/integration/test_neighbours.py);
- a worker started with ``CCT_WORKER_NEIGHBOURS=sentry,install,otel`` applies
  it when it imports its tasks (tests/helpers/neighbours_tasks.py), and its task runs
  the same entry points (tests/integration/test_neighbours_worker.py).

An order is a sequence of steps: ``sentry`` (``sentry_sdk.init()``), ``otel``
(``ThreadingInstrumentor().instrument()``), ``ddtrace``
(``ddtrace.patch(futures=True)``, which wraps ``ThreadPoolExecutor.submit`` by
rewriting its code in place), ``install`` and ``uninstall``
(``celery_ctxthread``'s).  What each entry point must give its target, in
every order: the task (``current_task``, ``self.request``, ``update_state``),
Sentry's forked scope (tags set in the task are seen, tags set in the job do
not leak back), OpenTelemetry's parent span (the one current in the task),
and ddtrace's (likewise).

Sentry never reaches the network: its DSN names a reserved ``.invalid`` host
and its transport records events in :data:`EVENTS`.  Neither does ddtrace:
see :func:`_quiet_ddtrace`.  Python 2.7 compatible; the neighbours are
imported only when a step needs them.
"""

from __future__ import absolute_import

import functools
import os
import socket
import sys
import threading
import traceback

#: The order a worker applies when it imports its tasks, e.g. ``sentry,install,otel``.
ORDER_VARIABLE = 'CCT_WORKER_NEIGHBOURS'
#: The neighbours a grid cell installs (tox.ini): missing ones fail under CI, not skip.
EXPECT_VARIABLE = 'CCT_EXPECT_NEIGHBOURS'
#: The module each neighbour needs.
MODULES = {
    'sentry': 'sentry_sdk',
    'otel': 'opentelemetry.instrumentation.threading',
    'ddtrace': 'ddtrace',
}
SENTRY_DSN = 'https://public@sentry.invalid/1'
TRACER_NAME = 'celery-ctxthread.tests'
JOIN_TIMEOUT = 20.0

#: Every event Sentry would have sent from this process.
EVENTS = []
#: Uncaught errors of threads, as text (Python 3.8+ reports them to a hook).
THREAD_ERRORS = []
#: The steps applied so far in this process, in order.
APPLIED = []


# ---------------------------------------------------------- the steps


def parse(text):
    """``'sentry,otel'`` -> ``('sentry', 'otel')``."""
    return tuple(step.strip() for step in text.split(',') if step.strip())


def available(neighbour):
    try:
        __import__(MODULES[neighbour])
    except ImportError:
        return False
    return True


def expected():
    """The neighbours this grid cell is supposed to have."""
    return set(parse(os.environ.get(EXPECT_VARIABLE, '')))


def apply(order, celery_worker=False):
    """Apply each step of ``order``, in order, once per process."""
    for step in order:
        STEPS[step](celery_worker)
        APPLIED.append(step)


def apply_from_env(environ=os.environ):
    """Apply the order in ``CCT_WORKER_NEIGHBOURS``, as a worker does at import."""
    apply(parse(environ.get(ORDER_VARIABLE, '')), celery_worker=True)


def _init_sentry(celery_worker):
    import sentry_sdk
    from sentry_sdk.integrations.threading import ThreadingIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        transport=_memory_transport(),
        integrations=[ThreadingIntegration(**_sentry_threading_options())],
    )


def _sentry_threading_options():
    """Sentry 1.x forks the starter's hub into a thread only when asked (2.x always does)."""
    import sentry_sdk

    if int(sentry_sdk.VERSION.split('.')[0]) < 2:
        return {'propagate_hub': True}
    return {}


def _memory_transport():
    """A Sentry transport class that records events instead of sending them."""
    from sentry_sdk.transport import Transport

    class MemoryTransport(Transport):
        def capture_event(self, event):  # Sentry 1.x, for errors and messages
            EVENTS.append(event)

        def capture_envelope(self, envelope):
            event = envelope.get_event()
            if event is not None:
                EVENTS.append(event)

    return MemoryTransport


def _instrument_otel(celery_worker):
    from opentelemetry import trace
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    # The SDK's spans keep their parent, which is all the checks read: no exporter.
    trace.set_tracer_provider(TracerProvider())
    ThreadingInstrumentor().instrument()
    if celery_worker:
        _instrument_celery_in_pool_processes()


def _instrument_celery_in_pool_processes():
    """CeleryInstrumentor where OpenTelemetry says: in each prefork child, else at start."""
    from celery.signals import worker_init, worker_process_init

    worker_process_init.connect(_instrument_celery, weak=False)
    worker_init.connect(_instrument_celery_unless_prefork, weak=False)


def _instrument_celery(**kwargs):
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()


def _instrument_celery_unless_prefork(sender=None, **kwargs):
    # worker_init runs in the main process, before the pool starts: prefork
    # children instrument themselves in worker_process_init instead.
    pool = getattr(sender, 'pool_cls', None)  # 'prefork', or a pool class
    name = pool.__module__ if isinstance(pool, type) else str(pool)
    if 'prefork' not in name:
        _instrument_celery()


def _patch_ddtrace(celery_worker):
    _quiet_ddtrace()
    import ddtrace

    # What ddtrace-run / ddtrace.auto do for executors, alone: wrap(ThreadPoolExecutor.submit)
    # in place, so that each job runs in the submitter's trace context.
    ddtrace.patch(futures=True)


#: A loopback socket bound and never listening: connecting to it is refused.
_DEAD_PORT = []


def _quiet_ddtrace():
    """ddtrace's settings (read when it is imported) for sending nothing anywhere.

    Tracing off (spans are still made, with their parents, and nothing is
    queued to send), no telemetry, remote configuration, runtime metrics,
    profiling, crash tracking or startup logs; and should anything try all the
    same, the agent and DogStatsD are a loopback port where nobody listens.
    """
    if not _DEAD_PORT:
        dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        dead.bind(('127.0.0.1', 0))
        _DEAD_PORT.append(dead)
    port = _DEAD_PORT[0].getsockname()[1]
    os.environ.update(
        DD_TRACE_ENABLED='false',
        DD_INSTRUMENTATION_TELEMETRY_ENABLED='false',
        DD_REMOTE_CONFIGURATION_ENABLED='false',
        DD_RUNTIME_METRICS_ENABLED='false',
        DD_PROFILING_ENABLED='false',
        DD_CRASHTRACKING_ENABLED='false',
        DD_DATA_STREAMS_ENABLED='false',
        DD_TRACE_STARTUP_LOGS='false',
        DD_TRACE_AGENT_URL='http://127.0.0.1:%d' % port,
        DD_DOGSTATSD_URL='udp://127.0.0.1:%d' % port,
    )


def _install(celery_worker):
    import celery_ctxthread as cct

    cct.install()


def _uninstall(celery_worker):
    import celery_ctxthread as cct

    cct.uninstall()


STEPS = {
    'sentry': _init_sentry,
    'otel': _instrument_otel,
    'ddtrace': _patch_ddtrace,
    'install': _install,
    'uninstall': _uninstall,
}


def installed_at_end(order):
    """Whether ``install()`` is in force after ``order``."""
    state = False
    for step in order:
        state = {'install': True, 'uninstall': False}.get(step, state)
    return state


def record_thread_errors():
    """Keep uncaught thread errors, to show them when a check fails."""
    hook = getattr(threading, 'excepthook', None)
    if hook is None:  # before 3.8 they are only printed
        return

    def keep(args):
        THREAD_ERRORS.append(
            ''.join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
        )
        hook(args)

    threading.excepthook = keep


# ---------------------------------------------------- the entry points


def _in_to_thread(fn):
    import asyncio

    # Not asyncio.run(): its wait for the default executor's shutdown is unbounded.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(asyncio.to_thread(fn), JOIN_TIMEOUT))
    finally:
        loop.close()


# Whether Sentry forks the scope for an entry point depends on its kind:
THREAD = 'thread'  # yes: Sentry's Thread.start forks the starter's scope
# Only when Sentry came before OpenTelemetry: OpenTelemetry gives Timer a start
# of its own, wrapping the Thread.start of that moment, and Sentry's later patch
# of Thread.start never sees a Timer (without celery_ctxthread too).
TIMER = 'timer'
JOB = 'job'  # Sentry 2.x forks it in ThreadPoolExecutor.submit; Sentry 1.x does not
# No: it runs in a copy of contextvars taken in the task (asyncio's to_thread, and
# our wrap(), which captures when it is called), so Sentry's fork is undone.
COPY = 'copy'


def entry_points():
    """``name -> (runner, kind, plain)``; ``plain``: propagates only under install().

    A runner calls ``fn`` through its entry point and returns what ``fn`` returned.
    """
    from tests.helpers import integration_tasks as tasks

    runners = tasks.RUNNERS
    table = {
        'TaskThread': (runners['TaskThread'], THREAD, False),
        'TaskTimer': (runners['TaskTimer'], TIMER, False),
        'submit()': (runners['submit'], THREAD, False),
        'TaskThreadPoolExecutor.submit': (runners['executor'], JOB, False),
        'TaskThreadPoolExecutor.map': (runners['executor_map'], JOB, False),
        'wrap() on a Thread': (runners['wrap'], COPY, False),
        'Thread': (tasks.PLAIN_THREAD, THREAD, True),
        'Timer': (tasks.PLAIN_TIMER, TIMER, True),
        'ThreadPoolExecutor.submit': (tasks._in_plain_pool, JOB, True),
    }
    if sys.version_info >= (3, 9):
        table['asyncio.to_thread'] = (_in_to_thread, COPY, True)
    return table


# ------------------------------------------------- what a job observes


def _sentry():
    return sys.modules.get('sentry_sdk') if 'sentry' in APPLIED else None


def _tracer():
    if 'otel' not in APPLIED:
        return None
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)


def _dd_tracer():
    if 'ddtrace' not in APPLIED:
        return None
    from ddtrace import tracer

    return tracer


def current_dd_span():
    """The id of ddtrace's span current here, as text, or None."""
    tracer = _dd_tracer()
    span = tracer.current_span() if tracer is not None else None
    return None if span is None else str(span.span_id)


def current_span():
    """``{'name', 'span_id', 'trace_id'}`` of the span current here, or None."""
    if 'otel' not in APPLIED:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return {
        'name': getattr(span, 'name', None),
        'span_id': '%016x' % context.span_id,
        'trace_id': '%032x' % context.trace_id,
    }


def _message(where, entry, task_id):
    return 'cct %s %s %s' % (where, entry, task_id)


def _tags_of(message):
    for event in EVENTS:
        if event.get('message') == message:
            return event.get('tags') or {}
    return None


def _job_tag(entry):
    return 'cct.job.' + entry


def observe_in_job(task, entry, task_id):
    """The target of every entry point: what it sees, and a state update."""
    from tests.helpers.integration_tasks import seen_ids

    facts = {'ids': seen_ids(task)}
    sentry = _sentry()
    if sentry is not None:
        sentry.set_tag(_job_tag(entry), 'set in the job')
        sentry.capture_message(_message('in', entry, task_id))
    tracer = _tracer()
    if tracer is not None:
        with tracer.start_as_current_span('cct job ' + entry) as span:
            parent = span.parent
            facts['span_parent'] = '%016x' % parent.span_id if parent is not None else None
            facts['span_trace'] = '%032x' % span.get_span_context().trace_id
    dd_tracer = _dd_tracer()
    if dd_tracer is not None:
        with dd_tracer.trace('cct job ' + entry) as span:
            facts['dd_parent'] = None if span.parent_id is None else str(span.parent_id)
    try:
        task.update_state(state='PROGRESS', meta={'entry': entry})
        facts['update_state'] = 'ok'
    except Exception as exc:  # reported back, checked where the task should propagate
        facts['update_state'] = '%s: %s' % (type(exc).__name__, exc)
    return facts


def check_entry(task, entry, run):
    """Run ``observe_in_job`` through ``run`` from the task; the facts of both sides."""
    task_id = task.request.id
    try:
        facts = run(functools.partial(observe_in_job, task, entry, task_id))
    except Exception:
        return {'error': traceback.format_exc()}
    stored = task.backend.get_task_meta(task_id)
    facts['stored'] = {'status': stored.get('status'), 'result': stored.get('result')}
    sentry = _sentry()
    if sentry is not None:
        sentry.capture_message(_message('after', entry, task_id))
        facts['tags_in_job'] = _tags_of(_message('in', entry, task_id))
        facts['tags_after_job'] = _tags_of(_message('after', entry, task_id))
    return facts


def observe_entry_points(task, emit=None):
    """In the task: run every entry point; a JSON-able report for :func:`problems`.

    ``emit(path, value)``, when given, gets each part as soon as it is known
    (``report[path[0]][path[1]] = value``), so a probe that hangs later still
    tells what it saw: see :func:`assemble`.
    """
    report = {'entries': {}}

    def keep(path, value):
        put(report, path, value)
        if emit is not None:
            emit(path, value)

    task_id = task.request.id
    sentry = _sentry()
    if sentry is not None:
        sentry.set_tag('cct.task', task_id)
    context = {
        'task_id': task_id,
        'thread': threading.current_thread().name,
        'span': current_span(),
        'dd_span': current_dd_span(),
        'applied': list(APPLIED),
        'installed': installed_at_end(APPLIED),
        'sentry_forks_jobs': _sentry_forks_jobs(),
        'submit_wrapped_by_others': submit_wrapped_by_others(),
        'versions': versions(),
    }
    for key, value in sorted(context.items()):
        keep([key], value)
    for name, (run, _, _) in sorted(entry_points().items()):
        keep(['entries', name], check_entry(task, name, run))
    keep(['reproductions'], reproductions(task))
    keep(['thread_errors'], list(THREAD_ERRORS))
    return report


def put(report, path, value):
    """``report[path[0]]...[path[-1]] = value``, making the dicts on the way."""
    for key in path[:-1]:
        report = report.setdefault(key, {})
    report[path[-1]] = value


def assemble(parts):
    """The report from the ``(path, value)`` parts that :func:`observe_entry_points` emitted."""
    report = {'entries': {}}
    for path, value in parts:
        put(report, path, value)
    return report


def submit_wrapped_by_others():
    """What ``ThreadPoolExecutor.submit`` under install() answers: whether the job
    wrappers of others run around ours (and what they set stays on top)."""
    from concurrent.futures import ThreadPoolExecutor

    from celery_ctxthread._install_state import wrapped_by_others as _wrapped_by_others

    pool = ThreadPoolExecutor(1)  # starts no thread until a job comes
    try:
        return _wrapped_by_others(pool.submit)
    finally:
        pool.shutdown()


def _sentry_forks_jobs():
    """Sentry 2.x wraps ThreadPoolExecutor.submit to fork the scope per job; 1.x does not."""
    if _sentry() is None:
        return False
    from sentry_sdk.integrations import threading as sentry_threading

    return hasattr(sentry_threading, '_wrap_threadpool_executor_submit')


def versions():
    """The versions of the neighbours and of Celery in this process, for failure messages."""
    found = {}
    for name in ('sentry_sdk', 'opentelemetry.sdk.version', 'ddtrace', 'celery'):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, 'VERSION', None) or getattr(module, '__version__', None)
    return found


def reproductions(task):
    """The issue's reports: a TaskThread whose target is ``self.update_state``, and
    ``cct.submit(lambda: 1).result(timeout=5)``."""
    import celery_ctxthread as cct

    meta = {'reproduction': 'update_state as the target'}
    thread = cct.TaskThread(target=task.update_state, kwargs={'state': 'PROGRESS', 'meta': meta})
    thread.start()
    thread.join(JOIN_TIMEOUT)
    stored = task.backend.get_task_meta(task.request.id)
    found = {'update_state_target': {'status': stored['status'], 'result': stored['result']}}
    try:
        found['submit_result'] = cct.submit(lambda: 1).result(timeout=5)
    except Exception as exc:
        found['submit_result'] = '%s: %s' % (type(exc).__name__, exc)
    return found


# ---------------------------------------------------------- the checks


def problems(report, entry):
    """What ``entry`` got wrong in ``report``, as sentences; empty when all is right."""
    facts = report['entries'][entry]
    if 'error' in facts:
        return ['failed: %s' % facts['error']]
    _, kind, plain = entry_points()[entry]
    propagates = report['installed'] or not plain
    found = _celery_problems(report, facts, entry, propagates)
    if not propagates:
        # Plain threading without install(): how the neighbours treat it between
        # themselves is theirs (see outcome()), nothing of ours runs there.
        return found
    applied = report['applied']
    if 'sentry' in applied:
        forks = sentry_forks(applied, kind, report['sentry_forks_jobs'])
        found += _sentry_problems(report, facts, entry, forks)
    if 'otel' in applied:
        found += _otel_problems(report, facts)
    if 'ddtrace' in applied:
        found += _ddtrace_problems(report, facts)
    return found


def sentry_forks(applied, kind, forks_jobs):
    """Whether Sentry, set up in the order ``applied``, forks the scope for ``kind``.

    Where it does not, the job runs in a copy of the task's contextvars, which
    share the task's Sentry scope: the job sees the task's tags, and its own
    tags land in the task's scope, as with ``contextvars.copy_context().run``.
    """
    if kind == TIMER:
        return 'otel' not in applied or applied.index('sentry') < applied.index('otel')
    return kind == THREAD or (kind == JOB and forks_jobs)


def outcome(report, entry):
    """What ``entry``'s target got, as yes/no answers, to compare two orders."""
    facts = report['entries'][entry]
    if 'error' in facts:
        return {'error': facts['error']}
    found = {'task': facts['ids']['current_task'] == report['task_id']}
    if 'tags_in_job' in facts:
        found['sentry tag seen'] = (facts['tags_in_job'] or {}).get('cct.task') == report['task_id']
        found['sentry tag leaked'] = _job_tag(entry) in (facts['tags_after_job'] or {})
    if 'span_parent' in facts:
        found['task span parent'] = facts['span_parent'] == (report['span'] or {}).get('span_id')
    if 'dd_parent' in facts:
        found['task ddtrace span parent'] = facts['dd_parent'] == report.get('dd_span')
    return found


def _celery_problems(report, facts, entry, propagates):
    ids = facts['ids']
    if ids['thread'] == report['thread']:
        return ['ran in the task thread %r, not in a thread of its own' % ids['thread']]
    want = report['task_id'] if propagates else None
    found = []
    if (ids['current_task'], ids['self_request']) != (want, want):
        found.append('current_task / self.request.id: %r, expected %r' % (ids, want))
    if propagates and facts['update_state'] != 'ok':
        found.append('self.update_state failed: %s' % facts['update_state'])
    if propagates and facts['stored'] != {'status': 'PROGRESS', 'result': {'entry': entry}}:
        found.append('stored state: %r, expected its PROGRESS' % (facts['stored'],))
    return found


def _sentry_problems(report, facts, entry, forks):
    tags_in, tags_after = facts['tags_in_job'], facts['tags_after_job']
    if tags_in is None or tags_after is None:
        return ['Sentry recorded no event from the job or after it: %r' % (facts,)]
    found = []
    if tags_in.get('cct.task') != report['task_id']:
        found.append("the job did not see the task's Sentry tag: %r" % (tags_in,))
    if tags_in.get(_job_tag(entry)) != 'set in the job':
        found.append('the Sentry tag set in the job is not on its event: %r' % (tags_in,))
    if forks and _job_tag(entry) in tags_after:
        found.append("the job's Sentry tag leaked into the task's scope: %r" % (tags_after,))
    return found


def _otel_problems(report, facts):
    span = report['span']
    if span is None:
        return ['no OpenTelemetry span was current in the task']
    if (facts['span_parent'], facts['span_trace']) != (span['span_id'], span['trace_id']):
        return [
            "the job's span has parent %s in trace %s, expected the task's span %s in %s"
            % (facts['span_parent'], facts['span_trace'], span['span_id'], span['trace_id'])
        ]
    return []


def _ddtrace_problems(report, facts):
    if report.get('dd_span') is None:
        return ['no ddtrace span was current in the task']
    if facts['dd_parent'] != report['dd_span']:
        return [
            "the job's ddtrace span has parent %s, expected the task's span %s"
            % (facts['dd_parent'], report['dd_span'])
        ]
    return []


def all_problems(report):
    """``{entry: [problem, ...]}`` for every entry point with a problem."""
    found = {}
    for entry in sorted(report['entries']):
        wrong = problems(report, entry)
        if wrong:
            found[entry] = wrong
    return found


def describe(report, found):
    """A failure message: the order, the versions, each problem, the threads' errors."""
    applied, found_versions = report.get('applied', ()), report.get('versions')
    lines = ['order %s (%r):' % (','.join(applied), found_versions)]
    for entry, wrong in sorted(found.items()):
        lines.extend('  %s: %s' % (entry, problem) for problem in wrong)
    if report.get('thread_errors'):
        lines.append('uncaught errors in threads:')
        lines.extend(report['thread_errors'])
    return '\n'.join(lines)
