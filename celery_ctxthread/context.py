"""Snapshot a thread's Celery task context and run code inside it elsewhere.

This is the one capture -> activate -> restore mechanism; every entry point
(threads, timers, executors, ``install()``) goes through it::

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
- the thread's current app (``celery._state._tls.current_app``);
- the ``contextvars`` context, which each run enters as a *fresh copy*: one
  context cannot be entered by two threads at once, and a job's changes must
  not leak into the next job.

Outside any task the snapshot is empty and running under it is exactly calling
the function, like the stdlib does.
"""

import functools
from operator import is_

from celery import _state

from celery_ctxthread import _stacks, guard
from celery_ctxthread._compat import copy_context, split_fn

_APP_LOCAL = _state._tls
# The thread's newest snapshot is kept in its task stack entry (see capture()).
_NEWEST = 'celery_ctxthread.snapshot'


class TaskContext(object):
    """An immutable snapshot of a thread's task context; see :func:`capture`.

    :meth:`run` keeps nothing on the snapshot itself, so one snapshot may run
    in many threads at once, and nested (a thread started under a snapshot
    captures it again).
    """

    __slots__ = ('_celery', '_vars')

    def __init__(self, celery, vars):
        self._celery = celery  # a _CelerySnapshot, shared by captures of the same tasks
        self._vars = vars  # this capture's copy_context(), or None on Python 2.7

    @property
    def task(self):
        """The task on top of the captured stack, or None outside a task."""
        return self._celery.task

    @property
    def request(self):
        """That task's request (shared with the task), or None."""
        return self._celery.request

    @property
    def task_id(self):
        """That request's task id, or None: handy for log lines."""
        return getattr(self._celery.request, 'id', None)

    def run(*args, **kwargs):  # (self, fn, /, *args, **kwargs), as Context.run
        """Call ``fn(*args, **kwargs)`` in this context on the current thread.

        The thread's stacks and current app are restored to exactly what they
        were afterwards, also when ``fn`` raises (``BaseException`` included).
        """
        self, rest = split_fn(args, 'run')
        fn, rest = split_fn(rest, 'run')
        return self._call(fn, rest, kwargs)

    def _call(self, fn, args, kwargs, keep_outer=False):
        """:meth:`run`, for the entry points.

        ``keep_outer``: the contextvars that wrappers around this call have
        set (Sentry's forked scopes around a thread's run) stay set on top of
        the snapshot's, as if the thread had started in a copy of the
        snapshot's context.
        """
        celery = self._celery
        step = celery.step
        if step is None:
            return fn(*args, **kwargs)
        # Saved even when the snapshot has no app: the target may make one
        # current, and a pool thread must not keep it for its next job.
        previous_app = _APP_LOCAL.current_app
        if celery.app is not None:
            _APP_LOCAL.current_app = celery.app
        token = None
        try:  # pushed inside the try: the app is put back if the push fails
            token = step.push()
            vars = self._vars
            if vars is None:
                return fn(*args, **kwargs)
            outer = copy_context() if keep_outer else None
            if outer:
                return vars.copy().run(_set_then_call, outer, fn, args, kwargs)
            return vars.copy().run(fn, *args, **kwargs)
        finally:
            if token is not None:
                step.restore(token)
            _APP_LOCAL.current_app = previous_app
            # A failed job's traceback keeps this frame (the stdlib's executor
            # keeps it with the future): let it keep nothing of the task.
            self = celery = step = token = fn = args = kwargs = None

    def __repr__(self):
        task = self._celery.task
        if task is None:
            return '<TaskContext empty>'
        return '<TaskContext %s[%s]>' % (getattr(task, 'name', task), self.task_id)


def _set_then_call(outer, fn, args, kwargs):
    for var, value in outer.items():
        var.set(value)
    return fn(*args, **kwargs)


class _CelerySnapshot(object):
    """The Celery half of a snapshot: the tasks and requests, the step that pushes them, the app.

    ``key`` is ``(app, *tasks, *top request of each task)``: captures share a
    snapshot only while every one is the *same object* (compared with
    ``is``: nobody's ``__eq__`` is called).
    """

    __slots__ = ('app', 'key', 'request', 'step', 'task')

    def __init__(self, key, tasks):
        self.key = key
        self.app = key[0]
        self.task = tasks[-1] if tasks else None
        self.request = key[-1] if tasks else None
        tops = key[1 + len(tasks) :]
        self.step = _stacks.plan(_sources_of(tasks, tops)) if tasks else None
        for request in tops:
            guard.watch(request)


def _sources_of(tasks, tops):
    """The task stack, then each task's request stack once, with its top request.

    ``tops`` are the requests capture() read, one per task (None: none).
    """
    sources = [(_stacks.TASK_STACK, tasks)]
    for task, top in zip(tasks, tops):
        stack = getattr(task, 'request_stack', None)  # None on an unbound task class
        # Once per stack, compared by identity: a task may be on the stack twice.
        if stack is not None and not any(stack is s for s, _ in sources):
            # Only the top request: a task without one still gets a restore point.
            sources.append((stack, () if top is None else (top,)))
    return sources


def _top_request(task):
    stack = getattr(task, 'request_stack', None)  # None on an unbound task class
    items = _stacks.read(stack) if stack is not None else ()
    return items[-1] if items else None


_EMPTY = TaskContext(_CelerySnapshot((None,), ()), None)


def capture():
    """Snapshot the calling thread's task context.

    Cheap enough to call per job.  Outside any task it returns a shared empty
    snapshot, and running under it is exactly calling the function.
    """
    tasks, entry = _stacks.read_tasks()
    if not tasks:
        return _EMPTY
    app = _APP_LOCAL.current_app
    if len(tasks) == 1:  # the usual case: the same key, without map() and two concatenations
        key = (app, tasks[0], _top_request(tasks[0]))
    else:
        key = (app,) + tasks + tuple(map(_top_request, tasks))
    vars = copy_context() if copy_context is not None else None
    # Consecutive captures of the same tasks, requests and app share the
    # thread's newest snapshot, kept in its task stack entry, which Celery
    # deletes with the last task: a loop of start()s or submit()s in a task
    # plans the pushes once, and nothing outlives the task.
    newest = entry.get(_NEWEST) if entry is not None else None
    if (
        newest is None
        or len(newest._celery.key) != len(key)
        or not all(map(is_, newest._celery.key, key))
    ):
        newest = TaskContext(_CelerySnapshot(key, tasks), vars)
    elif vars or newest._vars:  # contexts are never compared: each capture its own
        newest = TaskContext(newest._celery, vars)
    else:  # no contextvars at all (or none on 2.7): the same snapshot, whole
        return newest
    if entry is not None:
        entry[_NEWEST] = newest
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
    context = capture()

    def run_in_task_context(*args, **kwargs):
        return context._call(fn, args, kwargs)

    present = [name for name in functools.WRAPPER_ASSIGNMENTS if hasattr(fn, name)]
    functools.update_wrapper(run_in_task_context, fn, assigned=present)
    run_in_task_context.__wrapped__ = fn  # Python 2.7's update_wrapper does not set it
    run_in_task_context.task_context = context
    return run_in_task_context
