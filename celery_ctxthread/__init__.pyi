from celery_ctxthread import guard as guard
from celery_ctxthread import worker as worker
from celery_ctxthread.context import TaskContext as TaskContext
from celery_ctxthread.context import capture as capture
from celery_ctxthread.context import wrap as wrap
from celery_ctxthread.futures import TaskThreadPoolExecutor as TaskThreadPoolExecutor
from celery_ctxthread.futures import submit as submit
from celery_ctxthread.lifecycle import CANCELLED_BY_HAND as CANCELLED_BY_HAND
from celery_ctxthread.lifecycle import FAILED as FAILED
from celery_ctxthread.lifecycle import REASONS as REASONS
from celery_ctxthread.lifecycle import RETURNED as RETURNED
from celery_ctxthread.lifecycle import REVOKED as REVOKED
from celery_ctxthread.lifecycle import SOFT_TIME_LIMIT as SOFT_TIME_LIMIT
from celery_ctxthread.lifecycle import WORKER_SHUTDOWN as WORKER_SHUTDOWN
from celery_ctxthread.lifecycle import TaskOver as TaskOver
from celery_ctxthread.lifecycle import cancel as cancel
from celery_ctxthread.lifecycle import cancelled as cancelled
from celery_ctxthread.lifecycle import checkpoint as checkpoint
from celery_ctxthread.lifecycle import wait_cancelled as wait_cancelled
from celery_ctxthread.patch import install as install
from celery_ctxthread.patch import installed as installed
from celery_ctxthread.patch import uninstall as uninstall
from celery_ctxthread.threads import TaskThread as TaskThread
from celery_ctxthread.threads import TaskTimer as TaskTimer
from celery_ctxthread.threads import opt_out as opt_out

__version__: str
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
