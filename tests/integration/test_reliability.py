"""Reliability on real workers: late updates, load, a killed child, warm shutdown.

Tasks live in tests/helpers/reliability_tasks.py.  Every wait is bounded.

The load test runs at a reduced size by default (8 tasks x 4 threads x 20
updates per worker, under half a minute for all four workers).  Full size::

    CI=true CCT_LOAD_TASKS=64 CCT_LOAD_THREADS=16 CCT_LOAD_UPDATES=100 \\
        python -m pytest tests/integration/test_reliability.py -k load -s -q -p no:cacheprovider

(``-s`` shows the figures each run prints: updates sent, wrong-task payloads,
final states lost, wall time.)

What is not tested, and why: a task revoked with ``terminate=True`` is only
meaningful on prefork, where the child process is killed and its threads with
it (tested below: REVOKED stays REVOKED).  The threads pool cannot terminate a
job (``terminate_job`` is not implemented there), and a revoke without
``terminate`` does not stop a running task, so its threads never outlive a
REVOKED state on those pools.
"""

from __future__ import absolute_import, print_function

import json
import os
import signal
import time
import uuid

import pytest
from celery.result import ResultSet

from tests.conftest import BACKEND_KINDS, CONCURRENT_POOLS, POOLS, _combos, _worker
from tests.helpers.integration_tasks import read_json, touch
from tests.helpers.servers import pid_alive, wait_until

RESULT_TIMEOUT = 30.0
FILE_TIMEOUT = 30.0
LATE = 'cct_rtest.late'
ADD = 'cct_itest.add'
BUSY = 'cct_rtest.busy'
LOAD = 'cct_rtest.load'
LEAVE_THREAD = 'cct_rtest.leave_thread'

LOAD_TASKS = int(os.environ.get('CCT_LOAD_TASKS', '8'))
LOAD_THREADS = int(os.environ.get('CCT_LOAD_THREADS', '4'))
LOAD_UPDATES = int(os.environ.get('CCT_LOAD_UPDATES', '20'))
# Generous: about 2 ms per update, never under a minute.
LOAD_TIMEOUT = max(60.0, LOAD_TASKS * LOAD_THREADS * LOAD_UPDATES / 500.0)

SHUTDOWN_BOUND = 10.0  # how long a warm shutdown may take
LINGER = 90.0  # how long the lingering thread would sleep: longer than the bound


def warning_lines(worker, task_id):
    needle = 'celery_ctxthread.guard: task %s ended' % task_id
    return [line for line in worker.log_text().splitlines() if needle in line]


@pytest.fixture(scope='module', params=_combos(BACKEND_KINDS, CONCURRENT_POOLS))
def any_worker(request, worker_registry):
    """A shared worker on every backend, prefork and threads."""
    return _worker(request, worker_registry, *request.param)


def rpc_late_states(worker, task_id):
    """The states of ``task_id`` that reach the rpc client after its final one.

    rpc state messages go to the client's reply queue; a message for a task
    the client no longer waits on is handed only to the ``on_message``
    callback of whatever wait reads the queue next.  So wait for another task
    with such a callback: the straggler wrote its messages (if any) before
    its done file, hence before this task was even sent.
    """
    states = []

    def on_message(meta):
        if meta.get('task_id') == task_id:
            states.append(meta.get('status'))

    result = worker.client.send_task(ADD, args=[1, 2])
    assert result.get(timeout=RESULT_TIMEOUT, on_message=on_message) == 3
    return states


class LateRun(object):
    """One ``cct_rtest.late`` task and the files its straggler thread uses."""

    def __init__(self, worker, mode, fail):
        self.worker = worker
        token = uuid.uuid4().hex
        self.thread_name = 'late-%s' % token[:12]
        self.go_file = os.path.join(worker.ack_dir, token + '-go')
        self.done_file = os.path.join(worker.ack_dir, token + '-done')
        self.fail = fail
        args = [mode, self.thread_name, self.go_file, self.done_file, fail]
        self.result = worker.client.send_task(LATE, args=args)
        self.id = self.result.id

    def finish(self):
        """Wait for the final state, then let the straggler try; its report."""
        outcome = self.result.get(timeout=RESULT_TIMEOUT, propagate=False)
        self.final_state = self.result.state
        self.final_result = outcome
        touch(self.go_file)
        return read_json(self.done_file, FILE_TIMEOUT)

    def stored(self):
        """The state as a client asking now sees it."""
        return self.worker.client.backend.get_task_meta(self.id)

    def assert_final(self, state):
        if self.fail:
            assert state['status'] == 'FAILURE', state
            assert 'failing on purpose' in str(state['result']), state
        else:
            assert state['status'] == 'SUCCESS', state
            assert state['result'] == self.thread_name, state


# ------------------------------------------------------- 1. late updates


@pytest.mark.parametrize('fail', [False, True], ids=['success', 'failure'])
def test_late_update_leaves_the_final_state_alone(any_worker, fail):
    worker = any_worker
    run = LateRun(worker, 'cct', fail)
    report = run.finish()
    assert report['waited'], 'the straggler never saw the task end'
    assert report['ids'] == [run.id, run.id], 'the straggler had no task context'
    assert report['errors'] == [], report
    assert run.final_state == ('FAILURE' if fail else 'SUCCESS')
    if worker.kind == 'rabbitmq':
        # rpc: the sending client's result keeps its final state, and no late
        # PROGRESS message reached the client's reply queue.
        assert run.result.state == run.final_state
        again = run.result.get(timeout=RESULT_TIMEOUT, propagate=False)
        assert str(again) == str(run.final_result)
        assert rpc_late_states(worker, run.id) == []
    else:
        run.assert_final(run.stored())
    # Both attempts were refused, with one warning naming the task and thread.
    assert wait_until(lambda: warning_lines(worker, run.id), 10.0), worker.log_text()[-3000:]
    time.sleep(0.2)  # the second attempt is in the log by now if it warned
    lines = warning_lines(worker, run.id)
    assert len(lines) == 1, lines
    assert "'%s'" % run.thread_name in lines[0]
    assert "'PROGRESS'" in lines[0]


def _baseline_params():
    params = []
    for kind, pool in [(k, p) for k in BACKEND_KINDS for p in CONCURRENT_POOLS]:
        # A plain thread on rpc has no reply address: its update goes nowhere.
        modes = ('direct',) if kind == 'rabbitmq' else ('plain', 'direct')
        for mode in modes:
            params.append(pytest.param(kind, pool, mode, id='%s-%s-%s' % (kind, pool, mode)))
    return params


@pytest.mark.parametrize('kind, pool, mode', _baseline_params())
def test_baseline_unguarded_late_update_overwrites_failure(
    request, worker_registry, kind, pool, mode
):
    """The danger is real: without the guard a late write turns FAILURE into
    PROGRESS.  ``plain``: a threading.Thread passing ``task_id=`` by hand
    (Redis and the database backend store it: Celery refuses writes only
    after SUCCESS).  ``direct``: a TaskThread calling ``backend.store_result``,
    which the guard cannot see; on rpc the client then receives PROGRESS
    after FAILURE."""
    worker = _worker(request, worker_registry, kind, pool)
    run = LateRun(worker, mode, True)
    report = run.finish()
    assert report['waited'] and report['errors'] == [], report
    assert run.final_state == 'FAILURE'
    if kind == 'rabbitmq':
        assert rpc_late_states(worker, run.id) == ['PROGRESS', 'PROGRESS']
    else:
        state = run.stored()
        assert state['status'] == 'PROGRESS', state
        assert state['result'] == {'late': True, 'attempt': 2}, state
    assert warning_lines(worker, run.id) == []


# ------------------------------------- REVOKED (prefork, terminate=True)


def _start_busy(worker, tmpdir, threads=3, seconds=40.0):
    own_id = str(uuid.uuid4())
    pid_file = os.path.join(str(tmpdir), 'pid-' + own_id)
    stop_file = os.path.join(str(tmpdir), 'stop-' + own_id)
    args = [own_id, pid_file, stop_file, threads, seconds]
    result = worker.client.send_task(BUSY, args=args, task_id=own_id)
    pid = read_json(pid_file, FILE_TIMEOUT)['pid']

    def progressing():
        meta = worker.client.backend.get_task_meta(own_id)
        return meta['status'] == 'PROGRESS' and meta['result']['pid'] == pid

    assert wait_until(progressing, RESULT_TIMEOUT), 'the threads never reported'
    return result, pid, stop_file


def _stays(worker, task_id, status, seconds=1.5):
    """The stored status is ``status`` throughout ``seconds``; the last meta."""
    deadline = time.time() + seconds
    while True:
        meta = worker.client.backend.get_task_meta(task_id, cache=False)
        assert meta['status'] == status, meta
        if time.time() >= deadline:
            return meta
        time.sleep(0.05)


def test_revoked_with_terminate_stays_revoked_on_prefork(dedicated_worker, tmpdir):
    """The child is terminated while its threads update; once it is gone the
    stored state never changes again, and it is REVOKED.

    One exception, Celery's own race: the worker's main process stores
    REVOKED right after it signals the child, so an update one of the child's
    threads already had on its way to Redis can land after it (a task's own
    ``update_state`` loses the same race; see docs/troubleshooting.rst).  Then
    the stored state is that last PROGRESS *of this child*, and it too must
    never change.
    """
    worker = dedicated_worker('redis', 'prefork', 'revoke', concurrency=2)
    result, pid, stop_file = _start_busy(worker, tmpdir)
    worker.client.control.revoke(result.id, terminate=True)
    assert wait_until(lambda: not pid_alive(pid), RESULT_TIMEOUT), 'child %d still alive' % pid
    stored = lambda: worker.client.backend.get_task_meta(result.id, cache=False)  # noqa: E731
    wait_until(lambda: stored()['status'] == 'REVOKED', 5.0)
    meta = stored()
    if meta['status'] != 'REVOKED':  # the in-flight update of the dying child
        assert meta['status'] == 'PROGRESS' and meta['result']['pid'] == pid, meta
    _stays(worker, result.id, meta['status'])
    touch(stop_file)
    for line in warning_lines(worker, result.id):
        assert 'ignored update_state' in line, line
    last = stored()  # the result is an exception for REVOKED: compared by its repr
    assert (last['status'], repr(last['result'])) == (meta['status'], repr(meta['result'])), last


# ------------------------------------------------------------ 2. load


def _load_combos():
    return _combos(('rabbitmq', 'redis'), CONCURRENT_POOLS)


def run_load(worker, tmpdir, tasks, threads, updates):
    """Run ``tasks`` load tasks at once; return the figures and the reports."""
    meet_dir = os.path.join(str(tmpdir), 'meet-%s' % uuid.uuid4().hex)
    os.makedirs(meet_dir)
    ids = [str(uuid.uuid4()) for _ in range(tasks)]
    seen = {'progress': 0, 'wrong': 0}
    finals = {}  # task id -> the final state a message or poll reported

    def check(task_id, meta):
        if meta.get('status') in ('SUCCESS', 'FAILURE'):
            finals[task_id] = meta['status']
        if meta.get('status') != 'PROGRESS':
            return
        seen['progress'] += 1
        payload = meta.get('result') or {}
        if payload.get('task_id') != task_id:
            seen['wrong'] += 1

    started = time.time()
    results = [
        worker.client.send_task(LOAD, args=[i, meet_dir, tasks, threads, updates], task_id=i)
        for i in ids
    ]
    deadline = started + LOAD_TIMEOUT
    if worker.kind == 'rabbitmq':
        # rpc: every state message reaches this client's reply queue.
        ResultSet(results).get(
            timeout=LOAD_TIMEOUT,
            propagate=False,
            on_message=lambda meta: check(meta.get('task_id'), meta),
        )
    else:  # poll every task's stored meta while they run
        pending = set(ids)
        while pending and time.time() < deadline:
            for task_id in list(pending):
                meta = worker.client.backend.get_task_meta(task_id, cache=False)
                check(task_id, meta)
                if meta['status'] in ('SUCCESS', 'FAILURE'):
                    pending.discard(task_id)
            time.sleep(0.01)
        assert not pending, '%d tasks unfinished after %ss' % (len(pending), LOAD_TIMEOUT)
    wall = time.time() - started
    reports, lost, wrong_results = {}, 0, 0
    for task_id, result in zip(ids, results):
        report = result.get(timeout=RESULT_TIMEOUT, propagate=False)
        if worker.kind == 'rabbitmq':
            # rpc hands a final state out once, to the message stream above.
            state = finals.get(task_id) or result.state
        else:
            state = worker.client.AsyncResult(task_id).state
        expected = (
            isinstance(report, dict)
            and report.get('task_id') == task_id
            and report.get('sent') == threads * updates
            and report.get('children') == threads
        )
        if state != 'SUCCESS':
            lost += 1
        elif not expected:
            wrong_results += 1
        reports[task_id] = report
    valid = [r for r in reports.values() if isinstance(r, dict)]
    figures = {
        'updates_expected': tasks * threads * updates,
        'updates_sent': sum(r.get('sent', 0) for r in valid),
        'update_errors': sum(r.get('errors', 0) for r in valid),
        'id_mismatches_in_children': sum(r.get('mismatches', 0) for r in valid),
        'progress_seen_by_client': seen['progress'],
        'wrong_task_payloads': seen['wrong'],
        'final_states_lost': lost,
        'wrong_results': wrong_results,
        'first_errors': sorted({r['first_error'] for r in valid if r.get('first_error')})[:3],
        'wall_seconds': round(wall, 2),
        'peak_concurrent_tasks': _peak(valid),
        'all_met': all(r.get('met') for r in valid) and len(valid) == tasks,
    }
    return figures, reports


def _peak(reports):
    events = sorted(
        [(r['started'], 1) for r in reports if 'started' in r]
        + [(r['ended'], -1) for r in reports if 'ended' in r]
    )
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize('kind_pool', _load_combos())
def test_load_every_update_carries_its_own_task(dedicated_worker, tmpdir, kind_pool):
    kind, pool = kind_pool
    worker = dedicated_worker(kind, pool, 'load', concurrency=LOAD_TASKS)
    figures, reports = run_load(worker, tmpdir, LOAD_TASKS, LOAD_THREADS, LOAD_UPDATES)
    print(
        '\nload %s-%s: %d tasks x %d threads x %d updates: %s'
        % (kind, pool, LOAD_TASKS, LOAD_THREADS, LOAD_UPDATES, json.dumps(figures, sort_keys=True))
    )
    assert figures['all_met'], 'the tasks did not all run at once: %r' % reports
    assert figures['updates_sent'] == figures['updates_expected'], figures
    assert figures['update_errors'] == 0, figures
    assert figures['id_mismatches_in_children'] == 0, figures
    assert figures['wrong_task_payloads'] == 0, figures
    assert figures['final_states_lost'] == 0, figures
    assert figures['wrong_results'] == 0, figures
    assert figures['progress_seen_by_client'] > 0, figures
    for task_id, report in reports.items():
        assert report['parent_ids'] == [task_id, task_id], report


# ------------------------------------------- 3. prefork child SIGKILLed


def test_killed_prefork_child_fails_its_task_and_the_next_tasks_are_clean(dedicated_worker, tmpdir):
    worker = dedicated_worker('redis', 'prefork', 'kill', concurrency=2)
    result, pid, stop_file = _start_busy(worker, tmpdir)
    os.kill(pid, signal.SIGKILL)
    result.get(timeout=RESULT_TIMEOUT, propagate=False)
    assert result.state == 'FAILURE'
    assert type(result.result).__name__ == 'WorkerLostError', repr(result.result)
    assert 'SIGKILL' in str(result.result) or 'signal 9' in str(result.result)
    _stays(worker, result.id, 'FAILURE')  # nothing of the dead child is late
    touch(stop_file)
    # The pool replaced the child; the next tasks' threads see only their own ids.
    figures, reports = run_load(worker, tmpdir, 2, 4, 10)
    assert figures['final_states_lost'] == 0, figures
    assert figures['id_mismatches_in_children'] == 0, figures
    assert figures['wrong_task_payloads'] == 0, figures
    assert figures['updates_sent'] == figures['updates_expected'], figures
    assert pid not in [report['pid'] for report in reports.values()]
    assert worker.process.alive()


# -------------------------------- 4. warm shutdown with a live TaskThread


def _sigterm_main_process(worker):
    """SIGTERM to the main process only, as an init system sends it: (exited in time, seconds)."""
    started = time.time()
    os.kill(worker.main_pid, signal.SIGTERM)
    exited = wait_until(lambda: not worker.process.alive(), SHUTDOWN_BOUND, interval=0.1)
    return exited, time.time() - started


@pytest.mark.parametrize('pool', [pool for pool in ('prefork', 'threads') if pool in POOLS])
def test_warm_shutdown_with_a_lingering_non_daemon_thread(dedicated_worker, tmpdir, pool):
    """prefork: the child process exits without joining the thread, so the
    worker stops within the bound.  threads: the thread lives in the worker's
    main process, and Python joins non-daemon threads at exit: the worker
    hangs until the thread ends (here: until the test lets it)."""
    worker = dedicated_worker('redis', pool, 'shutdown', concurrency=2)
    stop_file = os.path.join(str(tmpdir), 'stop-lingering')
    result = worker.client.send_task(LEAVE_THREAD, args=[stop_file, LINGER])
    info = result.get(timeout=RESULT_TIMEOUT)
    exited, took = _sigterm_main_process(worker)
    touch(stop_file)  # let the thread end: the worker, if still waiting, exits now
    exited_after_release = wait_until(lambda: not worker.process.alive(), 15.0, interval=0.1)
    print(
        '\nwarm shutdown %s: exited within %ss: %s (%.1fs); after the thread ended: %s'
        % (pool, SHUTDOWN_BOUND, exited, took, exited_after_release)
    )
    assert exited_after_release, worker.log_text()[-3000:]
    if pool == 'prefork':
        assert exited, 'prefork worker did not stop in %ss' % SHUTDOWN_BOUND
        assert not pid_alive(info['pid'])
    else:
        assert not exited, 'the threads pool no longer waits for non-daemon threads'
        assert 'Warm shutdown' in worker.log_text() or 'warm shutdown' in worker.log_text()


@pytest.mark.skipif('solo' not in POOLS, reason='no solo pool in this cell')
def test_warm_shutdown_on_the_solo_pool_waits_for_a_lingering_non_daemon_thread(
    dedicated_worker, tmpdir
):
    """solo: the task runs in the worker's main process, as on the threads
    pool, and Python joins non-daemon threads at exit: a warm shutdown waits
    for the thread, and the worker exits as soon as the thread ends."""
    worker = dedicated_worker('redis', 'solo', 'shutdown', concurrency=1)
    stop_file = os.path.join(str(tmpdir), 'stop-lingering')
    result = worker.client.send_task(LEAVE_THREAD, args=[stop_file, LINGER])
    info = result.get(timeout=RESULT_TIMEOUT)
    assert info['pid'] == worker.main_pid, 'solo runs the task in the main process'
    exited, took = _sigterm_main_process(worker)
    warm = 'Warm shutdown' in worker.log_text() or 'warm shutdown' in worker.log_text()
    touch(stop_file)  # let the thread end: the worker, if still waiting, exits now
    exited_after_release = wait_until(lambda: not worker.process.alive(), 15.0, interval=0.1)
    print(
        '\nwarm shutdown solo: exited within %ss: %s (%.1fs); after the thread ended: %s'
        % (SHUTDOWN_BOUND, exited, took, exited_after_release)
    )
    assert warm, worker.log_text()[-3000:]
    assert not exited, 'the solo pool no longer waits for non-daemon threads'
    assert exited_after_release, worker.log_text()[-3000:]
