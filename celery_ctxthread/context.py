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

from celery import _state

from celery_ctxthread import _stacks
from celery_ctxthread._compat import copy_context
from celery_ctxthread.late import ensure_guard

_TASK_STACK = _state._task_stack
_read_tasks = _stacks.access_for(_TASK_STACK).read
_APP_LOCAL = _state._tls

# Consecutive captures of the same context share this thread's newest snapshot:
# jobs waiting in a queue keep one object alive, not one each, for the garbage
# collector to walk, and a loop of start()s or submit().result()s does not
# build a snapshot per iteration.  With the default stack flavour the snapshot
# is kept in the thread's task stack entry, which Celery deletes when the last
# task is popped: it lives exactly as long as the thread is inside a task.
_TASK_LOCAL = (
    _TASK_STACK._local if _stacks.access_for(_TASK_STACK) is _stacks.IdentDictAccess else None
)
_SNAPSHOT_KEY = 'celery_ctxthread.snapshot'


class _NewestSnapshot(threading.local):
    # Other flavours have no such entry: the newest snapshot is held weakly
    # instead.  A class default, so that reading it never raises and catches.
    ref = None


_newest = _NewestSnapshot()


class TaskContext(object):
    """An immutable snapshot of a thread's task context; see :func:`capture`.

    :meth:`run` keeps nothing on the snapshot itself, so one snapshot may run
    in many threads at once, and nested (a thread started under a snapshot
    captures it again).
    """

    __slots__ = ('__weakref__', '_app', '_request', '_sources', '_step', '_task', '_vars')

    def __init__(self, sources, app, vars):
        # sources: ((stack, items), ...), the task stack first, then the
        # request stack of each task with its top request (or nothing).  The
        # step that pushes them is planned once here, not per run.
        self._sources = sources
        self._step = _stacks.plan(sources)
        self._task = sources[0][1][-1] if sources else None
        self._request = _top_request(sources, self._task)
        self._app = app
        self._vars = vars

    @property
    def task(self):
        """The task on top of the captured stack, or None outside a task."""
        return self._task

    @property
    def request(self):
        """That task's request (shared with the task), or None."""
        return self._request

    @property
    def task_id(self):
        """That request's task id, or None: handy for log lines."""
        return getattr(self._request, 'id', None)

    def run(self, fn, *args, **kwargs):
        """Call ``fn(*args, **kwargs)`` in this context on the current thread.

        The thread's stacks and current app are restored to exactly what they
        were afterwards, also when ``fn`` raises (``BaseException`` included).
        """
        return self.call(fn, args, kwargs)

    def call(self, fn, args, kwargs):
        """:meth:`run` with the arguments as a tuple and a dict.

        Entry points use it so that a keyword argument named ``fn`` reaches
        the target instead of clashing with ours.
        """
        step = self._step
        if step is None:
            return fn(*args, **kwargs)
        push, restore, target, items = step
        # Saved even when the snapshot has no app: the target may make one
        # current, and a pool thread must not keep it for its next job.
        previous_app = _APP_LOCAL.current_app
        if self._app is not None:
            _APP_LOCAL.current_app = self._app
        token = None
        try:  # pushed inside the try: the app is put back if the push fails
            token = push(target, items)
            if self._vars is None:
                return fn(*args, **kwargs)
            return self._vars.copy().run(fn, *args, **kwargs)
        finally:
            if token is not None:
                restore(target, token)
            _APP_LOCAL.current_app = previous_app

    def __repr__(self):
        if self._task is None:
            return '<TaskContext empty>'
        return '<TaskContext %s[%s]>' % (getattr(self._task, 'name', self._task), self.task_id)


def _top_request(sources, task):
    stack = getattr(task, 'request_stack', None)
    for source, items in sources[1:]:
        if source is stack:
            return items[-1] if items else None
    return None


_EMPTY = TaskContext((), None, None)
_guard_ready = False


def _set_guard_up():
    global _guard_ready
    ensure_guard()
    _guard_ready = True


def _sources_of(tasks):
    """The task stack, then each task's request stack once, with its top request."""
    sources = [(_TASK_STACK, tasks)]
    seen = []  # ids: a task may be on the stack twice
    for task in tasks:
        stack = getattr(task, 'request_stack', None)
        if stack is not None and id(stack) not in seen:
            seen.append(id(stack))
            # Only the top request: a task without one still gets a restore point.
            sources.append((stack, _stacks.read(stack)[-1:]))
    return tuple(sources)


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
    if not _guard_ready:
        _set_guard_up()
    if len(tasks) == 1:  # the usual case, read without the loop below
        stack = getattr(tasks[0], 'request_stack', None)  # None on an unbound task class
        if stack is None:
            sources = ((_TASK_STACK, tasks),)
        else:
            sources = ((_TASK_STACK, tasks), (stack, _stacks.read(stack)[-1:]))
    else:
        sources = _sources_of(tasks)
    app = _APP_LOCAL.current_app
    vars = copy_context() if copy_context is not None else None
    if entry is not None:
        newest = entry.get(_SNAPSHOT_KEY)
    else:
        newest = _newest.ref
        newest = newest() if newest is not None else None
    # Stacks, tasks and requests compare by identity; contexts by content
    # (O(1) when unchanged).
    if (
        newest is not None
        and newest._sources == sources
        and newest._app is app
        and newest._vars == vars
    ):
        return newest
    context = TaskContext(sources, app, vars)
    if entry is not None:
        entry[_SNAPSHOT_KEY] = context
    else:
        _newest.ref = weakref.ref(context)
    return context


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
