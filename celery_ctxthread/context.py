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
import threading
import weakref
from operator import is_

from celery import _state

from celery_ctxthread import _stacks, late
from celery_ctxthread._compat import copy_context

_TASK_STACK = _state._task_stack
_TASK_STACK_TYPE = type(_TASK_STACK)
_read_tasks = _stacks.access_for(_TASK_STACK).read
_APP_LOCAL = _state._tls

# Consecutive captures of the same tasks, requests and app share this thread's
# newest Celery snapshot: a loop of start()s or submit().result()s does not
# plan the stack pushes per iteration.  Where there are no contextvars to tell
# them apart they share the whole snapshot, and queued jobs keep one object
# alive, not one each, for the garbage collector to walk.  With the default stack
# flavour it is kept in the thread's task stack entry, which Celery deletes
# when the last task is popped: it lives exactly as long as the thread is
# inside a task.
_TASK_LOCAL = (
    _TASK_STACK._local if _stacks.access_for(_TASK_STACK) is _stacks.IdentDictAccess else None
)
_SNAPSHOT_KEY = 'celery_ctxthread.snapshot'


class _NewestSnapshot(threading.local):
    # Other flavours have no such entry: the newest snapshot is held weakly
    # instead.  A class default, so that reading it never raises and catches.
    ref = None


_newest = _NewestSnapshot()


class _CelerySnapshot(object):
    """The Celery half of a snapshot: the stacks' items, the step that pushes them, the app.

    ``key`` is ``(app, *tasks, *top request of each task)``: two captures
    share a snapshot only when every item is the *same object* (compared with
    ``is``: no ``__eq__`` of anyone's is called).
    """

    __slots__ = ('__weakref__', 'app', 'key', 'request', 'step', 'task')

    def __init__(self, key, tasks):
        self.key = key
        self.app = key[0]
        self.task = tasks[-1] if tasks else None
        self.request = key[-1] if tasks else None
        # Planned once here, not per run.
        self.step = _stacks.plan(_sources_of(tasks)) if tasks else None


def _sources_of(tasks):
    """The task stack, then each task's request stack once, with its top request."""
    sources = [(_TASK_STACK, tasks)]
    seen = []  # ids: a task may be on the stack twice
    for task in tasks:
        stack = getattr(task, 'request_stack', None)  # None on an unbound task class
        if stack is not None and id(stack) not in seen:
            seen.append(id(stack))
            # Only the top request: a task without one still gets a restore point.
            sources.append((stack, _stacks.read(stack)[-1:]))
    return sources


def _top_request(task):
    stack = getattr(task, 'request_stack', None)
    if stack is None:  # an unbound task class
        return None
    # Every request stack is of the task stack's flavour; any other is read generically.
    items = _read_tasks(stack) if type(stack) is _TASK_STACK_TYPE else _stacks.read(stack)
    return items[-1] if items else None


class TaskContext(object):
    """An immutable snapshot of a thread's task context; see :func:`capture`.

    :meth:`run` keeps nothing on the snapshot itself, so one snapshot may run
    in many threads at once, and nested (a thread started under a snapshot
    captures it again).
    """

    __slots__ = ('__weakref__', '_celery', '_vars')

    def __init__(self, celery, vars):
        self._celery = celery
        self._vars = vars

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

    def run(self, fn, *args, **kwargs):
        """Call ``fn(*args, **kwargs)`` in this context on the current thread.

        The thread's stacks and current app are restored to exactly what they
        were afterwards, also when ``fn`` raises (``BaseException`` included).
        """
        return self.call(fn, args, kwargs)

    def call(self, fn, args, kwargs, keep_outer=False):
        """:meth:`run` with the arguments as a tuple and a dict.

        Entry points use it so that a keyword argument named ``fn`` reaches
        the target instead of clashing with ours.  ``keep_outer``: the
        contextvars that wrappers around this call have set (Sentry's forked
        scopes around a thread's run) stay set on top of the snapshot's, as if
        the thread had started in a copy of the snapshot's context.
        """
        celery = self._celery
        step = celery.step
        if step is None:
            return fn(*args, **kwargs)
        push, restore, target, items = step
        # Saved even when the snapshot has no app: the target may make one
        # current, and a pool thread must not keep it for its next job.
        previous_app = _APP_LOCAL.current_app
        if celery.app is not None:
            _APP_LOCAL.current_app = celery.app
        token = None
        try:  # pushed inside the try: the app is put back if the push fails
            token = push(target, items)
            vars = self._vars
            if vars is None:
                return fn(*args, **kwargs)
            if keep_outer:
                outer = copy_context()
                if outer:
                    return vars.copy().run(_set_then_call, outer, fn, args, kwargs)
            return vars.copy().run(fn, *args, **kwargs)
        finally:
            if token is not None:
                restore(target, token)
            _APP_LOCAL.current_app = previous_app
            # A failed job's traceback keeps this frame (the stdlib's executor
            # keeps it with the future): let it keep nothing of the task.
            self = celery = step = target = items = token = fn = args = kwargs = None

    def __repr__(self):
        if self._celery.task is None:
            return '<TaskContext empty>'
        task = self._celery.task
        return '<TaskContext %s[%s]>' % (getattr(task, 'name', task), self.task_id)


def _set_then_call(outer, fn, args, kwargs):
    for var, value in outer.items():
        var.set(value)
    return fn(*args, **kwargs)


_EMPTY = TaskContext(_CelerySnapshot((None,), ()), None)


def capture():
    """Snapshot the calling thread's task context.

    Cheap enough to call per job.  Outside any task it returns a shared empty
    snapshot, and running under it is exactly calling the function.
    """
    if _TASK_LOCAL is not None:
        # This thread's entry, a dict that pop() deletes with the last task.
        # Read here, not through _stacks: every start() under install() runs it.
        entry = _TASK_LOCAL.__storage__.get(_TASK_LOCAL.__ident_func__())
        tasks = tuple(entry.get('stack') or ()) if entry else ()
    else:
        entry = None
        tasks = _read_tasks(_TASK_STACK)
    if not tasks:
        return _EMPTY
    app = _APP_LOCAL.current_app
    if len(tasks) == 1:  # the usual case, without the generator below
        key = (app, tasks[0], _top_request(tasks[0]))
    else:
        key = (app,) + tasks + tuple(_top_request(task) for task in tasks)
    if entry is not None:
        newest = entry.get(_SNAPSHOT_KEY)
    else:
        newest = _newest.ref
        newest = newest() if newest is not None else None
    vars = copy_context() if copy_context is not None else None
    if (
        newest is None
        or len(newest._celery.key) != len(key)
        or not all(map(is_, newest._celery.key, key))
    ):
        newest = TaskContext(_new_snapshot(key, tasks), vars)
    elif vars or newest._vars:  # equal contexts are not compared: a copy of each of its own
        newest = TaskContext(newest._celery, vars)
    else:  # no contextvars at all (or none on 2.7): nothing tells the two apart
        return newest
    if entry is not None:
        entry[_SNAPSHOT_KEY] = newest
    else:
        _newest.ref = weakref.ref(newest)
    return newest


def _new_snapshot(key, tasks):
    for request in key[1 + len(tasks) :]:
        late.watch(request)
    return _CelerySnapshot(key, tasks)


def wrap(fn):
    """Capture now; return a callable that runs ``fn`` in that context.

    For callbacks and third-party pools: every call of the result runs in the
    snapshot, concurrently if called concurrently::

        pool.apply_async(cct.wrap(report_progress), (step,))
    """
    if not callable(fn):
        raise TypeError('wrap() expects a callable, got %r' % (fn,))
    context = capture()

    def run_in_task_context(*args, **kwargs):
        return context.call(fn, args, kwargs)

    present = [name for name in functools.WRAPPER_ASSIGNMENTS if hasattr(fn, name)]
    functools.update_wrapper(run_in_task_context, fn, assigned=present)
    run_in_task_context.__wrapped__ = fn  # Python 2.7's update_wrapper does not set it
    run_in_task_context.task_context = context
    return run_in_task_context
