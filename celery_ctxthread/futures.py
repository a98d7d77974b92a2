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
from celery_ctxthread.context import TaskContext, capture
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
    context = capture()
    if context.task is None:
        # Nothing to propagate: a worker thread this submit() starts would
        # capture the same empty context, so the flag below is not needed.
        return submit(*args, **kwargs)
    was_active = getattr(_pool_worker_starts, 'active', False)
    _pool_worker_starts.active = True
    try:
        # The plain function, not a bound method: one object less per queued job.
        return submit(args[0], TaskContext.call, context, args[1], args[2:], kwargs)
    finally:
        _pool_worker_starts.active = was_active


class TaskThreadPoolExecutor(ThreadPoolExecutor):
    """A drop-in :class:`~concurrent.futures.ThreadPoolExecutor`; ``map`` goes through ``submit``.

    Only the public ``submit`` is overridden: Python 3.14 removed the private
    internals that subclasses used to touch.
    """

    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), on Python 2.7 too
        return submit_in_context(_stdlib_submit, args, kwargs)

    submit.__doc__ = ThreadPoolExecutor.submit.__doc__


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
