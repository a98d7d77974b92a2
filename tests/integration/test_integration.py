"""Integration tests: real workers (prefork, threads) on RabbitMQ+rpc, Redis
(result_extended) and SQLite, plus eager mode, for every entry point.

Each task blocks (bounded) until the test acknowledges what it saw, so
PROGRESS is observed while the task is still running.
"""

from __future__ import absolute_import, print_function

import os
import sys
import uuid

import celery
import pytest

from tests.conftest import _worker
from tests.helpers.integration_tasks import ENTRY_POINTS, read_json, touch
from tests.helpers.servers import wait_until

PROBE = 'cct_itest.probe'
CONCURRENT_PROBE = 'cct_itest.concurrent_probe'
RESULT_TIMEOUT = 30.0  # a finished task's result must arrive by then
PROGRESS_TIMEOUT = 15.0  # PROGRESS from a working entry point
BASELINE_WINDOW = 1.5  # how long the baseline is watched for PROGRESS
ACK_TIMEOUT = 20.0  # how long a task waits for the test's ack
# What Redis' store_result raises for task_id None (the README's two Redis rows):
# Celery 5.3.0 added a check of the id; before it, joining the key fails on the None,
# b''.join([prefix, None, b'']), in words that depend on the Python version.
if celery.VERSION >= (5, 3):
    NO_TASK_ID_ERROR = 'ValueError: task_id must not be empty. Got None instead.'
elif sys.version_info[0] == 2:
    NO_TASK_ID_ERROR = 'TypeError: sequence item 1: expected string, NoneType found'
else:
    NO_TASK_ID_ERROR = 'TypeError: sequence item 1: expected a bytes-like object, NoneType found'


class ProbeRun(object):
    """One ``cct_itest.probe`` task sent to a worker."""

    def __init__(self, worker, entry, **options):
        self.worker = worker
        self.token = uuid.uuid4().hex
        self.args = [entry, self.token, worker.ack_dir, options]
        self.result = worker.client.send_task(PROBE, args=self.args)

    def meta(self):
        """The raw state meta, fetched from the result backend now."""
        return self.result.backend.get_task_meta(self.result.id)

    def ack(self):
        touch(os.path.join(self.worker.ack_dir, self.token))

    def watch_progress(self, timeout):
        """The meta once it is PROGRESS (else the last one seen); then ack."""
        try:
            if self.worker.kind == 'rabbitmq':
                return self._watch_messages()
            return self._poll_meta(timeout)
        finally:
            self.ack()

    def _poll_meta(self, timeout):
        last = {}

        def progress():
            last.update(self.meta())
            return last.get('status') == 'PROGRESS'

        wait_until(progress, timeout)
        return last

    def _watch_messages(self):
        """rpc: state messages go to this client's reply queue, where a
        started result consumer gets them, so listen instead of polling;
        the task's own ack timeout bounds the wait."""
        seen = {}

        def on_message(meta):
            if seen.get('status') != 'PROGRESS':
                seen.clear()
                seen.update(meta)
            if meta.get('status') == 'PROGRESS':
                self.ack()

        self.result.get(on_message=on_message, timeout=RESULT_TIMEOUT, propagate=False)
        return seen

    def report(self):
        return self.result.get(timeout=RESULT_TIMEOUT)

    def progress_then_report(self):
        """Check the child's PROGRESS reached the client while the task ran; the report."""
        meta = self.watch_progress(PROGRESS_TIMEOUT)
        report = self.report()
        assert meta.get('status') == 'PROGRESS', meta
        assert meta['result'] == {'token': self.token, 'step': 1}
        assert report['error'] is None
        return report

    def log_line(self, task_id, task_name=PROBE):
        """The child's log record as Celery's task log format prints it."""
        return '%s[%s]: child log line %s' % (task_name, task_id, self.token)

    def wait_log(self, text, timeout=10.0):
        return wait_until(lambda: text in self.worker.log_text(), timeout)


def assert_ids(report, expected):
    ids = report['ids']
    assert (ids['current_task'], ids['self_request'], ids['worker_task']) == (
        expected,
        expected,
        expected,
    ), ids


def assert_ran_in_other_thread(report):
    assert report['ids']['thread'] != report['parent']['thread']


# ------------------------------------------------------- 1. PROGRESS


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_progress_from_child_is_seen_while_task_runs(worker, entry):
    run = ProbeRun(worker, entry, progress=True, ack_timeout=ACK_TIMEOUT)
    report = run.progress_then_report()
    assert report['acked'] is True  # the task was still running
    assert run.result.state == 'SUCCESS'


# ---------------------------------------------- 2. ids and task logger


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_child_sees_parent_task_and_logs_with_its_id(worker, entry):
    run = ProbeRun(worker, entry)
    report = run.report()
    assert report['error'] is None
    assert_ids(report, run.result.id)
    assert_ids({'ids': report['parent']}, run.result.id)
    assert_ran_in_other_thread(report)
    # The worker runs Celery's LocalStack flavour that this cell asked for.
    flavour = '_FastLocalStack' if os.environ.get('USE_FAST_LOCALS') else '_LocalStack'
    assert report['stack_flavour'] == flavour
    line = run.log_line(run.result.id)
    assert run.wait_log(line), 'no %r in the worker log' % line


# ------------------------------------------------ 3. children (Redis)


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_subtask_from_child_is_a_child_of_the_task(redis_worker, entry):
    run = ProbeRun(redis_worker, entry, subtask=True)
    report = run.report()
    assert report['error'] is None
    children = run.result.children or []
    assert [child.id for child in children] == [report['subtask_id']]
    assert children[0].get(timeout=RESULT_TIMEOUT) == 5


# ---------------------------------- 4. result_extended fields (Redis)


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_progress_keeps_extended_fields(redis_worker, entry):
    run = ProbeRun(redis_worker, entry, progress=True, ack_timeout=ACK_TIMEOUT)
    meta = run.watch_progress(PROGRESS_TIMEOUT)
    run.report()
    assert meta.get('status') == 'PROGRESS', meta
    if celery.VERSION < (4, 4):
        # A documented limitation of Celery 4.3 itself: its update_state does
        # not pass the request, so no thread's PROGRESS has these fields.
        assert meta.get('name') is None and meta.get('args') is None
    else:
        assert meta.get('name') == PROBE
        assert list(meta.get('args') or ()) == run.args


def test_baseline_hand_passed_task_id_loses_extended_fields(redis_worker):
    """update_state(task_id=...) from a plain thread: stored, but with an empty request."""
    run = ProbeRun(redis_worker, 'plain', progress=True, by_hand=True, ack_timeout=ACK_TIMEOUT)
    meta = run.watch_progress(PROGRESS_TIMEOUT)
    report = run.report()
    assert report['error'] is None
    assert meta.get('status') == 'PROGRESS' and meta['result']['token'] == run.token
    assert meta.get('name') is None and meta.get('args') is None, meta
    assert not meta.get('parent_id') and not meta.get('children'), meta


# -------------------------------- 5. one shared executor, two tasks


def test_shared_executor_keeps_concurrent_tasks_apart(concurrent_worker, tmpdir):
    worker = concurrent_worker
    work = str(tmpdir)
    results = [worker.client.send_task(CONCURRENT_PROBE, args=[work, 2, 4]) for _ in range(2)]
    reports = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    touch(os.path.join(work, 'go'))
    for result, report in zip(results, reports):
        assert report['met'], 'the two tasks did not run at the same time'
        assert len(report['seen']) == 8
        for ids in report['seen']:
            assert_ids({'ids': ids}, result.id)
    for result in results:
        later = read_json(os.path.join(work, 'notask-%s.json' % result.id), RESULT_TIMEOUT)
        for ids in later:
            assert_ids({'ids': ids}, None)


# -------------------------- 6. baseline: a plain thread loses context


def test_baseline_plain_thread_loses_the_task(worker):
    run = ProbeRun(worker, 'plain', progress=True, ack_timeout=BASELINE_WINDOW)
    meta = run.watch_progress(BASELINE_WINDOW)
    report = run.report()
    assert meta.get('status') != 'PROGRESS', meta
    assert_ids(report, None)
    assert run.wait_log(run.log_line('???', '???'))  # no task in the record
    error = report['error'] or ''
    if worker.kind == 'redis':
        assert error == NO_TASK_ID_ERROR, report
        assert run.wait_log('child failed %s' % run.token)
    elif worker.kind == 'rabbitmq' and celery.VERSION < (4, 4):
        # The original report: Python 2.7, Celery 4.3.0, rpc on RabbitMQ.
        assert 'RPC backend missing task request for None' in error, report
        assert run.wait_log('RPC backend missing task request for None')
    else:  # rpc from 4.4 on, and the database backend: dropped without a word
        assert error == '', report


# ------------------------------------------- the worker-wide switch


def test_worker_switch_makes_plain_threads_propagate(switched_worker):
    run = ProbeRun(switched_worker, 'plain', progress=True, ack_timeout=ACK_TIMEOUT)
    report = run.progress_then_report()
    assert_ids(report, run.result.id)
    assert_ran_in_other_thread(report)


# ------------------------------------------------------- 7. eager mode


def _eager_probe(tasks, entry, tmpdir):
    token = uuid.uuid4().hex
    result = tasks.probe.apply_async(args=(entry, token, str(tmpdir), {'progress': True}))
    report = result.get(timeout=RESULT_TIMEOUT)
    return result, report, eager_stored_meta(tasks, result.id), token


def eager_stored_meta(tasks, task_id):
    """What the child stored.  Celery refuses (4.x) or warns (5.x) when a
    backend is read with task_always_eager on, so switch it off to read."""
    conf = tasks.app.conf
    conf.task_always_eager = False
    try:
        return tasks.app.backend.get_task_meta(task_id)
    finally:
        conf.task_always_eager = True


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_eager_child_sees_task_and_stores_progress(eager_tasks, entry, tmpdir):
    result, report, stored, token = _eager_probe(eager_tasks, entry, tmpdir)
    assert report['error'] is None
    assert_ids(report, result.id)
    assert_ran_in_other_thread(report)
    assert stored['status'] == 'PROGRESS'
    assert stored['result'] == {'token': token, 'step': 1}


def test_eager_baseline_plain_thread_loses_the_task(eager_tasks, tmpdir):
    _, report, stored, _ = _eager_probe(eager_tasks, 'plain', tmpdir)
    assert_ids(report, None)
    assert stored['status'] == 'PENDING'


# ---------------------- a limitation of Celery itself: fast locals + threads


@pytest.mark.skipif(
    not (os.environ.get('USE_FAST_LOCALS') and celery.VERSION >= (4, 4)),
    reason='only USE_FAST_LOCALS cells with the threads pool (Celery 4.4+) have it',
)
def test_fast_locals_threads_pool_limitation(request, worker_registry):
    """USE_FAST_LOCALS + threads pool: the task's own thread has no current_task,
    so there is nothing to propagate.  Celery's tracer binds ``_task_stack.push``
    once, in the thread that builds it; a threading.local's bound push then
    pushes onto that thread's list, never the pool thread's."""
    worker = _worker(request, worker_registry, 'redis', 'threads')
    run = ProbeRun(worker, 'TaskThread')
    report = run.report()
    assert report['stack_flavour'] == '_FastLocalStack'
    assert_ids({'ids': report['parent']}, None)  # the task itself sees nothing
    assert_ids(report, None)
