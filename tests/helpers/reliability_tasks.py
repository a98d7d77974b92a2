"""Tasks for the reliability tests (tests/integration/test_reliability.py).

Registered on the integration app: ``tests.helpers.integration_tasks`` imports this
module at its bottom, so every worker the fixtures start knows these tasks.
Every wait here is bounded.  Python 2.7 compatible.
"""

from __future__ import absolute_import, print_function

import os
import threading
import time

import celery_ctxthread as cct
from tests.helpers.integration_tasks import (
    JOIN_TIMEOUT,
    app,
    seen_ids,
    wait_for_file,
    wait_for_file_count,
    write_json,
)

# The longest a straggler thread waits for the test's "task has ended" file.
LATE_WAIT = 20.0
# ONE executor shared by every load task of a worker process.
LOAD_EXECUTOR = cct.TaskThreadPoolExecutor(max_workers=8)


def _own_ids(task):
    """(self.request.id, current_task.request.id) as this thread sees them."""
    ids = seen_ids(task)
    return ids['self_request'], ids['current_task']


# ---------------------------------------------------- 1. late updates


def _straggler(task, task_id, mode, go_file, done_file):
    """Wait until the task has ended, then try to change its state twice."""
    outcome = {'waited': wait_for_file(go_file, LATE_WAIT), 'errors': [], 'ids': _own_ids(task)}
    for attempt in (1, 2):
        meta = {'late': True, 'attempt': attempt}
        try:
            if mode == 'plain':  # the baseline: no context, id passed by hand
                task.update_state(task_id=task_id, state='PROGRESS', meta=meta)
            elif mode == 'direct':  # around the guard: the backend itself
                task.backend.store_result(task_id, meta, 'PROGRESS', request=task.request)
            else:
                task.update_state(state='PROGRESS', meta=meta)
        except Exception as exc:  # reported to the test through the file
            outcome['errors'].append('%s: %s' % (type(exc).__name__, exc))
    write_json(done_file, outcome)


@app.task(bind=True, name='cct_rtest.late')
def late(self, mode, thread_name, go_file, done_file, fail):
    """Start a thread that updates the state after this task has ended.

    ``mode``: ``cct`` (a TaskThread), ``direct`` (a TaskThread calling the
    backend's store_result itself) or ``plain`` (a threading.Thread with
    ``task_id=`` passed by hand).  Raises after starting it when ``fail``.
    """
    make = threading.Thread if mode == 'plain' else cct.TaskThread
    args = (self, self.request.id, mode, go_file, done_file)
    make(target=_straggler, args=args, name=thread_name).start()
    if fail:
        raise RuntimeError('failing on purpose after starting %s' % thread_name)
    return thread_name


# ----------------------------------------------------- REVOKED (prefork)


def _keep_updating(task, stop_file, deadline):
    step = 0
    while time.time() < deadline and not os.path.exists(stop_file):
        step += 1
        task.update_state(state='PROGRESS', meta={'step': step, 'pid': os.getpid()})
        time.sleep(0.05)


@app.task(bind=True, name='cct_rtest.busy')
def busy(self, own_id, pid_file, stop_file, threads, seconds):
    """Write this process's pid, then let ``threads`` TaskThreads update the
    state until ``stop_file`` exists or ``seconds`` pass.  Returns the number
    of id mismatches the threads saw (0 expected)."""
    deadline = time.time() + seconds
    mismatches = []

    def work():
        if _own_ids(self) != (own_id, own_id):
            mismatches.append(_own_ids(self))
        _keep_updating(self, stop_file, deadline)

    workers = [cct.TaskThread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    write_json(pid_file, {'pid': os.getpid(), 'task_id': own_id})
    for worker in workers:
        worker.join(seconds + JOIN_TIMEOUT)
    return {'pid': os.getpid(), 'mismatches': len(mismatches)}


# ------------------------------------------------------------ 2. load


def _load_child(task, own_id, child, updates, counts, lock):
    sent = mismatches = errors = 0
    first_error = None
    for seq in range(updates):
        if _own_ids(task) != (own_id, own_id):
            mismatches += 1
        try:
            task.update_state(
                state='PROGRESS', meta={'task_id': own_id, 'child': child, 'seq': seq}
            )
            sent += 1
        except Exception as exc:  # counted, and failing the test through the counts
            errors += 1
            first_error = first_error or '%s: %s' % (type(exc).__name__, exc)
    with lock:
        if first_error and not counts.get('first_error'):
            counts['first_error'] = first_error
        counts['sent'] += sent
        counts['mismatches'] += mismatches
        counts['errors'] += errors
        counts['children'] += 1


@app.task(bind=True, name='cct_rtest.load')
def load(self, own_id, meet_dir, parties, threads, updates):
    """Meet the other load tasks (bounded), then run ``threads`` children,
    alternately TaskThreads and jobs on the shared LOAD_EXECUTOR, each sending
    ``updates`` update_state calls carrying ``own_id`` and a sequence number."""
    write_json(os.path.join(meet_dir, 'arrived-%s' % own_id), {})
    met = wait_for_file_count(meet_dir, 'arrived-', parties, JOIN_TIMEOUT)
    started = time.time()
    counts = {'sent': 0, 'mismatches': 0, 'errors': 0, 'children': 0}
    lock = threading.Lock()
    own_threads, futures = [], []
    for child in range(threads):
        args = (self, own_id, child, updates, counts, lock)
        if child % 2:
            futures.append(LOAD_EXECUTOR.submit(_load_child, *args))
        else:
            own_threads.append(cct.TaskThread(target=_load_child, args=args))
            own_threads[-1].start()
    for thread in own_threads:
        thread.join(JOIN_TIMEOUT * 3)
    for future in futures:
        future.result(JOIN_TIMEOUT * 3)
    counts.update(
        task_id=own_id,
        met=met,
        started=started,
        ended=time.time(),
        parent_ids=list(_own_ids(self)),
        pid=os.getpid(),
    )
    return counts


# ------------------------------------------------ 4. warm shutdown


@app.task(bind=True, name='cct_rtest.leave_thread')
def leave_thread(self, stop_file, seconds):
    """Start a non-daemon TaskThread that sleeps until ``stop_file`` exists or
    ``seconds`` pass, and return at once."""
    thread = cct.TaskThread(
        target=wait_for_file, args=(stop_file, seconds), name='lingering-%s' % self.request.id
    )
    thread.daemon = False
    thread.start()
    return {'pid': os.getpid(), 'thread': thread.name}
