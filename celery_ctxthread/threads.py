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
from celery_ctxthread.context import _EMPTY, capture


class _InsidePool(threading.local):
    # Set while a pool's own code runs on this thread (an executor's submit(),
    # a ThreadPool being built): the threads started then are the pool's
    # workers and helpers, which outlive the job and must never keep its
    # context, and a submit() reached then is already wrapped by ours.
    # A class default, so that reading it never raises and catches.
    active = False


_inside_pool = _InsidePool()


def opt_out(thread):
    """Start ``thread`` without the task context, even under :func:`install`.

    Returns the thread, so it chains::

        cct.opt_out(threading.Thread(target=watchdog)).start()
    """
    if not isinstance(thread, threading.Thread):
        raise TypeError('opt_out() expects a threading.Thread, got %r' % (thread,))
    if type(thread.run) is not _RunInContext:
        # Bound to the empty context: start() sees it wrapped and leaves it be.
        thread.run = _RunInContext(_EMPTY, thread.run)
    return thread


class _RunInContext(object):
    """A thread's ``run``, bound to the context its ``start()`` captured.

    :func:`opt_out` binds it to the empty context ahead of ``start()``.  To a
    wrapper that comes after us it behaves like the bound method it replaces:
    Sentry calls ``thread.run.__func__(thread)``.
    """

    __slots__ = ('context', 'run')

    def __init__(self, context, run):
        self.context = context
        self.run = run

    def __call__(self):
        context, run = self.context, self.run
        # Like Thread.run dropping its target: keep no task or request alive.
        self.context = self.run = None
        if run is not None:
            # Whatever wrappers around us set (Sentry's forked scopes) stays set.
            return context._call(run, (), {}, True)

    @property
    def __func__(self):
        return self._called_with_thread

    def _called_with_thread(self, thread, *args, **kwargs):
        return self()


def _start_in_context(thread, start):
    """Call ``start()`` so that ``thread.run()`` runs in the caller's task context.

    ``start`` is the thread's real start (bound).  Does nothing extra outside a
    task, for an opted-out thread, for a pool's own threads, and for a thread
    already wrapped (then ``start()`` raises as the stdlib does when started twice).
    """
    context = capture()  # first: outside a task nothing else is looked at
    if context is _EMPTY:
        return start()
    run = thread.run
    if type(run) is _RunInContext or _inside_pool.active:
        return start()
    thread.run = _RunInContext(context, run)
    try:
        return start()
    except BaseException:  # it never started: leave the thread as it was
        if type(thread.run) is _RunInContext:
            del thread.run
            if not _same_binding(thread.run, run):  # it had a run of its own on the instance
                thread.run = run
        raise


def _same_binding(method, other):
    """Whether both call the same function on the same object: by identity, no ``__eq__``.

    (Not ``'run' in thread.__dict__``: on Python 3.11+ that builds the
    thread's attribute dict, which made every start about 8,000 instructions dearer.)
    """
    same_self = getattr(method, '__self__', None) is getattr(other, '__self__', None)
    return same_self and getattr(method, '__func__', method) is getattr(other, '__func__', other)


class _StartsInTaskContext(object):
    def start(self):
        return _start_in_context(self, super(_StartsInTaskContext, self).start)


class TaskThread(_StartsInTaskContext, threading.Thread):
    """A drop-in :class:`threading.Thread` that runs in its starter's task context."""


class TaskTimer(_StartsInTaskContext, TimerBase):
    """A drop-in :class:`threading.Timer` that fires in its starter's task context.

    ::

        cct.TaskTimer(5.0, self.update_state, kwargs={'state': 'SLOW'}).start()
    """
