"""Benchmarks for celery-ctxthread: what propagation costs, next to its peers.

Run from the repository root (the checkout is measured, installed or not)::

    python bench/bench.py            # full run: a few minutes
    python bench/bench.py --quick    # CI smoke: small N, well under a minute
    python bench/bench.py --instructions --check bench/budget.json  # CI's gate

Optional peers (``pip install -r bench/requirements.txt``): OpenTelemetry's
``ThreadingInstrumentor`` and Sentry's ``ThreadingIntegration``; without them
their rows say so.

Every comparison runs its variants *interleaved*, round by round (the order
flips every round), after a warm-up, so that machine noise hits all of them.
A ratio is the median of the per-round ratios; a time is the median over the
rounds, with the interquartile range.  Each group runs in its own subprocess:
``USE_FAST_LOCALS`` is read when Celery is imported, and the peers' patches
are process-wide.

The targets are printed next to the measured ratios as PASS/MISS.  A timing
never makes this script fail; only a leak found by the weakref check does, and,
with ``--instructions --check``, an instruction count more than 3 % over its
budget in ``bench/budget.json`` (``--write-budget`` rewrites that file).
"""

from __future__ import absolute_import, division, print_function

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor, wait

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # measure this checkout

# (quick, full) sizes: operations per round, and rounds.
SIZES = {
    'map_jobs': (4000, 100000),
    'thread_ops': (200, 2000),
    'call_ops': (20000, 200000),
    'submit_ops': (1000, 10000),
    'rounds': (5, 9),
    'memory_jobs': (20000, 1000000),
    'tracemalloc_jobs': (5000, 1000000),
}

TARGETS = {
    'update': 1.5,  # an update from a new thread or a job, over the same in the task's thread
    'map': 1.10,
    'thread': 1.05,
    'outside': 1.02,
    'rss_mb': 1.0,
}


def noop(*args):
    return None


# --------------------------------------------------------------- harness


def quantiles(values):
    """(q1, median, q3) by linear interpolation; no statistics module on old Pythons."""
    ordered = sorted(values)

    def at(fraction):
        position = fraction * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return at(0.25), at(0.5), at(0.75)


def compare(variants, ops, rounds, warmup=1):
    """Time ``variants`` (name -> fn(ops) -> seconds), interleaved round by round.

    Returns name -> {'median', 'q1', 'q3'} in µs per operation, and for every
    variant after the first, 'ratio': the median of its per-round ratios to
    the first (the baseline).
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name](max(1, ops // 10))
    samples = {name: [] for name in names}
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            samples[name].append(variants[name](ops) / ops * 1e6)
    result = {}
    baseline = samples[names[0]]
    for name in names:
        q1, median, q3 = quantiles(samples[name])
        result[name] = {'median': median, 'q1': q1, 'q3': q3}
        if name != names[0]:
            ratios = [mine / base for mine, base in zip(samples[name], baseline)]
            result[name]['ratio'] = quantiles(ratios)[1]
    return result


def timed(fn):
    """Wrap ``fn(ops)`` (which does the work) into ``fn(ops) -> seconds``."""

    def run(ops):
        start = time.perf_counter()
        fn(ops)
        return time.perf_counter() - start

    return run


def size(name, quick):
    return SIZES[name][0 if quick else 1]


# --------------------------------------------------------------- workloads


def map_with(executor):
    return timed(lambda ops: list(executor.map(noop, range(ops))))


def threads_of(thread_class):
    def run(ops):
        for _ in range(ops):
            thread = thread_class(target=noop)
            thread.start()
            thread.join()

    return timed(run)


def submit_result_with(executor):
    def run(ops):
        for _ in range(ops):
            executor.submit(noop).result()

    return timed(run)


def submit_batch_with(executor, make_job=None):
    """``ops`` submits, then wait for all: the per-submit cost, with the job's."""

    def run(ops):
        submit = executor.submit
        if make_job is None:
            futures = [submit(noop) for _ in range(ops)]
        else:
            futures = [submit(make_job()) for _ in range(ops)]
        wait(futures)

    return timed(run)


def calls_of(fn):
    def run(ops):
        for _ in range(ops):
            fn()

    return timed(run)


def on_fresh_thread(run):
    """``run(ops)`` timed on a new thread, as a pool worker would run it."""

    def measure(ops):
        box = []
        thread = threading.Thread(target=lambda: box.append(run(ops)))
        thread.start()
        thread.join()
        return box[0]

    return measure


# --------------------------------------------------------------- the task context


def enter_task():
    """Push a real task and request, exactly as Celery's tracer pushes them."""
    import celery
    from celery import _state
    from celery.app.task import Context

    # A result backend that needs no server: Celery builds one per thread all the same.
    app = celery.Celery('cct_bench', backend='cache+memory://', set_as_current=True)

    @app.task(bind=True)
    def bench_task(self):
        return None

    task = bench_task._get_current_object()  # the real task, not the proxy
    _state._task_stack.push(task)
    task.request_stack.push(
        Context({'id': 'bench-task-id'}, args=(), kwargs={}, called_directly=False)
    )
    return app, task


def update_of(task):
    """One ``update_state`` of ``task``, as a task's thread makes it."""
    return lambda *args: task.update_state(state='PROGRESS', meta={'step': 1})


def update_workload(task, where, target):
    """``fn(ops)``: ``target`` called ``ops`` times from ``where``: 'own' (the
    task's thread), 'thread' (a new TaskThread each) or 'job' (a pooled job each)."""
    import celery_ctxthread as cct

    if where == 'own':
        return calls_of(target)
    if where == 'thread':

        def run(ops):
            for _ in range(ops):
                thread = cct.TaskThread(target=target)
                thread.start()
                thread.join()

        return timed(run)
    executor = cct.TaskThreadPoolExecutor(max_workers=1)

    def run_jobs(ops):
        for _ in range(ops):
            executor.submit(target).result()

    return timed(run_jobs)


UPDATE_PLACES = (
    ('own', "update_state, in the task's own thread"),
    ('thread', 'update_state, first in a new TaskThread'),
    ('job', 'update_state, in a pooled job'),
)


def leave_task(task):
    from celery import _state

    task.request_stack.pop()
    _state._task_stack.pop()


# --------------------------------------------------------------- suites (children)


def suite_task(quick):
    """Inside a task: every entry point against its bare equivalent."""
    import celery_ctxthread as cct

    _, task = enter_task()
    rounds = size('rounds', quick)
    results = {}
    for workers in (1, 4):
        bare = ThreadPoolExecutor(max_workers=workers)
        ours = cct.TaskThreadPoolExecutor(max_workers=workers)
        results['map_%dw' % workers] = compare(
            {'bare': map_with(bare), 'ours': map_with(ours)}, size('map_jobs', quick), rounds
        )
        bare.shutdown()
        ours.shutdown()
    results['thread'] = compare(
        {'bare': threads_of(threading.Thread), 'ours': threads_of(cct.TaskThread)},
        size('thread_ops', quick),
        rounds,
    )
    call_ops = size('call_ops', quick)
    context = cct.capture()
    assert context.task is task, 'the bench task is not captured'
    results['wrap'] = compare(
        {'bare': calls_of(noop), 'ours': calls_of(cct.wrap(noop))}, call_ops, rounds
    )
    results['capture'] = compare({'ours': calls_of(cct.capture)}, call_ops, rounds)
    results['run'] = compare(
        {
            'bare': on_fresh_thread(calls_of(noop)),
            'ours': on_fresh_thread(calls_of(lambda: context.run(noop))),
        },
        call_ops,
        rounds,
    )
    # What an update costs, by where it is made: each over the same place with a no-op.
    for where, _ in UPDATE_PLACES:
        ops = call_ops // 10 if where == 'own' else size('thread_ops', quick)
        results['update_' + where] = compare(
            {
                'bare': update_workload(task, where, noop),
                'ours': update_workload(task, where, update_of(task)),
            },
            ops,
            rounds,
        )
    leave_task(task)
    return results


def toggled(install, uninstall, fn):
    """``fn`` timed with a process-wide patch on, and off again afterwards."""

    def run(ops):
        install()
        try:
            return fn(ops)
        finally:
            uninstall()

    return run


def suite_outside(quick):
    """Outside any task: what install() costs everybody else in the process."""
    import celery_ctxthread as cct

    rounds = size('rounds', quick)
    executor = ThreadPoolExecutor(max_workers=1)
    results = {
        'thread': compare(
            {
                'bare': threads_of(threading.Thread),
                'ours': toggled(cct.install, cct.uninstall, threads_of(threading.Thread)),
            },
            size('thread_ops', quick),
            rounds,
        ),
        'submit': compare(
            {
                'bare': submit_result_with(executor),
                'ours': toggled(cct.install, cct.uninstall, submit_result_with(executor)),
            },
            size('submit_ops', quick),
            rounds,
        ),
    }
    executor.shutdown()
    return results


def peer_workloads(quick, thread_variant, submit_variant):
    rounds = size('rounds', quick)
    executor = ThreadPoolExecutor(max_workers=1)
    results = {
        'thread': compare(
            {'bare': threads_of(threading.Thread), 'peer': thread_variant},
            size('thread_ops', quick),
            rounds,
        ),
        'submit': compare(
            {'bare': submit_batch_with(executor), 'peer': submit_variant(executor)},
            size('submit_ops', quick) * 5,
            rounds,
        ),
    }
    executor.shutdown()
    return results


def suite_peer_ours(quick):
    """Ours, inside a task (where it does its work), default flavour."""
    import celery_ctxthread as cct

    _, task = enter_task()
    ours = cct.TaskThreadPoolExecutor(max_workers=1)
    results = peer_workloads(
        quick, threads_of(cct.TaskThread), lambda executor: submit_batch_with(ours)
    )
    ours.shutdown()
    leave_task(task)
    return results


def suite_peer_contextvars(quick):
    """What the stdlib offers: a copy of the contextvars context per job."""
    import contextvars

    class ContextThread(threading.Thread):
        def start(self):
            context, run = contextvars.copy_context(), self.run
            self.run = lambda: context.run(run)
            return threading.Thread.start(self)

    def submit_in_copy(executor):
        def run(ops):
            submit, copy = executor.submit, contextvars.copy_context
            wait([submit(copy().run, noop) for _ in range(ops)])

        return timed(run)

    return peer_workloads(quick, threads_of(ContextThread), submit_in_copy)


def patch_toggle(owner_attrs_on, owner_attrs_off):
    def install():
        for owner, name, value in owner_attrs_on:
            setattr(owner, name, value)

    def uninstall():
        for owner, name, value in owner_attrs_off:
            setattr(owner, name, value)

    return install, uninstall


def suite_peer_otel(quick):
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    instrumentor = ThreadingInstrumentor()
    on, off = instrumentor.instrument, instrumentor.uninstrument
    return peer_workloads(
        quick,
        toggled(on, off, threads_of(threading.Thread)),
        lambda executor: toggled(on, off, submit_batch_with(executor)),
    )


def suite_peer_sentry(quick):
    import sentry_sdk
    from sentry_sdk.integrations.threading import ThreadingIntegration

    originals = [
        (threading.Thread, 'start', threading.Thread.__dict__['start']),
        (ThreadPoolExecutor, 'submit', ThreadPoolExecutor.__dict__['submit']),
    ]
    sentry_sdk.init(
        dsn='',
        default_integrations=False,
        integrations=[ThreadingIntegration(propagate_scope=True)],
    )
    patched = [(owner, name, owner.__dict__[name]) for owner, name, _ in originals]
    assert patched != originals, 'sentry-sdk did not patch threading'
    # Sentry cannot be uninstalled: toggle its patches by hand, round by round.
    on, off = patch_toggle(patched, originals)
    off()
    return peer_workloads(
        quick,
        toggled(on, off, threads_of(threading.Thread)),
        lambda executor: toggled(on, off, submit_batch_with(executor)),
    )


def rss_bytes():
    with open('/proc/self/statm') as statm:  # resident pages, now
        return int(statm.read().split()[1]) * resource.getpagesize()


def suite_memory(quick):
    """RSS and tracemalloc around many jobs in a task; the weakref check."""
    import tracemalloc

    import celery_ctxthread as cct

    _, task = enter_task()
    executor = cct.TaskThreadPoolExecutor(max_workers=4)

    def jobs(count, batch=10000):
        while count > 0:
            list(executor.map(noop, range(min(batch, count))))
            count -= batch

    jobs(20000)  # warm-up: pool threads, free lists, arenas
    gc.collect()
    results = {'jobs': size('memory_jobs', quick)}
    before = rss_bytes()
    jobs(results['jobs'])
    gc.collect()
    results['rss_before'], results['rss_after'] = before, rss_bytes()
    results['max_rss_kb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    results['traced_jobs'] = size('tracemalloc_jobs', quick)
    tracemalloc.start()
    gc.collect()
    traced_before = tracemalloc.get_traced_memory()[0]
    jobs(results['traced_jobs'])
    gc.collect()
    results['traced_growth'] = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()

    # A task's whole life: pushed, jobs, a wrap() and a TaskThread under it,
    # popped.  Nothing may keep its request alive afterwards.
    leave_task(task)
    _, task = enter_task()
    request = task.request_stack.top
    jobs(1000)
    cct.wrap(noop)()
    thread = cct.TaskThread(target=noop)
    thread.start()
    thread.join()
    leave_task(task)
    gone = weakref.ref(request)
    del request, thread
    gc.collect()
    results['request_released'] = gone() is None
    executor.shutdown()
    return results


SUITES = {
    'task': suite_task,
    'outside': suite_outside,
    'peer-ours': suite_peer_ours,
    'peer-contextvars': suite_peer_contextvars,
    'peer-otel': suite_peer_otel,
    'peer-sentry': suite_peer_sentry,
    'memory': suite_memory,
}


# --------------------------------------------------------------- instruction counts


def counted_workload(workload, variant):
    """The ``fn(ops)`` that ``--count`` runs, inside a task unless ``outside``."""
    import celery_ctxthread as cct

    if workload == 'outside':
        if variant == 'ours':
            cct.install()
        return threads_of(threading.Thread)
    _, task = enter_task()
    if workload.startswith('update_'):  # 'bare': the same place with a no-op instead
        target = update_of(task) if variant == 'ours' else noop
        return update_workload(task, workload[len('update_') :], target)
    ours = variant in ('ours', 'fastlocals')
    if workload == 'capture':
        return calls_of(cct.capture if ours else noop)
    if workload == 'run':
        context = cct.capture()
        call = (lambda: context.run(noop)) if ours else (lambda: noop())
        return on_fresh_thread(calls_of(call))
    if workload in ('cancelled', 'checkpoint'):  # asked in a propagated thread, in a loop
        context = cct.capture()
        ask = calls_of(getattr(cct, workload) if ours else noop)
        return on_fresh_thread(lambda ops: context.run(ask, ops))
    if workload == 'thread':
        return threads_of(cct.TaskThread if variant == 'ours' else threading.Thread)
    if variant == 'otel':
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor

        ThreadingInstrumentor().instrument()
    executor = (cct.TaskThreadPoolExecutor if variant == 'ours' else ThreadPoolExecutor)(1)
    if workload == 'map':
        return map_with(executor)
    return submit_result_with(executor)


COUNTED = (
    # (workload, label, operations, variants after 'bare')
    ('thread', 'Thread start+join, in a task', 1000, ('ours',)),
    ('map', 'executor map (1 worker), in a task', 10000, ('ours',)),
    ('submit', 'executor submit().result(), in a task', 3000, ('ours', 'otel')),
    ('outside', 'Thread start+join, install() outside a task', 1000, ('ours',)),
    # One thread each, so no scheduling in the count: these repeat to the instruction.
    ('capture', 'capture(), in a task', 5000, ('ours', 'fastlocals')),
    ('run', 'TaskContext.run(noop), on a fresh thread', 5000, ('ours', 'fastlocals')),
    # A cooperative loop's question, in a thread running in the task's context (bare: noop()).
    ('cancelled', 'cancelled(), in a propagated thread', 20000, ('ours',)),
    ('checkpoint', 'checkpoint(), in a propagated thread', 20000, ('ours',)),
    # What a user feels: an update_state, by where it is made (bare: a no-op there).
    ('update_own', UPDATE_PLACES[0][1], 2000, ('ours',)),
    ('update_thread', UPDATE_PLACES[1][1], 1000, ('ours',)),
    ('update_job', UPDATE_PLACES[2][1], 2000, ('ours',)),
)


def instructions(workload, variant, ops, counted=True):
    """Instructions the interpreter executes for ``ops`` operations, under valgrind
    (``counted=False``: the same run without valgrind, to warm the bytecode cache)."""
    valgrind = ['valgrind', '--tool=cachegrind', '--cache-sim=no']
    valgrind.append('--cachegrind-out-file=/dev/null')
    command = (valgrind if counted else []) + [
        sys.executable,
        os.path.abspath(__file__),
        '--count',
        workload,
        variant,
        str(ops),
    ]
    # One hash seed for every run: dict layouts, and so the counts, repeat.
    env = dict(os.environ, PYTHONHASHSEED='0')
    env.pop('USE_FAST_LOCALS', None)
    if variant == 'fastlocals':  # Celery's other LocalStack flavour, read at its import
        env['USE_FAST_LOCALS'] = '1'
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, err = process.communicate()
    lines = err.decode('utf-8', 'replace').splitlines()
    if not counted:
        return None  # a failure shows in the counted runs
    counts = [line for line in lines if 'I' in line and 'refs:' in line]
    if process.returncode != 0 or not counts:  # a failed run's count means nothing
        failure = [line for line in lines if not line.startswith('==')][-1:] or ['no output']
        raise RuntimeError(failure[0])
    return int(counts[0].rsplit(':', 1)[1].replace(',', ''))


VARIANT_NAMES = {
    'ours': 'celery-ctxthread',
    'fastlocals': 'celery-ctxthread, USE_FAST_LOCALS',
    'otel': 'OpenTelemetry',
}
# A variant that needs an optional peer: its row is gated only where the peer is installed.
PEER_MODULES = {'otel': 'opentelemetry.instrumentation.threading'}


def measure_counted(jobs=None):
    """``(workload, variant) -> instructions per operation`` (or the RuntimeError
    of a failed run) for every COUNTED row and its bare, valgrind runs in parallel.

    Each count is independent of the others (its own process, one hash seed),
    so the runs only share the machine: ``jobs`` of them at a time, one per CPU
    by default.
    """
    pairs = []
    for workload, _, ops, variants in COUNTED:
        pairs.extend((workload, variant, ops) for variant in ('bare',) + variants)
    runs = [(w, v, n) for w, v, ops in pairs for n in (ops, 0)]
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        # Each child once without valgrind first: in a fresh environment the first
        # import of a module writes its bytecode, tens of millions of instructions
        # that would otherwise land in whichever of the two counted runs came first.
        list(pool.map(lambda pair: instructions(pair[0], pair[1], 0, counted=False), pairs))
        futures = {run: pool.submit(instructions, *run) for run in runs}
    per_op = {}
    for workload, variant, ops in pairs:
        try:
            # Everything but the operations (start-up, imports, warm-up) cancels out.
            counted = futures[(workload, variant, ops)].result()
            per_op[(workload, variant)] = (counted - futures[(workload, variant, 0)].result()) / ops
        except RuntimeError as error:  # e.g. a peer that is not installed
            per_op[(workload, variant)] = error
    return per_op


def report_instructions(per_op):
    table = Table(
        'Instructions per operation (valgrind; deterministic, unlike the timings)',
        ['workload', 'variant', 'bare', 'with it', 'overhead', 'ratio'],
    )
    update_costs = {}
    for workload, label, _, variants in COUNTED:
        bare = per_op[(workload, 'bare')]
        if isinstance(bare, RuntimeError):
            raise bare
        for variant in variants:
            name = VARIANT_NAMES[variant]
            mine = per_op[(workload, variant)]
            if isinstance(mine, RuntimeError):
                table.add(label, name, '%.0f' % bare, 'not measured: %s' % mine, '', '')
                continue
            table.add(
                label,
                name,
                '%.0f' % bare,
                '%.0f' % mine,
                '%+.0f' % (mine - bare),
                '%.2fx' % (mine / bare),
            )
            if workload.startswith('update_'):
                update_costs[workload[len('update_') :]] = mine - bare
    return table.render() + update_ratios(update_costs, 'instructions')


# --------------------------------------------------------------- the instruction budget

# A row may cost this much more than its budget before --check fails.
BUDGET_TOLERANCE = 0.03
BUDGET_ABOUT = [
    "Instructions per operation of each bench --instructions row, 'with it' column",
    '(bare: the same workload without propagation, for reference only). CI runs',
    '`python bench/bench.py --instructions --check bench/budget.json` (tox env',
    'bench-gate, `make bench-gate`) and fails when a row costs more than 3 % over',
    'its budget here. The counts hold for the Python minor, Celery version and',
    'machine below only; --check refuses to run anywhere else. To update after a',
    'change that is meant to cost more (or less): `make bench-budget` rewrites',
    'this file from a fresh measurement; commit it with the change and have the',
    'diff reviewed.',
]


def interpreter_key():
    """What a budget is measured on: the counts hold for these only."""
    import celery

    return {
        'python': '%d.%d' % sys.version_info[:2],
        'celery': celery.__version__,
        'machine': platform.machine(),
    }


def row_key(workload, variant):
    return '%s/%s' % (workload, variant)


def write_budget(path, per_op):
    rows, missing = {}, []
    for workload, _, _, variants in COUNTED:
        bare = per_op[(workload, 'bare')]
        for variant in variants:
            mine = per_op[(workload, variant)]
            if isinstance(mine, RuntimeError):
                missing.append('%s (%s)' % (row_key(workload, variant), mine))
                continue
            rows[row_key(workload, variant)] = {'with_it': round(mine), 'bare': round(bare)}
    budget = dict(interpreter_key(), about=BUDGET_ABOUT, python_full=platform.python_version())
    budget['rows'] = rows
    with open(path, 'w') as out:
        json.dump(budget, out, indent=2, sort_keys=True)
        out.write('\n')
    lines = ['', 'Budget written to %s: %d rows, measured on Python %s, Celery %s, %s.']
    lines[1] %= (path, len(rows), budget['python_full'], budget['celery'], budget['machine'])
    if missing:
        lines.append('NOT in it (not measured, so not gated): ' + '; '.join(missing))
    return '\n'.join(lines)


def load_budget(path):
    """The budget at ``path``, or a SystemExit saying why it cannot judge this run."""
    with open(path) as source:
        budget = json.load(source)
    here = interpreter_key()
    wrong = [
        '%s %s (the budget is for %s)' % (key, here[key], budget.get(key))
        for key in sorted(here)
        if budget.get(key) != here[key]
    ]
    if wrong:
        raise SystemExit(
            'bench --check: refusing to judge: instruction counts differ between versions, '
            'and this run is on %s. Run it where the budget was measured (tox env bench-gate), '
            'or measure a new budget with --write-budget.' % ', '.join(wrong)
        )
    return budget


def check_budget(path, budget, per_op):
    """The budget table, and how many rows are over it by more than the tolerance."""
    table = Table(
        'Budget check against %s (fails above +%.0f %%)' % (path, BUDGET_TOLERANCE * 100),
        ['row', 'variant', 'budget', 'measured', 'change', 'verdict'],
    )
    failed = 0
    rows = budget['rows']
    for workload, label, _, variants in COUNTED:
        for variant in variants:
            key, name = row_key(workload, variant), VARIANT_NAMES[variant]
            mine = per_op[(workload, variant)]
            if isinstance(mine, RuntimeError):
                module = PEER_MODULES.get(variant)
                if module and not peer_installed(module):
                    table.add(label, name, '', '', '', 'skipped: %s not installed' % module)
                    continue
                failed += 1
                table.add(label, name, '', '', '', 'FAIL: not measured: %s' % mine)
                continue
            if key not in rows:
                failed += 1
                table.add(label, name, '', '%.0f' % mine, '', 'FAIL: no budget for %s' % key)
                continue
            allowed = rows[key]['with_it']
            change = mine / allowed - 1
            if change > BUDGET_TOLERANCE:
                failed += 1
                verdict = 'FAIL: regression'
            elif change < -BUDGET_TOLERANCE:
                verdict = 'improved: consider lowering the budget'
            else:
                verdict = 'ok'
            table.add(label, name, allowed, '%.0f' % mine, '%+.2f %%' % (change * 100), verdict)
    counted = {row_key(w, v) for w, _, _, variants in COUNTED for v in variants}
    stale = sorted(set(rows) - counted)
    lines = [table.render()]
    if stale:
        lines.append('In the budget but no longer counted: %s' % ', '.join(stale))
    lines.append(
        'bench --check: %s' % ('%d row(s) over budget' % failed if failed else 'within budget')
    )
    return '\n'.join(lines), failed


def peer_installed(module):
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def update_ratios(costs, unit):
    """What an update costs from a new thread and from a job, over the task's own."""
    own = costs.get('own')
    if not own:
        return ''
    lines = ['', "update_state cost over the task's own thread's (%s; target <= %.2fx):"]
    lines[1] %= (unit, TARGETS['update'])
    for where, label in UPDATE_PLACES[1:]:
        if where in costs:
            ratio = costs[where] / own
            lines.append('  %s: %.2fx %s' % (label, ratio, verdict(ratio, TARGETS['update'])))
    return '\n'.join(lines)


# --------------------------------------------------------------- parent: run and report


def run_child(suite, quick, env_extra=None):
    command = [sys.executable, os.path.abspath(__file__), '--child', suite]
    if quick:
        command.append('--quick')
    env = dict(os.environ)
    env.pop('USE_FAST_LOCALS', None)
    env.update(env_extra or {})
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=os.getcwd()
    )
    out, err = process.communicate()
    if process.returncode != 0:
        last = err.decode('utf-8', 'replace').strip().splitlines()[-1:] or ['?']
        return {'error': last[0]}
    return json.loads(out.decode('utf-8').strip().splitlines()[-1])


def verdict(value, limit):
    return 'PASS' if value <= limit else 'MISS'


def us(cell):
    return '%8.2f [%.2f-%.2f]' % (cell['median'], cell['q1'], cell['q3'])


class Table(object):
    def __init__(self, title, header):
        self.title, self.rows = title, [header]

    def add(self, *cells):
        self.rows.append([str(cell) for cell in cells])

    def render(self):
        widths = [max(len(row[i]) for row in self.rows) for i in range(len(self.rows[0]))]
        line = '  '.join('-' * width for width in widths)
        out = [self.title, line]
        for index, row in enumerate(self.rows):
            out.append('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
            if index == 0:
                out.append(line)
        out.append(line)
        return '\n'.join(out)


def report_task(results, verdicts):
    header = ['measurement (in a task)', 'flavour', 'bare µs/op [IQR]', 'ours µs/op [IQR]']
    table = Table('Inside a task context', header + ['ratio', 'target'])
    labels = [
        ('map_1w', 'TaskThreadPoolExecutor.map, 1 worker', 'map'),
        ('map_4w', 'TaskThreadPoolExecutor.map, 4 workers', 'map'),
        ('thread', 'TaskThread start+join', 'thread'),
        ('wrap', 'wrap()ped call vs plain call', None),
        ('run', 'TaskContext.run on a fresh thread', None),
        ('capture', 'capture() alone', None),
    ] + [('update_' + where, label + ' (bare: a no-op)', None) for where, label in UPDATE_PLACES]
    for flavour in ('LocalStack', 'USE_FAST_LOCALS'):
        data = results[flavour]
        if 'error' in data:
            table.add('(failed: %s)' % data['error'], flavour, '', '', '', '')
            continue
        for key, label, target in labels:
            cell = data[key]
            if 'bare' not in cell:
                table.add(label, flavour, '', us(cell['ours']), '', '')
                continue
            ratio = cell['ours']['ratio']
            mark = ''
            if target and flavour == 'LocalStack':
                mark = '<= %.2fx %s' % (TARGETS[target], verdict(ratio, TARGETS[target]))
                verdicts.append((label, mark))
            table.add(label, flavour, us(cell['bare']), us(cell['ours']), '%.2fx' % ratio, mark)
    data = results['LocalStack']
    if 'error' in data:
        return table.render()
    costs = {}
    for where, _ in UPDATE_PLACES:
        cell = data['update_' + where]
        costs[where] = cell['ours']['median'] - cell['bare']['median']
    return table.render() + update_ratios(costs, 'µs, LocalStack, medians')


def report_outside(data, verdicts):
    table = Table(
        'Outside any task: install() active vs not',
        ['measurement', 'bare µs/op [IQR]', 'installed µs/op [IQR]', 'ratio', 'target'],
    )
    if 'error' in data:
        return 'Outside any task: failed: %s' % data['error']
    for key, label in (
        ('thread', 'threading.Thread start+join'),
        ('submit', 'ThreadPoolExecutor submit().result()'),
    ):
        ratio = data[key]['ours']['ratio']
        mark = '<= %.2fx %s' % (TARGETS['outside'], verdict(ratio, TARGETS['outside']))
        verdicts.append(('install(), outside a task: ' + label, mark))
        table.add(label, us(data[key]['bare']), us(data[key]['ours']), '%.2fx' % ratio, mark)
    return table.render()


PEERS = (
    ('peer-ours', 'celery-ctxthread (in a task)'),
    ('peer-contextvars', 'contextvars.copy_context().run'),
    ('peer-otel', 'OpenTelemetry ThreadingInstrumentor'),
    ('peer-sentry', 'Sentry ThreadingIntegration'),
)


def report_peers(results, verdicts):
    table = Table(
        'Peers: per-operation overhead over bare, same workload, one subprocess each',
        ['propagation', 'workload', 'bare µs/op', 'with it µs/op', 'overhead µs', 'ratio'],
    )
    overheads = {}
    for suite, label in PEERS:
        data = results[suite]
        if 'error' in data:
            table.add(label, '(not run: %s)' % data['error'], '', '', '', '')
            continue
        for key, workload in (('thread', 'Thread start+join'), ('submit', 'executor submit')):
            bare, peer = data[key]['bare'], data[key]['peer']
            overhead = peer['median'] - bare['median']
            overheads[(suite, key)] = overhead
            table.add(
                label,
                workload,
                '%.2f' % bare['median'],
                '%.2f' % peer['median'],
                '%+.2f' % overhead,
                '%.2fx' % peer['ratio'],
            )
    for suite, label in PEERS[2:]:
        for key in ('thread', 'submit'):
            ours, theirs = overheads.get(('peer-ours', key)), overheads.get((suite, key))
            if ours is None or theirs is None:
                continue
            mark = '%+.2f vs %+.2f µs %s' % (ours, theirs, 'PASS' if ours < theirs else 'MISS')
            verdicts.append(('%s overhead below %s' % (key, label), mark))
    return table.render()


def report_memory(data, verdicts):
    if 'error' in data:
        return 'Memory: failed: %s' % data['error']
    growth_mb = (data['rss_after'] - data['rss_before']) / 1e6
    lines = [
        'Memory (TaskThreadPoolExecutor, 4 workers, in a task)',
        '  RSS before %d jobs: %.1f MB, after: %.1f MB, growth: %+.3f MB (peak RSS %.1f MB)'
        % (
            data['jobs'],
            data['rss_before'] / 1e6,
            data['rss_after'] / 1e6,
            growth_mb,
            data['max_rss_kb'] / 1e3,
        ),
        '  tracemalloc growth over %d jobs: %+d bytes'
        % (data['traced_jobs'], data['traced_growth']),
        '  request released once its task ended (weakref dead): %s'
        % ('yes' if data['request_released'] else 'NO: LEAK'),
    ]
    mark = '< %.0f MB %s' % (TARGETS['rss_mb'], 'PASS' if growth_mb < TARGETS['rss_mb'] else 'MISS')
    verdicts.append(('RSS growth over %d jobs' % data['jobs'], mark))
    return '\n'.join(lines)


def parent(quick):
    import platform

    import celery

    started = time.time()

    print(
        'celery-ctxthread benchmarks (%s mode): Python %s, Celery %s, %s, %d CPUs'
        % (
            'quick' if quick else 'full',
            platform.python_version(),
            celery.__version__,
            platform.machine(),
            os.cpu_count() or 0,
        )
    )
    results = {
        'LocalStack': run_child('task', quick),
        'USE_FAST_LOCALS': run_child('task', quick, {'USE_FAST_LOCALS': '1'}),
    }
    outside = run_child('outside', quick)
    peers = {suite: run_child(suite, quick) for suite, _ in PEERS}
    memory = run_child('memory', quick)
    verdicts = []
    print()
    print(report_task(results, verdicts))
    print()
    print(report_outside(outside, verdicts))
    print()
    print(report_peers(peers, verdicts))
    print()
    print(report_memory(memory, verdicts))
    print()
    table = Table('Targets (one run)', ['target', 'measured'])
    for label, mark in verdicts:
        table.add(label, mark)
    print(table.render())
    print('\n%.0f s' % (time.time() - started))
    leaked = 'error' in memory or not memory.get('request_released')
    return 1 if leaked else 0  # never because of a timing


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='small N, for a CI smoke run')
    parser.add_argument(
        '--instructions',
        action='store_true',
        help='count instructions per operation under valgrind instead of timing',
    )
    parser.add_argument(
        '--check',
        metavar='BUDGET',
        help='with --instructions: fail when a row costs more than 3 %% over its budget',
    )
    parser.add_argument(
        '--write-budget',
        metavar='BUDGET',
        nargs='?',
        const=os.path.join(HERE, 'budget.json'),
        help='with --instructions: write the counts as the new budget (default bench/budget.json)',
    )
    parser.add_argument(
        '--jobs',
        type=int,
        help='with --instructions: valgrind runs at a time (default: one per CPU)',
    )
    parser.add_argument('--child', choices=sorted(SUITES), help=argparse.SUPPRESS)
    parser.add_argument('--count', nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(SUITES[args.child](args.quick)))
        return 0
    if args.count:
        workload, variant, ops = args.count
        run = counted_workload(workload, variant)
        run(20)  # warm-up, in both the counted and the zero run
        run(int(ops))
        return 0
    if args.instructions:
        if not shutil.which('valgrind'):
            parser.error('--instructions needs valgrind on PATH')
        budget = load_budget(args.check) if args.check else None  # before 5 minutes of runs
        started = time.time()
        print(
            'Python %s, Celery %s, %s, %d parallel runs'
            % (
                platform.python_version(),
                interpreter_key()['celery'],
                platform.machine(),
                args.jobs or os.cpu_count() or 1,
            )
        )
        per_op = measure_counted(args.jobs)
        print(report_instructions(per_op))
        failed = 0
        if budget is not None:
            report, failed = check_budget(args.check, budget, per_op)
            print('\n' + report)
        if args.write_budget:
            print(write_budget(args.write_budget, per_op))
        print('\n%.0f s' % (time.time() - started))
        return 1 if failed else 0
    if args.check or args.write_budget:
        parser.error('--check and --write-budget go with --instructions')
    return parent(args.quick)


if __name__ == '__main__':
    sys.exit(main())
