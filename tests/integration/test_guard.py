"""The late-update guard and the retry refusal on real workers.

Every backend (rpc, Redis, SQLite) and pool.  Tasks live in
tests/helpers/guard_tasks.py; the same rules in-process: tests/unit/test_late_and_switch.py.
What the guard must let through is tested here: the task's own hooks, and
threads of a task that stores no final state.  Every wait is bounded.
"""

from __future__ import absolute_import, print_function

import os
import uuid

import pytest

from tests.helpers.integration_tasks import read_json, touch
from tests.helpers.servers import wait_until
from tests.integration.test_reliability import FILE_TIMEOUT, RESULT_TIMEOUT, rpc_late_states

# By name, as a client sends them: importing tests.helpers.guard_tasks here, before
# tests.helpers.integration_tasks, is a circular import that Python 2.7 refuses.
FAIL_AND_HANDLE = 'cct_gtest.fail_and_handle'
IGNORE_THEN_UPDATE = 'cct_gtest.ignore_then_update'
RETRY_FROM_A_THREAD = 'cct_gtest.retry_from_a_thread'
RETRY_ITSELF = 'cct_gtest.retry_itself'

# How long a task that must run once is watched for a second run.
SECOND_RUN_WINDOW = 2.0


def new_prefix(worker):
    """A file prefix of the test's own in the worker's ack directory."""
    return os.path.join(worker.ack_dir, uuid.uuid4().hex)


def runs(prefix):
    directory, name = os.path.split(prefix)
    return [entry for entry in os.listdir(directory) if entry.startswith(name + '-run-')]


def states_until_ready(result):
    """rpc: the states of ``result`` that reach the client up to its final one, in order."""
    states = []

    def on_message(meta):
        if meta.get('task_id') == result.id:
            states.append(meta.get('status'))

    result.get(timeout=RESULT_TIMEOUT, propagate=False, on_message=on_message)
    return states


def stored(worker, task_id):
    return worker.client.backend.get_task_meta(task_id, cache=False)


@pytest.mark.parametrize('captures', [True, False], ids=['captured', 'never-captured'])
def test_on_failure_stores_its_state_after_the_failure(worker, captures):
    """on_failure stores HANDLED from the task's own thread, after Celery stored
    FAILURE, in a process where the guard is in place: the client sees HANDLED,
    whether the task captured its context (so the guard watches it) or not."""
    prefix = new_prefix(worker)
    result = worker.client.send_task(FAIL_AND_HANDLE, args=[prefix, captures])
    seen = states_until_ready(result) if worker.kind == 'rabbitmq' else []
    handled = read_json(prefix + '-handled', FILE_TIMEOUT)
    if worker.kind == 'rabbitmq':
        # The states after the final one, sent before the task's file was written.
        assert seen + rpc_late_states(worker, result.id) == ['FAILURE', 'HANDLED']
        return
    meta = stored(worker, result.id)
    assert meta['status'] == 'HANDLED', (meta, handled)
    assert 'failing on purpose' in meta['result']['error'], meta
    if captures:
        assert result.id in meta['result']['error'], 'the thread had no task context'


def test_a_task_thread_updating_after_ignore_reaches_the_client(worker):
    """``raise Ignore()`` stores no final state: a TaskThread's later update is
    stored, and the client sees it instead of PENDING."""
    prefix = new_prefix(worker)
    result = worker.client.send_task(IGNORE_THEN_UPDATE, args=[prefix])
    assert read_json(prefix + '-ended', FILE_TIMEOUT)['task_id'] == result.id
    touch(prefix + '-go')
    report = read_json(prefix + '-done', FILE_TIMEOUT)
    assert report['waited'] and report['errors'] == [], report
    assert report['id'] == result.id, 'the thread had no task context'
    if worker.kind == 'rabbitmq':
        assert rpc_late_states(worker, result.id) == ['LATE']
    else:
        meta = stored(worker, result.id)
        assert (meta['status'], meta['result']) == ('LATE', {'late': True}), meta


def test_retry_from_a_task_thread_is_refused_and_the_task_runs_once(worker):
    prefix = new_prefix(worker)
    result = worker.client.send_task(RETRY_FROM_A_THREAD, args=[prefix])
    (raised,) = result.get(timeout=RESULT_TIMEOUT)
    assert raised.startswith('RuntimeError: '), raised
    assert "'retrier-%s'" % result.id[:8] in raised and 'retry()' in raised, raised
    assert not wait_until(lambda: len(runs(prefix)) > 1, SECOND_RUN_WINDOW), runs(prefix)
    assert len(runs(prefix)) == 1


def test_retry_from_the_tasks_own_thread_retries(worker):
    prefix = new_prefix(worker)
    result = worker.client.send_task(RETRY_ITSELF, args=[prefix])
    assert result.get(timeout=RESULT_TIMEOUT) == 1
    assert len(runs(prefix)) == 2
