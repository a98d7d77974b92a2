"""The module ``python -m celery_ctxthread demo``'s worker imports (``celery -A``).

Importing it builds the worker's app from the environment the demo started the
worker with, registers the task and connects a ``worker_init`` receiver: only
the worker imports it, never the demo's client.
"""

from __future__ import absolute_import

import os
import signal
import threading
import time

from celery import current_task
from celery.signals import worker_init

import celery_ctxthread as cct
from celery_ctxthread._demo._app import KEY_PARENT_PID, TASK_NAME, make_app

app = make_app(os.environ, set_as_current=True)


@app.task(bind=True, name=TASK_NAME)
def report_progress(self, thread_class, threads, steps, delay, linger=0.5):
    """Run ``threads`` threads of ``thread_class`` that each report ``steps`` steps.

    Every update sends the whole ``{thread name: step}`` dict, so the client can
    draw every bar from the latest state alone.  Errors raised by
    ``update_state`` inside the threads are returned, as the user would see them.
    """
    progress = Progress(self, ['t%d' % (i + 1) for i in range(threads)])
    jobs = [(name, steps, delay * (1 + 0.2 * i)) for i, name in enumerate(progress.names)]
    if thread_class == 'executor':
        with cct.TaskThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(progress.run, *job) for job in jobs]:
                future.result()
    else:
        cls = cct.TaskThread if thread_class == 'task_thread' else threading.Thread
        started = [cls(target=progress.run, args=job) for job in jobs]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
    # A polling client sees only states that last longer than its poll interval:
    # keep the last PROGRESS up a moment before SUCCESS replaces it.
    time.sleep(linger)
    return progress.result()


class Progress(object):
    """Per-thread steps, shared by the task's threads under one lock."""

    def __init__(self, task, names):
        self.task = task
        self.names = names
        self.steps = dict.fromkeys(names, 0)
        self.errors = []
        self.update_calls = 0
        self.seen_in_thread = None
        self.lock = threading.Lock()

    def run(self, name, steps, delay):
        """One thread's job: ``steps`` steps, each reported with update_state."""
        self._note_context()
        for step in range(1, steps + 1):
            time.sleep(delay)
            with self.lock:  # also orders the updates: a newer dict is never overwritten
                self.steps[name] = step
                self._send()

    def _send(self):
        self.update_calls += 1
        try:
            self.task.update_state(state='PROGRESS', meta={'steps': dict(self.steps)})
        except Exception as exc:  # the point of the demo: show what the user would get
            text = '%s: %s' % (type(exc).__name__, exc)
            if text not in self.errors:
                self.errors.append(text)

    def _note_context(self):
        with self.lock:
            if self.seen_in_thread is None:
                task = current_task._get_current_object()
                self.seen_in_thread = {
                    'current_task': getattr(task, 'name', None),
                    'request_id': self.task.request.id,
                }

    def result(self):
        """What the task returns: the worker's own view of the run."""
        return {
            'worker_steps': self.steps,
            'errors': self.errors,
            'update_calls': self.update_calls,
            'seen_in_thread': self.seen_in_thread,
        }


@worker_init.connect
def _watch_parent(**kwargs):
    """Stop this worker if the demo that started it dies, even by SIGKILL."""
    parent = os.environ.get(KEY_PARENT_PID)
    if parent and os.name == 'posix':  # os.kill(pid, 0) would end the process on Windows
        watchdog = threading.Thread(target=_exit_when_gone, args=(int(parent),))
        watchdog.daemon = True
        watchdog.start()


def _exit_when_gone(pid):
    while _alive(pid):
        time.sleep(0.5)
    # Our process group holds the worker and any pool children.
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == 1  # EPERM: alive, owned by someone else
    return True
