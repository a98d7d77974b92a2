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
from types import MethodType

from celery_ctxthread._compat import RELEASES_WORK_ITEMS, set_exception, split_fn
from celery_ctxthread.context import _EMPTY, TaskContext, capture
from celery_ctxthread.threads import TaskThread, _inside_pool


def _unwrapped(function):
    while hasattr(function, '__wrapped__'):  # through Sentry's, OpenTelemetry's, ours
        function = function.__wrapped__
    return function


# The stdlib's own submit, even when someone patched it before we were imported.
_STDLIB_SUBMIT = _unwrapped(ThreadPoolExecutor.__dict__['submit'])


# install()'s own submit wrappers, which pass our jobs through untouched.
# Found by identity: functools.wraps copies attributes onto others' wrappers.
# Each maps to the code it was made with: ddtrace wraps a function by giving
# it new code in place, and then theirs runs around ours.
_passing_submits = {}  # id -> the function's code
_passing_kept = []  # the functions, kept alive so that each id stays its own


def _keep_passing_submit(function):
    _passing_kept.append(function)
    _passing_submits[id(function)] = function.__code__


def _wrapped_by_others(submit):
    """Whether anyone but us wraps ``submit`` (bound): their job wrappers run around ours."""
    function = submit.__func__ if type(submit) is MethodType else None
    while function is not _STDLIB_SUBMIT:
        code = _passing_submits.get(id(function))  # None for anyone's but ours, and for None
        if code is None or code is not function.__code__:
            return True
        function = function.__wrapped__
    return False


def _submit_in_context(submit, args, kwargs):
    """Call ``submit(fn, *rest, **kwargs)`` with ``fn`` wrapped in the caller's context.

    ``submit`` is bound to the executor, ``args`` is ``(fn, *rest)``: ``fn``
    is positional-only, as in the stdlib, so a job may take a keyword argument
    named ``fn``.
    """
    if not args:  # the stdlib raises its own TypeError
        return submit(*args, **kwargs)
    fn = args[0]
    if type(fn) is _JobInContext:  # from our map(): captured once for all its jobs
        context, fn = fn.context, fn.fn
    else:
        context = capture()
        if context is _EMPTY:
            # Nothing to propagate: a worker thread this submit() starts would
            # capture the same empty context, so the flag below is not needed.
            return submit(*args, **kwargs)
    # Wrappers below us (Sentry's, OpenTelemetry's submit) run around our job:
    # what they set for it stays set on top of the snapshot.
    keep_outer = _wrapped_by_others(submit)
    was_inside, _inside_pool.active = _inside_pool.active, True
    try:
        if RELEASES_WORK_ITEMS:
            # The plain function, not a bound method: one object less per queued job.
            return submit(TaskContext._call, context, fn, args[1:], kwargs, keep_outer)
        return submit(_OneShotJob(context, fn, args[1:], kwargs, keep_outer))
    finally:
        _inside_pool.active = was_inside


class _JobInContext(object):
    """``fn`` bound to a context captured once; the executors' ``submit`` unpacks it."""

    __slots__ = ('context', 'fn')

    def __init__(self, context, fn):
        self.context = context
        self.fn = fn

    def __call__(self, *args, **kwargs):  # a pool's job, or a subclass calling it
        try:
            return self.context._call(self.fn, args, kwargs)
        finally:
            self = None  # a failed job's traceback keeps this frame


class _OneShotJob(object):
    """One job's ``TaskContext._call`` arguments, let go of when it runs.

    Python 2.7's ``futures`` keeps a failed job's work item, and so this job,
    in the traceback the future holds; Python 3's executor lets go of it.
    """

    __slots__ = ('call',)

    def __init__(self, *call):
        self.call = call

    def __call__(self):
        call, self.call = self.call, None
        try:
            return TaskContext._call(*call)
        finally:
            self = call = None


class TaskThreadPoolExecutor(ThreadPoolExecutor):
    """A drop-in :class:`~concurrent.futures.ThreadPoolExecutor`.

    Only the public ``submit`` and ``map`` are overridden (``map`` still goes
    through ``submit``): Python 3.14 removed the private internals that
    subclasses used to touch.  ``submit`` calls whatever
    ``ThreadPoolExecutor.submit`` is when it runs, so wrappers that Sentry or
    OpenTelemetry put there apply to our jobs too.
    """

    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), on Python 2.7 too
        self, args = split_fn(args, 'submit')
        return _submit_in_context(super(TaskThreadPoolExecutor, self).submit, args, kwargs)

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
