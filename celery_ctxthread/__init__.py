"""Propagate Celery's task context into the threads a task starts.

::

    import celery_ctxthread as cct

    @app.task(bind=True)
    def report(self):
        cct.TaskThread(target=self.update_state, kwargs={'state': 'PROGRESS'}).start()

See the README and docs/ for every entry point.
"""

from celery_ctxthread import worker  # noqa: F401  (connects the worker-wide switch)
from celery_ctxthread.context import TaskContext, capture, wrap
from celery_ctxthread.futures import TaskThreadPoolExecutor, submit
from celery_ctxthread.patch import install, installed, uninstall
from celery_ctxthread.threads import TaskThread, TaskTimer, opt_out

__version__ = '0.1.0'

__all__ = [
    'TaskContext',
    'TaskThread',
    'TaskThreadPoolExecutor',
    'TaskTimer',
    'capture',
    'install',
    'installed',
    'opt_out',
    'submit',
    'uninstall',
    'wrap',
]
