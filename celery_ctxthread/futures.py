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

from celery_ctxthread._compat import set_exception, split_fn
from celery_ctxthread._install_state import run_as_pool_code, wrapped_by_others
from celery_ctxthread._stdlib import cancel_on_take
from celery_ctxthread.context import _EMPTY, EVERY_JOB, JOB, _CallInContext, capture, refused
from celery_ctxthread.threads import TaskThread


def _submit_in_context(submit, args, kwargs, outlive=False):
    """Call ``submit(fn, *rest, **kwargs)`` with ``fn`` bound to the caller's context.

    ``submit`` is bound to the executor, ``args`` is ``(fn, *rest)``: ``fn``
    is positional-only, as in the stdlib, so a job may take a keyword argument
    named ``fn``.  The threads ``submit`` starts are the pool's own, never the task's.
    Unless ``outlive``, the job does not run if its task is over when it starts.
    """
    if not args:  # the stdlib raises its own TypeError
        return submit(*args, **kwargs)
    job = args[0]
    if type(job) is not _CallInContext:  # else bound already, by our map()
        context = capture()
        if context is _EMPTY:
            # Nothing to propagate: a worker thread this submit() starts would
            # capture the same empty context, so it need not be told apart.
            return submit(*args, **kwargs)
        # Wrappers below us (Sentry's, OpenTelemetry's submit) run around our
        # job: what they set for it stays set on top of the snapshot.
        keep_outer = wrapped_by_others(submit)
        once = True if outlive else JOB  # JOB: it does not run once its task is over
        job = _CallInContext(context, job, args[1:], kwargs, once, keep_outer)
        args, kwargs = (job,), {}
    return run_as_pool_code(submit, args, kwargs)


class TaskThreadPoolExecutor(ThreadPoolExecutor):
    """A drop-in :class:`~concurrent.futures.ThreadPoolExecutor`.

    Only the public ``submit`` and ``map`` are overridden (``map`` still goes
    through ``submit``): Python 3.14 removed the private internals that
    subclasses used to touch.  ``submit`` calls whatever
    ``ThreadPoolExecutor.submit`` is when it runs, so wrappers that Sentry or
    OpenTelemetry put there apply to our jobs too.

    A job whose task is over before a worker takes it never runs: its future is
    cancelled (``future.cancelled()``; ``result()`` raises
    :class:`~concurrent.futures.CancelledError`), so a dead task's queue never
    delays another task's jobs.
    ``jobs_outlive_task=True`` (a keyword argument) runs them all the same::

        pool = cct.TaskThreadPoolExecutor(max_workers=4, jobs_outlive_task=True)
    """

    _jobs_outlive_task = False

    def __init__(self, *args, **kwargs):
        # Popped, not a keyword-only parameter: this source runs on Python 2.7 too.
        self._jobs_outlive_task = bool(kwargs.pop('jobs_outlive_task', False))
        super(TaskThreadPoolExecutor, self).__init__(*args, **kwargs)
        # Asked as a worker takes each job, when it can still be cancelled:
        # no registry of jobs, nothing more per submit().
        cancel_on_take(self, refused)

    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), on Python 2.7 too
        if not args:
            split_fn(args, 'submit')  # raises its TypeError; else inline: one call less a job
        self = args[0]
        return _submit_in_context(
            super(TaskThreadPoolExecutor, self).submit, args[1:], kwargs, self._jobs_outlive_task
        )

    submit.__doc__ = ThreadPoolExecutor.submit.__doc__

    def map(self, fn, *iterables, **kwargs):
        # Capture once, when map() is called, for all of its jobs: cheaper
        # than once per job, and right when the stdlib submits lazily
        # (Python 3.14's buffersize) from whichever thread iterates.
        context = capture()
        if context is not _EMPTY:
            submit = super(TaskThreadPoolExecutor, self).submit
            # Bound once for every job: submit() wraps each again, as one JOB.
            every = False if self._jobs_outlive_task else EVERY_JOB  # none runs once it is over
            fn = _CallInContext(context, fn, (), None, every, wrapped_by_others(submit))
        return ThreadPoolExecutor.map(self, fn, *iterables, **kwargs)

    map.__doc__ = ThreadPoolExecutor.map.__doc__


def submit(*args, **kwargs):  # (fn, /, *args, **kwargs)
    """Run ``fn(*args, **kwargs)`` in a new :class:`TaskThread`; return its Future."""
    fn, args = split_fn(args, 'submit')
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
