"""Every code sample in the docs runs here, and does what its page says.

The pages show only ``docs/examples/*.py`` (through ``literalinclude``) and
the docstrings that ``docs/api.rst`` pulls in.  Each example is imported
under its own module name and run against a real Celery app in eager mode
(broker ``memory://``, backend ``cache+memory://``).  The docstrings' code
must appear in an example (so it runs there) or be listed below with the
reason it is shown differently.
"""

from __future__ import absolute_import

import doctest
import gc
import inspect
import io
import json
import os
import re
import sys
import textwrap
import threading
import time
import uuid
import weakref

import celery
import pytest
from celery import _state
from celery.signals import worker_init

import celery_ctxthread as cct
from tests.conftest import REPO_DIR, needs_contextvars
from tests.helpers.servers import wait_until
from tests.helpers.tasks_inprocess import probe, run_bounded, running

DOCS = os.path.join(REPO_DIR, 'docs')
EXAMPLES = os.path.join(DOCS, 'examples')
EAGER = {
    'broker_url': 'memory://',
    'result_backend': 'cache+memory://',
    'task_always_eager': True,
    'task_eager_propagates': True,
}


def _import_file(name, path):
    if sys.version_info[0] == 2:
        import imp

        return imp.load_source(name, path)
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load(name):
    """Import ``docs/examples/<name>.py`` once; its app runs tasks eagerly."""
    module_name = 'cct_docs_example_' + name
    if module_name in sys.modules:
        return sys.modules[module_name]
    previous_app = _state._tls.current_app  # Celery(...) makes itself current
    try:
        module = _import_file(module_name, os.path.join(EXAMPLES, name + '.py'))
    finally:
        _state._tls.current_app = previous_app
    module.app.conf.update(EAGER)
    return module


def stored(module, task_id):
    """(state, meta) in the backend.  Celery refuses (4.3) or warns (4.4+) when
    results are read in eager mode, as only update_state stores there."""
    conf = module.app.conf
    conf.task_always_eager = False
    try:
        meta = module.app.backend.get_task_meta(task_id)
    finally:
        conf.task_always_eager = True
    return meta['status'], meta['result']


@pytest.fixture
def no_install():
    """Leave install() as the test found it."""
    was_installed = cct.installed()
    yield
    if not was_installed:
        cct.uninstall()


# ------------------------------------------------------------ the pages


def test_why_a_plain_thread_loses_the_task():
    bug = load('bug')
    seen = bug.crunch.delay().get()
    assert seen['current_task'] is None
    assert seen['request_id'] is None
    if celery.VERSION >= (5, 3):  # before 5.3 nothing checks the id
        assert 'task_id must not be empty' in seen['error']


def test_taskthread_sees_the_task_and_stores_progress():
    example = load('taskthread')
    result = example.crunch.delay([1, 2, 3])
    assert result.get() == result.id
    status, meta = stored(example, result.id)
    assert status == 'PROGRESS'  # eager mode does not store the final SUCCESS
    assert meta['part'] in (1, 2, 3)


def test_cancellable_loops_stop_when_their_task_is_over():
    example = load('cancellable_loop')
    result = example.watch.delay(0.2)
    assert result.get() == 0.2
    time.sleep(0.3)  # both loops wake at once when the task is over: nothing more is seen
    assert len(example.seen[result.id]) == 1  # poll's first turn; the heartbeat's 5 s never passed
    done = example.give_up.delay(list(range(1000))).get()
    assert done[-1] == cct.CANCELLED_BY_HAND and len(done) < 1000
    task_id = str(uuid.uuid4())
    running = threading.Thread(target=lambda: example.watch.apply_async((2.0,), task_id=task_id))
    running.start()
    assert wait_until(lambda: example.seen[task_id], 5)
    assert example.stop(example.app.AsyncResult(task_id)) is True
    running.join(10)
    assert len(example.seen[task_id]) == 1  # stopped when cancelled: not polled again at 1 s
    assert example.pool._jobs_outlive_task is True


def test_tasktimer_fires_in_the_task():
    example = load('timer')
    result = example.convert.delay(0.5, warn_after=0.05)
    assert result.get() == 0.5
    assert stored(example, result.id)[0] == 'SLOW'
    in_time = example.convert.delay(0.0)
    assert stored(example, in_time.id)[0] == 'PENDING'


def test_shared_executor_gives_each_job_its_submitter():
    example = load('shared_executor')
    urls = ['a', 'b', 'c', 'd']
    for _ in range(2):
        result = example.fetch_all.delay(urls)
        assert result.get() == [(url, result.id) for url in urls]


def test_submit_runs_each_job_in_the_task():
    example = load('submit')
    result = example.compare.delay('a', 'b')
    assert result.get() == [('a', result.id), ('b', result.id)]


def test_one_snapshot_runs_in_many_threads_at_once():
    example = load('capture_run')
    result = example.fan_out.delay(3)
    assert result.get() == [result.id] * 3


def test_wrap_runs_in_a_third_party_pool():
    example = load('third_party_pool')
    result = example.crunch.delay(3)
    assert result.get() == 3
    assert stored(example, result.id) == ('PROGRESS', {'step': 3})


def test_install_covers_library_threads_and_opt_out_leaves_one_out(no_install):
    example = load('install_patch')
    assert cct.installed()
    result = example.uses_a_library.delay()
    assert result.get() == [result.id, result.id]
    assert wait_until(lambda: example.watchdog_saw, 10.0, interval=0.01)
    assert example.watchdog_saw == [None]


class _Worker(object):
    def __init__(self, app):
        self.app = app


def test_worker_switch_installs_from_the_setting(no_install, monkeypatch):
    monkeypatch.delenv(cct.worker.ENVIRONMENT_VARIABLE, raising=False)
    example = load('worker_switch')
    cct.uninstall()
    worker_init.send(sender=_Worker(example.app))
    assert cct.installed()


def test_worker_switch_environment_wins(monkeypatch):
    example = load('worker_switch')
    monkeypatch.setenv(cct.worker.ENVIRONMENT_VARIABLE, '0')
    assert not cct.worker.install_requested(example.app)
    monkeypatch.setenv(cct.worker.ENVIRONMENT_VARIABLE, '1')
    assert cct.worker.install_requested(celery.Celery('other', set_as_current=False))


def test_eager_mode_example_passes():
    load('eager_mode').test_threads_see_the_eager_task()


@needs_contextvars
def test_each_job_gets_a_fresh_copy_of_its_submitters_contextvars():
    example = load('contextvars_pool')
    first = example.report.delay('a')
    second = example.report.delay('b')  # same pool thread as the first job
    assert first.get() == ('a', first.id)
    assert second.get() == ('b', second.id)


def test_a_library_thread_started_in_a_task_keeps_it_and_one_started_before_does_not(
    no_install, monkeypatch
):
    from celery.signals import worker_process_init

    example = load('background_thread')
    cct.install()  # the example installs at import; an earlier test may have undone it
    # The problem: the flusher starts on first use, inside the first task.
    lazy = example.MetricsClient()
    monkeypatch.setattr(example, 'metrics', lazy)
    first = example.place_order.delay(1)
    example.place_order.delay(2)  # another task: its metric is flushed as the first one's
    lazy.stop()
    assert lazy.sent == [('orders', first.id), ('orders', first.id)]
    # ...and keeps that task's request alive for as long as it runs.
    lazy = example.MetricsClient()
    with running(probe, 'first'):
        request = weakref.ref(probe.request)
        lazy.increment('orders')
    gc.collect()
    kept = request() is not None
    lazy.stop()
    gc.collect()
    assert kept and request() is None
    # The fix: started in worker_process_init, before any task, it carries none.
    fixed = example.MetricsClient()
    monkeypatch.setattr(example, 'metrics', fixed)
    worker_process_init.send(sender=None)
    assert fixed.flusher is not None
    example.place_order.delay(1)
    example.place_order.delay(2)
    fixed.stop()
    assert fixed.sent == [('orders', None), ('orders', None)]


def test_asyncio_default_executor_runs_jobs_in_the_task():
    pytest.importorskip('asyncio')
    example = load('asyncio_executor')
    result = example.crunch.delay([1, 2, 3])
    assert result.get() == [(1, result.id), (2, result.id), (3, result.id)]


def _require(neighbour, *modules):
    """Skip without the neighbour's modules; fail under CI where the cell expects it."""
    from tests.conftest import unavailable
    from tests.helpers import neighbours

    for module in modules:
        try:
            __import__(module)
        except ImportError as exc:
            reason = '%s: %s' % (neighbour, exc)
            if neighbour in neighbours.expected():
                unavailable(reason + ', but %s names it' % neighbours.EXPECT_VARIABLE)
            pytest.skip(reason)


def _neighbour_check(check, order):
    """Run tests/helpers/neighbour_checks.py in a fresh process: patches there cannot be undone."""
    root = os.path.dirname(DOCS)
    command = [sys.executable, '-m', 'tests.helpers.neighbour_checks', check, order]
    env = dict(os.environ, PYTHONPATH=root)
    env.pop('SENTRY_DSN', None)
    returncode, output = run_bounded(command, 120, cwd=root, env=env)
    assert returncode == 0, output
    return json.loads(output.strip().splitlines()[-1])['report']


@pytest.mark.parametrize('order', ['init-first', 'install-first'])
def test_sentry_in_either_order(order):
    # The check runs load('sentry_setup') in its own process.
    _require('sentry', 'sentry_sdk')
    if not hasattr(sys.modules['sentry_sdk'], 'get_isolation_scope'):
        pytest.skip('sentry-sdk 2.x')
    report = _neighbour_check('sentry', order)
    ids, task_id = report.pop('example')
    assert ids == [[1, task_id], [2, task_id]]
    # [task id seen, the task's tag seen, a scope of its own, the task's tag afterwards]
    forked = ['abc', 'task', True, 'task']
    assert report.pop('ThreadPoolExecutor') == forked  # Sentry forks its scope per job
    for name in ('ThreadPool', 'wrap', 'TaskContext.run'):  # no fork: the task's scope
        assert report.pop(name) == ['abc', 'task', False, 'job'], name
    for name in ('ThreadPool', 'wrap'):  # unless the job opens a scope of its own
        assert report.pop(name + ', isolation_scope') == forked, name
    assert report == {}


@pytest.mark.parametrize('order', ['install-first', 'instrument-first'])
def test_opentelemetry_in_either_order(order):
    # The check runs load('otel_setup') in its own process.
    _require(
        'otel',
        'opentelemetry.instrumentation.threading',
        'opentelemetry.instrumentation.celery',
        'opentelemetry.sdk',
    )
    report = _neighbour_check('otel', order)
    ids, task_id = report.pop('example ids')
    assert ids == [task_id, task_id]
    assert report.pop('example task spans') == 1
    assert report.pop('example children') == ['work 1', 'work 2']
    # [task id seen, the job's span is a child of the task's span]
    names = ('Timer', 'ThreadPoolExecutor', 'ThreadPool')
    assert report == {name: ['abc', True] for name in names}


def _agent_check(check, variant):
    """Run tests/helpers/agent_checks.py in a fresh process: an agent keeps its threads for good."""
    root = os.path.dirname(DOCS)
    command = [sys.executable, '-m', 'tests.helpers.agent_checks', check, variant]
    env = dict(os.environ, PYTHONPATH=root)
    for name in list(env):
        if name.startswith(('ELASTIC_APM_', 'NEW_RELIC_', 'DJANGO_')):
            del env[name]
    returncode, output = run_bounded(command, 120, cwd=root, env=env)
    reports = [line for line in output.splitlines() if line.startswith('{"check"')]
    assert returncode == 0 and reports, output
    return json.loads(reports[-1])['report']


ELASTIC_THREAD = 'eapm event processor thread'


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='a prefork pool process is a fork')
def test_elastic_apm_threads_started_in_worker_process_init_carry_no_task():
    # The check runs load('elastic_apm_setup') in its own process.
    _require('elasticapm', 'elasticapm')
    child = _agent_check('elasticapm', 'recipe')['child']
    assert ELASTIC_THREAD in child['threads'], child
    assert set(child['threads'].values()) == {None}, child


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='a prefork pool process is a fork')
def test_elastic_apm_restarts_its_threads_in_the_first_task():
    """Without the recipe, the forked process's first task_postrun starts them in that task."""
    _require('elasticapm', 'elasticapm')
    child = _agent_check('elasticapm', 'without')['child']
    first = child['tasks'][0]
    assert child['threads'][ELASTIC_THREAD] == first, child
    assert set(child['threads'].values()) == {first}, child


def test_new_relic_registered_in_worker_init_keeps_its_thread_out_of_tasks():
    # The check runs load('newrelic_setup') in its own process.
    _require('newrelic', 'newrelic')
    report = _agent_check('newrelic', 'recipe')
    assert report['before'] == ['NR-Harvest-Thread']
    assert report['threads'] == {'NR-Harvest-Thread': None}


def test_new_relic_starts_its_harvest_thread_in_the_first_task():
    _require('newrelic', 'newrelic')
    report = _agent_check('newrelic', 'without')
    assert report['before'] == []
    assert report['threads'] == {'NR-Harvest-Thread': report['tasks'][0]}


@pytest.mark.skipif(not os.path.isdir('/proc/self/fd'), reason='counts open files in /proc')
@pytest.mark.parametrize('variant', ['recipe', 'without'])
def test_django_connections_closed_when_each_threads_work_is_done(variant):
    # The check runs load('django_threads') in its own process.
    _require('django', 'django')
    report = _agent_check('django', variant)
    assert report.pop('counts') == {'a': 1, 'b': 1, 'c': 1}
    assert report.pop('pool counts') == [1, 1, 1]
    if variant == 'recipe':
        assert set(report.values()) == {0}, report
    else:  # each dead thread's connection is open until the collector runs
        assert report['open after the threads'] == 3, report
        # ...and each of the pool's live threads keeps its own (1 to 3 threads ran the jobs)
        in_pool = report['open after the pool jobs'] - 3
        assert 1 <= in_pool <= 3 and report['open after the collector'] == in_pool, report


def _green_example(example):
    result = example.crunch.delay([1, 2])
    assert result.get() == [(1, result.id), (2, result.id)]


def test_gevent_spawn_with_wrap():
    pytest.importorskip('gevent')
    _green_example(load('gevent_spawn'))


def test_eventlet_spawn_with_wrap():
    pytest.importorskip('eventlet')
    _green_example(load('eventlet_spawn'))


# ------------------------------------------- every sample is one of these


def _page_texts():
    for name in sorted(os.listdir(DOCS)):
        if name.endswith('.rst'):
            with io.open(os.path.join(DOCS, name), encoding='utf-8') as handle:
                yield name, handle.read()


def test_pages_show_code_only_from_examples():
    included = set()
    for name, text in _page_texts():
        directives = r'^\s*\.\. (?:code-block|code|sourcecode)::\s*(\S*)'
        for language in re.findall(directives, text, re.M):
            assert language in ('console', 'text'), '%s: a %r block; use docs/examples/' % (
                name,
                language,
            )
        assert '>>>' not in text, '%s: a doctest block; use docs/examples/' % name
        for path in re.findall(r'^\s*\.\. literalinclude::\s*(\S+)', text, re.M):
            assert path.startswith('examples/'), (name, path)
            included.add(path[len('examples/') :])
    examples = {n for n in os.listdir(EXAMPLES) if n.endswith('.py')}
    assert included == examples, 'examples not shown on any page, or missing'
    for name in examples:  # the pages show each from line 3 (`:lines: 3-`)
        with io.open(os.path.join(EXAMPLES, name), encoding='utf-8') as handle:
            first, second = handle.readline(), handle.readline()
        assert first.startswith('"""') and first.rstrip().endswith('"""'), name
        assert not second.strip(), name
    tested = set(re.findall(r"load\('(\w+)'\)", _source_of_this_file()))
    assert tested == {n[:-3] for n in examples}, 'every example needs a test here'


def _source_of_this_file():
    with io.open(__file__.replace('.pyc', '.py'), encoding='utf-8') as handle:
        return handle.read()


# Docstring lines that api.rst shows but that no example runs as written.
NOT_RUN_AS_SHOWN = {
    # The example takes the delay as an argument, so the test need not wait 5 s.
    "cct.TaskTimer(5.0, self.update_state, kwargs={'state': 'SLOW'}).start()": (
        'timer.py',
        "cct.TaskTimer(warn_after, self.update_state, kwargs={'state': 'SLOW'})",
    ),
}
# Lines of literal blocks that are not Python.
NOT_PYTHON = (
    'CELERY_CTXTHREAD_INSTALL=1 celery',  # shell: test_worker_switch_environment_wins
    'celery_ctxthread.guard: task ',  # log output: tests/unit/test_late_and_switch.py
    'from thread ',
)


def _documented_objects():
    """(name, object) for each autodoc directive in api.rst, members included."""
    with io.open(os.path.join(DOCS, 'api.rst'), encoding='utf-8') as handle:
        text = handle.read()
    module = 'celery_ctxthread'
    found = []
    for kind, name in re.findall(r'^\.\. (currentmodule|module|auto\w+)::\s*([\w.]+)', text, re.M):
        if kind in ('currentmodule', 'module', 'automodule'):
            module = name
            if kind != 'automodule':
                continue
        path = name if kind == 'automodule' or '.' in name else module + '.' + name
        obj = sys.modules[path] if kind == 'automodule' else _resolve(path)
        found.append((path, obj))
        if inspect.isclass(obj):
            found.extend(
                (path + '.' + attr, value)
                for attr, value in sorted(vars(obj).items())
                if not attr.startswith('_') and getattr(value, '__doc__', None)
            )
    assert len(found) > 10, found
    return found


def _resolve(path):
    module, _, attr = path.rpartition('.')
    __import__(module)
    return getattr(sys.modules[module], attr)


def _literal_blocks(doc):
    lines = inspect.cleandoc(doc).splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.rstrip().endswith('::'):
            continue
        block = []
        while index < len(lines) and (not lines[index].strip() or lines[index][:1] == ' '):
            block.append(lines[index])
            index += 1
        yield textwrap.dedent('\n'.join(block)).strip()


def _normalize(line):
    return ' '.join(line.split('  #')[0].split())


def _example_lines():
    lines = set()
    for name in os.listdir(EXAMPLES):
        if name.endswith('.py'):
            with io.open(os.path.join(EXAMPLES, name), encoding='utf-8') as handle:
                lines.update((name, _normalize(line)) for line in handle)
    return lines


def test_docstring_samples_run_in_an_example():
    examples = _example_lines()
    missing = []
    for path, obj in _documented_objects():
        for block in _literal_blocks(getattr(obj, '__doc__', None) or ''):
            if block.startswith('>>>'):
                test = doctest.DocTestParser().get_doctest(block, {}, path, None, 0)
                runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
                runner.run(test)
                assert runner.failures == 0, path
                continue
            for line in block.splitlines():
                line = _normalize(line)
                if not line or line.startswith('#') or line.startswith(NOT_PYTHON):
                    continue
                where, line = NOT_RUN_AS_SHOWN.get(line, (None, line))
                if not any(line in text for name, text in examples if where in (None, name)):
                    missing.append('%s: %s' % (path, line))
    assert not missing, 'docstring code no example runs:\n' + '\n'.join(missing)
