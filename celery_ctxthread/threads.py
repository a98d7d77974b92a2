"""Threads that start inside the task context of whoever starts them.

::

    @app.task(bind=True)
    def crunch(self, parts):
        threads = [cct.TaskThread(target=work, args=(self, part)) for part in parts]
        for thread in threads:
            thread.start()      # the context is captured here, as the stdlib 3.14 does
        for thread in threads:
            thread.join()

    def work(task, part):
        task.update_state(state='PROGRESS', meta={'part': part})  # reaches the client

The context is captured in ``start()``, not in ``__init__``: a thread built
ahead of time runs in the context of the task that starts it, and subclasses
that override ``run()`` are covered too.  ``run()`` called directly, without
``start()``, is the stdlib's.
"""

import threading

from celery_ctxthread._compat import TimerBase
from celery_ctxthread.context import capture

_OPT_OUT_ATTRIBUTE = '_celery_ctxthread_opt_out'
_MISSING = object()

# Set while an executor's submit() runs: the threads it starts then are pool
# workers that outlive the job, and must never keep the job's context.
_pool_worker_starts = threading.local()


def opt_out(thread):
    """Start ``thread`` without the task context, even under :func:`install`.

    Returns the thread, so it chains::

        cct.opt_out(threading.Thread(target=watchdog)).start()
    """
    setattr(thread, _OPT_OUT_ATTRIBUTE, True)
    return thread


class _RunInContext(object):
    """A thread's ``run``, bound to the context captured by its ``start()``."""

    __slots__ = ('context', 'run')

    def __init__(self, context, run):
        self.context = context
        self.run = run

    def __call__(self):
        context, run = self.context, self.run
        # Like Thread.run dropping its target: keep no task or request alive.
        self.context = self.run = None
        if run is not None:
            return context.call(run, (), {})


def start_in_context(thread, start):
    """Call ``start()`` so that ``thread.run()`` runs in the caller's task context.

    ``start`` is the thread's real start (bound).  Does nothing extra outside a
    task, for an opted-out thread, for a pool's own workers, and for a thread
    already wrapped (then ``start()`` raises as the stdlib does when started twice).
    """
    context = capture()  # first: outside a task nothing else is looked at
    own = thread.__dict__  # not getattr(): a missing attribute costs an exception
    if (
        context.task is None
        or own.get(_OPT_OUT_ATTRIBUTE)
        or type(own.get('run')) is _RunInContext
        or getattr(_pool_worker_starts, 'active', False)
    ):
        return start()
    own_run = own.get('run', _MISSING)
    thread.run = _RunInContext(context, thread.run)
    try:
        return start()
    except BaseException:  # it never started: leave the thread as it was
        if own_run is _MISSING:
            del thread.run
        else:
            thread.run = own_run
        raise


class _StartsInTaskContext(object):
    def start(self):
        return start_in_context(self, super(_StartsInTaskContext, self).start)


class TaskThread(_StartsInTaskContext, threading.Thread):
    """A drop-in :class:`threading.Thread` that runs in its starter's task context."""


class TaskTimer(_StartsInTaskContext, TimerBase):
    """A drop-in :class:`threading.Timer` that fires in its starter's task context.

    ::

        cct.TaskTimer(5.0, self.update_state, kwargs={'state': 'SLOW'}).start()
    """
