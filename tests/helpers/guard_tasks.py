"""Tasks for the late-update guard on real workers (tests/integration/test_guard.py).

Registered on the integration app: ``tests.helpers.integration_tasks`` imports this
module at its bottom, so every worker the fixtures start knows these tasks.
Each task takes a file prefix in the test's ack directory and reports through
files named after it.  Every wait here is bounded.  Python 2.7 compatible.
"""

from __future__ import absolute_import, print_function

import threading
import uuid

from celery import Task
from celery.exceptions import Ignore
from celery.signals import task_postrun

import celery_ctxthread as cct
from celery_ctxthread import guard
from tests.helpers.integration_tasks import JOIN_TIMEOUT, app, wait_for_file, write_json
from tests.helpers.tasks_inprocess import retry_in_a_task_thread

FAIL_AND_HANDLE = 'cct_gtest.fail_and_handle'
IGNORE_THEN_UPDATE = 'cct_gtest.ignore_then_update'
RETRY_FROM_A_THREAD = 'cct_gtest.retry_from_a_thread'
RETRY_ITSELF = 'cct_gtest.retry_itself'


def note_run(task, prefix):
    """One file per run of ``task``: the test counts them."""
    write_json('%s-run-%s' % (prefix, uuid.uuid4().hex), {'retries': task.request.retries})


def ids_seen_by_a_task_thread(task):
    """Start a TaskThread (which captures this task's context) and join it: the id it saw."""
    seen = []
    thread = cct.TaskThread(target=lambda: seen.append(task.request.id))
    thread.start()
    thread.join(JOIN_TIMEOUT)
    return seen


class HandlesItsFailure(Task):
    """on_failure stores HANDLED from the task's own thread, after Celery stored FAILURE."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        self.update_state(task_id=task_id, state='HANDLED', meta={'error': str(exc)})
        write_json(args[0] + '-handled', {'thread': threading.current_thread().name})


@app.task(bind=True, base=HandlesItsFailure, name=FAIL_AND_HANDLE)
def fail_and_handle(self, prefix, captures):
    """Fail after capturing this task's context (naming the id its thread saw), or,
    when not ``captures``, after only putting the guard in place, as the first
    capture of another task in this process does."""
    if captures:
        seen = ids_seen_by_a_task_thread(self)
    else:
        guard.set_up()
        seen = 'nothing: no thread'
    raise RuntimeError('failing on purpose; the thread saw %s' % seen)


def _update_after_the_end(task, prefix):
    """Wait for the test's go (given once the task has ended), then update the state."""
    outcome = {'waited': wait_for_file(prefix + '-go', JOIN_TIMEOUT), 'errors': []}
    outcome['id'] = task.request.id
    try:
        task.update_state(state='LATE', meta={'late': True})
    except Exception as exc:  # reported to the test through the file
        outcome['errors'].append('%s: %s' % (type(exc).__name__, exc))
    write_json(prefix + '-done', outcome)


@app.task(bind=True, name=IGNORE_THEN_UPDATE)
def ignore_then_update(self, prefix):
    """Start a TaskThread that updates after this task ended, then ``raise Ignore()``."""
    cct.TaskThread(target=_update_after_the_end, args=(self, prefix)).start()
    raise Ignore()


@task_postrun.connect(weak=False, dispatch_uid='cct_gtest.postrun')
def _note_the_end(sender=None, task_id=None, args=None, **kwargs):
    """The last thing the task's own thread does for it: tell the test."""
    if getattr(sender, 'name', None) == IGNORE_THEN_UPDATE:
        write_json(args[0] + '-ended', {'task_id': task_id})


@app.task(bind=True, name=RETRY_FROM_A_THREAD, max_retries=1)
def retry_from_a_thread(self, prefix):
    """A TaskThread calls self.retry(); return what it raised, as 'Type: message'."""
    note_run(self, prefix)
    return retry_in_a_task_thread(self, 0, JOIN_TIMEOUT)


@app.task(bind=True, name=RETRY_ITSELF, max_retries=1)
def retry_itself(self, prefix):
    """Capture this task's context, then retry once from the task's own thread."""
    note_run(self, prefix)
    ids_seen_by_a_task_thread(self)
    if not self.request.retries:
        # Not at once: retry() publishes before this run stores RETRY, and the
        # database backend would let that RETRY overwrite the retry's SUCCESS.
        raise self.retry(countdown=1)
    return self.request.retries
