"""Snapshot a thread's Celery task context and run code inside it elsewhere.

This is the one capture -> activate -> restore mechanism; every entry point
(threads, timers, executors, ``wrap()``, ``install()``) runs its target through
one :class:`_CallInContext`, and :meth:`TaskContext.run` through the same code::

    >>> import celery_ctxthread as cct
    >>> context = cct.capture()          # in the task's thread
    >>> context.run(max, 1, 2)           # in any thread, any number of times
    2

What a snapshot holds, and why:

- every task on ``celery._state._task_stack`` (bottom first), and the request
  on top of each task's ``request_stack``: ``current_task``, ``self.request``
  and ``get_current_worker_task()`` all read these.  The request object is
  *shared*, not copied: a thread is part of its task, so a subtask it
  ``.delay()``\\ s lands in the task's ``children``;
- the thread's current app;
- the ``contextvars`` context, which each run enters as a *fresh copy*: one
  context cannot be entered by two threads at once, and a job's changes must
  not leak into the next job.

Outside any task the snapshot is empty and running under it is exactly calling
the function, like the stdlib does.  Celery's private state is read and
changed only through :mod:`celery_ctxthread._celery`.
"""

import functools
from operator import is_

from celery_ctxthread import _celery, lifecycle
from celery_ctxthread._compat import copy_context

_APP_LOCAL = _celery.APP_LOCAL
_NEWEST_SNAPSHOT = _celery.NEWEST_SNAPSHOT
_read_tasks = _celery.read_tasks
_MARKS_RUNS = _celery.marks_runs()

#: Called with ``(task, request)`` for each task a new snapshot captures, in
#: the task's own thread (the late-update guard's ``watch``, while it is set up).
_capture_hooks = []


class TaskContext(object):
    """An immutable snapshot of a thread's task context; see :func:`capture`.

    :meth:`run` keeps nothing on the snapshot itself, so one snapshot may run
    in many threads at once, and nested (a thread started under a snapshot
    captures it again).
    """

    __slots__ = ('_contextvars', '_tasks')

    def __init__(self, tasks, contextvars):
        self._tasks = tasks  # a _CapturedTasks, shared by captures of the same tasks
        self._contextvars = contextvars  # this capture's copy_context(), or None on Python 2.7

    @property
    def task(self):
        """The task on top of the captured stack, or None outside a task."""
        return self._tasks.task

    @property
    def request(self):
        """That task's request (shared with the task), or None."""
        return self._tasks.request

    @property
    def task_id(self):
        """That request's task id, or None: handy for log lines."""
        return getattr(self._tasks.request, 'id', None)

    def run(*args, **kwargs):  # (self, fn, /, *args, **kwargs), as Context.run
        """Call ``fn(*args, **kwargs)`` in this context on the current thread.

        The thread's stacks and current app are restored to exactly what they
        were afterwards, also when ``fn`` raises (``BaseException`` included).
        """
        if len(args) < 2:
            raise TypeError('run() missing its first positional argument')
        self, fn, args = args[0], args[1], args[2:]
        tasks, contextvars = self._tasks, self._contextvars
        if tasks.pusher is None:  # outside any task: exactly the call
            return fn(*args, **kwargs)
        if contextvars is not None:  # as in _CallInContext.__call__, with nothing to keep
            args, fn = (fn,) + args, contextvars.copy().run
        return tasks.pusher.call(tasks.app, fn, args, kwargs)

    def __repr__(self):
        task = self._tasks.task
        if task is None:
            return '<TaskContext empty>'
        return '<TaskContext %s[%s]>' % (getattr(task, 'name', task), self.task_id)


class _CallInContext(object):
    """``fn`` bound to a snapshot and its arguments: calling it runs ``fn`` there.

    Extra call arguments are appended (a pool's job arguments, ``wrap()``'s).
    ``once``: let go of the function, its arguments and the snapshot when
    called, as ``Thread.run`` lets go of its target (a thread's run, a queued
    job; :data:`JOB`: a queued executor job, which does not run once its task
    is over).  ``keep_outer``: the contextvars that wrappers around this call set
    (Sentry's forked scope around a thread's run) stay set on top of the
    snapshot's.
    """

    __slots__ = ('args', 'context', 'fn', 'keep_outer', 'kwargs', 'once')

    def __init__(self, context, fn, args=(), kwargs=None, once=False, keep_outer=False):
        self.context = context
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.once = once
        self.keep_outer = keep_outer

    def __call__(self, *more_args, **more_kwargs):
        context, fn, args, kwargs, once = self.context, self.fn, self.args, self.kwargs, self.once
        if once and once is not EVERY_JOB:  # a thread's run, or one job: let go of it all
            self.context = self.fn = self.args = self.kwargs = None
            if fn is None:  # called again: like Thread.run after its target was dropped
                return None
        tasks, contextvars = context._tasks, context._contextvars
        if more_args:
            args += more_args
        if kwargs is None:
            kwargs = more_kwargs
        elif more_kwargs:
            kwargs = dict(kwargs, **more_kwargs)
        pusher = tasks.pusher
        try:
            if pusher is None:  # outside any task: exactly the call
                return fn(*args, **kwargs)
            if contextvars is not None:
                if self.keep_outer:
                    outer = copy_context()
                    if outer:
                        args, fn = (outer, fn, args, kwargs), _set_then_call
                args, fn = (fn,) + args, contextvars.copy().run
            return pusher.call(tasks.app, fn, args, kwargs)
        except BaseException:
            # A failed job's traceback keeps this frame (the stdlib's executor
            # keeps it with the future): let it keep nothing of the task, as
            # the stdlib's _WorkItem.run does.  On return the frame goes anyway.
            self = context = tasks = contextvars = pusher = fn = args = kwargs = None
            more_args = more_kwargs = None
            raise

    @property
    def __func__(self):
        """To a wrapper that comes after us, a thread's run behaves like the bound
        method it replaces: Sentry calls ``thread.run.__func__(thread)``."""
        return self._called_with_thread

    def _called_with_thread(self, thread, *args, **kwargs):
        return self()


#: ``once=JOB``: an executor job, let go once called like a thread's run, that
#: does not start at all if its task is over when a worker takes it (a dead
#: task's queue delays nobody): its executor's queue asks :func:`refused` and
#: cancels its future.  Asked there, not kept in a registry at submit, which
#: cost every submit 3 %.
JOB = 'job'
#: ``once=EVERY_JOB``: the jobs of one ``map()``, bound once for all of them and
#: kept: none starts once its task is over.
EVERY_JOB = 'every job'


def refused(job):
    """Whether ``job``, which a pool's worker is about to call, must not start:
    a :data:`JOB` or :data:`EVERY_JOB` whose task is over."""
    if type(job) is not _CallInContext:
        return False
    once, context = job.once, job.context
    if (once is not JOB and once is not EVERY_JOB) or context is None:
        return False
    record = context._tasks.record or lifecycle.found_record(context._tasks.request)
    return record is not None and record.over


def _set_then_call(outer, fn, args, kwargs):
    for var, value in outer.items():
        var.set(value)
    return fn(*args, **kwargs)


class _CapturedTasks(object):
    """The Celery half of a snapshot, shared by captures of the same ``identity``:
    ``(app, *tasks, *top_requests)``, as :func:`_celery.read_tasks` reads them."""

    __slots__ = ('app', 'identity', 'pusher', 'record', 'request', 'task')

    def __init__(self, identity, tasks, top_requests):
        self.identity, self.app = identity, identity[0]
        self.task = tasks[-1] if tasks else None
        self.request = request = top_requests[-1] if tasks else None
        # The top task run's lifecycle record (none without a request: nothing ends
        # it); each run under this snapshot makes it active for cancelled().  Only
        # where the pushers mark runs: elsewhere (USE_FAST_LOCALS) nothing caches
        # a snapshot, and the record, made once per task run by the guard's
        # watch, is found by request.
        marks = _MARKS_RUNS and request is not None
        self.record = lifecycle.record_for(request) if marks else None
        pushes = _pushes_and_hooks(tasks, top_requests) if tasks else None
        self.pusher = _celery.pusher_for(pushes, self.record) if tasks else None


def _pushes_and_hooks(tasks, top_requests):
    """The task stack, then each task's request stack once, with its top request.

    On the way, each task with a request goes to the capture hooks: one pass.
    """
    pushes, seen = [(_celery.TASK_STACK, tasks)], set()
    for task, top in zip(tasks, top_requests):
        stack = getattr(task, 'request_stack', None)  # None on an unbound task class
        # Once per stack, by identity (ids of live objects): a task may be on the stack twice.
        if stack is not None and id(stack) not in seen:
            seen.add(id(stack))
            # Only the top request: a task without one still gets a restore point.
            pushes.append((stack, () if top is None else (top,)))
        if top is not None:
            for hook in _capture_hooks:
                hook(task, top)
    return pushes


_EMPTY = TaskContext(_CapturedTasks((None,), (), ()), None)


def capture():
    """Snapshot the calling thread's task context.

    Cheap enough to call per job.  Outside any task it returns a shared empty
    snapshot, and running under it is exactly calling the function.
    """
    tasks, top_requests, thread_entry = _read_tasks()
    if not tasks:
        return _EMPTY
    contextvars = copy_context() if copy_context is not None else None
    # The thread's newest snapshot is kept in its entry, which Celery deletes
    # with the last task: a loop of start()s or submit()s in a task builds the
    # pushes once, and nothing outlives the task.
    newest = thread_entry.get(_NEWEST_SNAPSHOT) if thread_entry is not None else None
    identity = (_APP_LOCAL.current_app,) + tasks + top_requests
    old = newest._tasks.identity if newest is not None else ()
    # The same objects, compared with ``is``: nobody's ``__eq__`` runs.
    if len(old) != len(identity) or not all(map(is_, old, identity)):
        newest = TaskContext(_CapturedTasks(identity, tasks, top_requests), contextvars)
    elif contextvars or newest._contextvars:  # contexts are never compared: each its own
        newest = TaskContext(newest._tasks, contextvars)
    else:  # no contextvars at all (or none on 2.7): the same snapshot, whole
        return newest
    if thread_entry is not None:
        thread_entry[_NEWEST_SNAPSHOT] = newest
    return newest


def wrap(fn):
    """Capture now; return a callable that runs ``fn`` in that context.

    For callbacks and third-party pools: every call of the result runs in the
    snapshot, concurrently if called concurrently::

        pool.apply_async(cct.wrap(report_progress), (step,))

    The result keeps ``fn`` as ``__wrapped__`` and the snapshot as ``task_context``.
    """
    if not callable(fn):
        raise TypeError('wrap() expects a callable, got %r' % (fn,))
    call = _CallInContext(capture(), fn)

    def run_in_task_context(*args, **kwargs):
        return call(*args, **kwargs)

    present = [name for name in functools.WRAPPER_ASSIGNMENTS if hasattr(fn, name)]
    functools.update_wrapper(run_in_task_context, fn, assigned=present)
    run_in_task_context.__wrapped__ = fn  # Python 2.7's update_wrapper does not set it
    run_in_task_context.task_context = call.context
    return run_in_task_context
