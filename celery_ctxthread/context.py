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
from celery_ctxthread._compat import copy_context

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
        try:  # cheaper than checking len(args) first
            self, fn = args[0], args[1]
        except IndexError:
            error = TypeError('run() missing its first positional argument')
            error.__suppress_context__ = True  # ``from None``, which 2.7 cannot parse
            raise error
        return self._call(fn, args[2:], kwargs)

    def _call(self, fn, args, kwargs, keep_outer=False):
        """:meth:`run`, for the entry points.  ``keep_outer``: the contextvars that
        wrappers around this call set (Sentry's forked scope around a thread's
        run) stay set on top of the snapshot's."""
        celery, vars = self._celery, self._vars
        step = celery.step
        if step is None:
            return fn(*args, **kwargs)
        # Saved even when the snapshot has no app: the target may make one
        # current, and a pool thread must not keep it for its next job.
        previous_app = _APP_LOCAL.current_app
        if celery.app is not None:
            _APP_LOCAL.current_app = celery.app
        seat = celery.backend_seat
        if seat is not None:  # the task's backend: see _stacks.task_backend_seat
            backend_local, backend = seat
            previous_backend = getattr(backend_local, 'backend', None)
            backend_local.backend = backend
        token = None
        try:  # pushed inside the try: the app is put back if the push fails
            token = step.push()
            if vars is None:
                return fn(*args, **kwargs)
            if keep_outer:
                outer = copy_context()
                if outer:
                    return vars.copy().run(_set_then_call, outer, fn, args, kwargs)
            return vars.copy().run(fn, *args, **kwargs)
        finally:
            if token is not None:
                step.restore(token)
            if seat is not None:
                if previous_backend is None:  # the thread had none: it is left with none
                    backend_local.__dict__.pop('backend', None)
                else:
                    backend_local.backend = previous_backend
            _APP_LOCAL.current_app = previous_app
            # A failed job's traceback keeps this frame (the stdlib's executor
            # keeps it with the future): let it keep nothing of the task.
            self = celery = vars = step = token = fn = args = kwargs = None
            seat = backend = previous_backend = None

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
    """The Celery half of a snapshot, shared by captures of the same ``key``:
    ``(app, *tasks, *tops)``, as :func:`_stacks.read_tasks` reads them."""

    __slots__ = ('app', 'backend_seat', 'key', 'request', 'step', 'task')

    def __init__(self, key, tasks, tops):
        self.key, self.app = key, key[0]
        self.task = tasks[-1] if tasks else None
        self.request = tops[-1] if tasks else None
        self.step = _stacks.plan(_pushes(tasks, tops)) if tasks else None
        self.backend_seat = _backend_seat(self.task) if tasks else None
        for request in tops:
            guard.watch(request)


def _backend_seat(task):
    try:
        app = task.app
    except Exception:  # not a bound task: nothing to share
        return None
    return _stacks.task_backend_seat(app)


def _pushes(tasks, tops):
    """The task stack, then each task's request stack once, with its top request."""
    pushes, seen = [(_stacks.TASK_STACK, tasks)], set()
    for task, top in zip(tasks, tops):
        stack = getattr(task, 'request_stack', None)  # None on an unbound task class
        # Once per stack, by identity (ids of live objects): a task may be on the stack twice.
        if stack is not None and id(stack) not in seen:
            seen.add(id(stack))
            # Only the top request: a task without one still gets a restore point.
            pushes.append((stack, () if top is None else (top,)))
    return pushes


_EMPTY = TaskContext(_CelerySnapshot((None,), (), ()), None)


def capture():
    """Snapshot the calling thread's task context.

    Cheap enough to call per job.  Outside any task it returns a shared empty
    snapshot, and running under it is exactly calling the function.
    """
    tasks, tops, memo = _stacks.read_tasks()
    if not tasks:
        return _EMPTY
    app = _APP_LOCAL.current_app
    vars = copy_context()
    # The thread's newest snapshot is kept in the memo, which Celery deletes
    # with the last task: a loop of start()s or submit()s in a task plans the
    # pushes once, and nothing outlives the task.
    newest = memo.get(_NEWEST) if memo is not None else None
    key = (app,) + tasks + tops
    old = newest._celery.key if newest is not None else ()
    # The same objects, compared with ``is``: nobody's ``__eq__`` runs.
    if len(old) != len(key) or not all(map(is_, old, key)):
        newest = TaskContext(_CelerySnapshot(key, tasks, tops), vars)
    elif vars or newest._vars:  # contexts are never compared: each capture its own
        newest = TaskContext(newest._celery, vars)
    else:  # no contextvars at all (or none on 2.7): the same snapshot, whole
        return newest
    if memo is not None:
        memo[_NEWEST] = newest
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
