"""Executors and futures whose jobs run in the submitting task's context.

::

    pool = cct.TaskThreadPoolExecutor(max_workers=8)   # may be shared, module-level

    @app.task(bind=True)
    def fetch_all(self, urls):
        return list(pool.map(fetch, urls))   # each job sees current_task == fetch_all

    future = cct.submit(fetch, url)          # one job, one new TaskThread

Each ``submit()`` captures the caller's context and wraps only that job, so a
pool shared by many tasks gives every job its own submitter's context, and its
worker threads carry none between jobs.
"""

import sys
from concurrent.futures import Future, ThreadPoolExecutor

from celery_ctxthread._compat import set_exception
from celery_ctxthread.context import _EMPTY, TaskContext, capture
from celery_ctxthread.threads import TaskThread, _pool_worker_starts

# Saved at import, before install() can replace it: our executor calls it
# directly so that a job is never wrapped twice.
_stdlib_submit = ThreadPoolExecutor.submit


def submit_in_context(submit, args, kwargs):
    """Call ``submit(executor, fn, *rest, **kwargs)``, ``fn`` wrapped in the caller's context.

    ``args`` is ``(executor, fn, *rest)``: ``fn`` is positional-only, as in
    the stdlib, so a job may take a keyword argument named ``fn``.
    """
    if len(args) < 2:
        return submit(*args, **kwargs)  # the stdlib raises its own TypeError
    fn = args[1]
    if type(fn) is _JobInContext:  # from our map(): captured once for all its jobs
        context, fn = fn.context, fn.fn
    else:
        context = capture()
        if context is _EMPTY:
            # Nothing to propagate: a worker thread this submit() starts would
            # capture the same empty context, so the flag below is not needed.
            return submit(*args, **kwargs)
    was_active = _pool_worker_starts.active
    _pool_worker_starts.active = True
    try:
        # The plain function, not a bound method: one object less per queued job.
        return submit(args[0], TaskContext.call, context, fn, args[2:], kwargs)
    finally:
        _pool_worker_starts.active = was_active


class _JobInContext(object):
    """``fn`` bound to a context captured once by ``map()``; ``submit`` unpacks it."""

    __slots__ = ('context', 'fn')

    def __init__(self, context, fn):
        self.context = context
        self.fn = fn

    def __call__(self, *args, **kwargs):  # reached only if a subclass calls it directly
        return self.context.call(self.fn, args, kwargs)


class TaskThreadPoolExecutor(ThreadPoolExecutor):
    """A drop-in :class:`~concurrent.futures.ThreadPoolExecutor`.

    Only the public ``submit`` and ``map`` are overridden (``map`` still goes
    through ``submit``): Python 3.14 removed the private internals that
    subclasses used to touch.
    """

    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), on Python 2.7 too
        return submit_in_context(_stdlib_submit, args, kwargs)

    submit.__doc__ = ThreadPoolExecutor.submit.__doc__

    def map(self, fn, *iterables, **kwargs):
        # Capture once, when map() is called, for all of its jobs: cheaper
        # than once per job, and right when the stdlib submits lazily
        # (Python 3.14's buffersize) from whichever thread iterates.
        context = capture()
        if context is not _EMPTY:
            fn = _JobInContext(context, fn)
        return ThreadPoolExecutor.map(self, fn, *iterables, **kwargs)

    map.__doc__ = ThreadPoolExecutor.map.__doc__


def submit(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a new :class:`TaskThread`; return its Future."""
    future = Future()
    TaskThread(target=_run_into, args=(future, fn, args, kwargs)).start()
    return future


def _run_into(future, fn, args, kwargs):
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException:  # the stdlib's _WorkItem does the same
        set_exception(future, *sys.exc_info()[1:])
    else:
        future.set_result(result)
