from celery_ctxthread import guard as guard
from celery_ctxthread import worker as worker
from celery_ctxthread.context import TaskContext as TaskContext
from celery_ctxthread.context import capture as capture
from celery_ctxthread.context import wrap as wrap
from celery_ctxthread.futures import TaskThreadPoolExecutor as TaskThreadPoolExecutor
from celery_ctxthread.futures import submit as submit
from celery_ctxthread.patch import install as install
from celery_ctxthread.patch import installed as installed
from celery_ctxthread.patch import uninstall as uninstall
from celery_ctxthread.threads import TaskThread as TaskThread
from celery_ctxthread.threads import TaskTimer as TaskTimer
from celery_ctxthread.threads import opt_out as opt_out

__version__: str
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
