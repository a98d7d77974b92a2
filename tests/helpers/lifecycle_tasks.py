"""Tasks for the lifecycle on real workers (tests/integration/test_lifecycle.py).

Registered on the integration app: ``tests.helpers.integration_tasks`` imports
this module at its bottom.  Each task takes a file prefix and reports through
JSON files named after it; times are ``time.time()`` of this machine, which
the test shares.  Every wait here is bounded.  Python 2.7 compatible.
"""

from __future__ import absolute_import, print_function

import os
import threading
import time

from celery.exceptions import SoftTimeLimitExceeded

import celery_ctxthread as cct
from tests.helpers.integration_tasks import EXECUTOR, app, wait_for_file, write_json

WATCHED = 'cct_ltest.watched'
BYSTANDER = 'cct_ltest.bystander'
QUEUES_AND_FAILS = 'cct_ltest.queues_and_fails'
ONE_JOB = 'cct_ltest.one_job'

# The longest any watcher or task here waits for its event.
EVENT_WAIT = 20.0


def _watch(prefix, name, running):
    """A cooperative loop in a thread or job: it checks every 50 ms until its task is
    over; then reports when it saw that, and what checkpoint() raised."""
    running.set()
    loops = 0
    deadline = time.time() + EVENT_WAIT
    while not cct.cancelled() and time.time() < deadline:
        loops += 1
        cct.wait_cancelled(0.05)
    stopped = time.time()
    try:
        cct.checkpoint()
        raised = None
    except cct.TaskOver as over:
        raised = {'reason': over.reason, 'task_id': over.task_id}
    write_json('%s-%s' % (prefix, name), {'stopped': stopped, 'raised': raised, 'loops': loops})


def _start_watchers(prefix):
    """Start both watchers; return once both run (a job still queued when its task
    ends never runs: that is what the lifecycle promises)."""
    running = (threading.Event(), threading.Event())
    thread = cct.TaskThread(target=_watch, args=(prefix, 'thread', running[0]), name='watcher')
    thread.start()
    job = EXECUTOR.submit(_watch, prefix, 'job', running[1])  # the shared executor, two workers
    assert all(event.wait(EVENT_WAIT) for event in running), 'a watcher did not start'
    write_json(prefix + '-started', {'pid': os.getpid(), 'at': time.time()})
    return thread, job


@app.task(bind=True, name=WATCHED)
def watched(self, prefix, end):
    """Start a watching TaskThread and a watching job, then end as ``end`` says:
    'return', 'fail', 'soft_limit' (wait for the limit, catch it, clean up 2 s),
    'wait' (until ``prefix-go`` exists: the test revokes it), or 'join' (its watchers:
    they end when the worker's shutdown ends the task)."""
    thread, job = _start_watchers(prefix)
    if end == 'soft_limit':
        try:
            time.sleep(EVENT_WAIT)
        except SoftTimeLimitExceeded:
            fired = time.time()
            time.sleep(2.0)  # cleaning up: the threads are told already
            write_json(prefix + '-event', {'at': fired, 'cleaned_up': time.time()})
            return 'cleaned up'
    if end == 'wait':
        wait_for_file(prefix + '-go', EVENT_WAIT)
    if end == 'join':
        thread.join(EVENT_WAIT)
        job.result(EVENT_WAIT)
    write_json(prefix + '-event', {'at': time.time()})
    if end == 'fail':
        raise RuntimeError('failing on purpose')
    return end


@app.task(bind=True, name=BYSTANDER)
def bystander(self, prefix):
    """Another task at the same time: its watchers must see nothing until it returns."""
    _start_watchers(prefix)
    wait_for_file(prefix + '-go', EVENT_WAIT)
    write_json(prefix + '-event', {'at': time.time()})
    return 'returned'


@app.task(bind=True, name=QUEUES_AND_FAILS)
def queues_and_fails(self, jobs, seconds):
    """Queue ``jobs`` jobs of ``seconds`` each on the shared executor, then fail."""
    for _ in range(jobs):
        EXECUTOR.submit(time.sleep, seconds)
    raise RuntimeError('failing with jobs queued')


@app.task(bind=True, name=ONE_JOB)
def one_job(self):
    """How long one job on the shared executor waited to start."""
    submitted = time.time()
    return EXECUTOR.submit(time.time).result(EVENT_WAIT) - submitted
