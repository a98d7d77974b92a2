"""Propagate Celery's task context into the threads a task starts.

::

    import celery_ctxthread as cct

    @app.task(bind=True)
    def report(self):
        cct.TaskThread(target=self.update_state, kwargs={'state': 'PROGRESS'}).start()

See the README and docs/ for every entry point.

Importing the package does exactly two things beyond defining names, both
because they cannot wait for a first call:

- it sets the late-update guard up (:mod:`celery_ctxthread.guard`): Celery
  4.3 to 5.1 bind ``backend.mark_as_done`` into each task's tracer when they
  build it, which a worker does once at start, so a guard set up later would
  never see a task succeed;
- it connects the worker-wide switch, and the events that end a task for
  its threads (:ref:`how-lifecycle`), to the worker's signals
  (:mod:`celery_ctxthread.worker`), and reads the switch's environment
  variable, so that a worker with a typo there refuses to start.

Nothing else at import changes Celery or the standard library.
"""

from celery_ctxthread import guard, worker
from celery_ctxthread.context import TaskContext, capture, wrap
from celery_ctxthread.futures import TaskThreadPoolExecutor, submit
from celery_ctxthread.lifecycle import (
    CANCELLED_BY_HAND,
    FAILED,
    REASONS,
    RETURNED,
    REVOKED,
    SOFT_TIME_LIMIT,
    WORKER_SHUTDOWN,
    TaskOver,
    cancel,
    cancelled,
    checkpoint,
    wait_cancelled,
)
from celery_ctxthread.patch import install, installed, uninstall
from celery_ctxthread.threads import TaskThread, TaskTimer, opt_out

__version__ = '0.1.0'

guard.set_up()
worker.connect()

__all__ = [
    'CANCELLED_BY_HAND',
    'FAILED',
    'REASONS',
    'RETURNED',
    'REVOKED',
    'SOFT_TIME_LIMIT',
    'WORKER_SHUTDOWN',
    'TaskContext',
    'TaskOver',
    'TaskThread',
    'TaskThreadPoolExecutor',
    'TaskTimer',
    'cancel',
    'cancelled',
    'capture',
    'checkpoint',
    'install',
    'installed',
    'opt_out',
    'submit',
    'uninstall',
    'wait_cancelled',
    'wrap',
]
