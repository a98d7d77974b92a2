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

from celery_ctxthread._stdlib import TimerBase
from celery_ctxthread.context import _EMPTY, _CallInContext, capture


def opt_out(thread):
    """Start ``thread`` without the task context, even under :func:`install`.

    Returns the thread, so it chains::

        cct.opt_out(threading.Thread(target=watchdog)).start()
    """
    if not isinstance(thread, threading.Thread):
        raise TypeError('opt_out() expects a threading.Thread, got %r' % (thread,))
    if type(thread.run) is not _CallInContext:
        # Bound to the empty context: start() sees it bound and leaves it be.
        thread.run = _CallInContext(_EMPTY, thread.run, once=True)
    return thread


def _start_in_context(self, _original_start=None):
    """Start thread ``self`` so that its ``run()`` runs in the caller's task context.

    ``TaskThread`` and ``TaskTimer`` use this function itself as their
    ``start()`` (one call less on every start), which then calls the start
    that follows theirs in the class's MRO; ``install()`` passes the start it
    wraps, bound, as ``_original_start``.  Does nothing extra outside a task,
    and for a thread whose run is already bound (opted out, or started twice:
    then ``start()`` raises as the stdlib does).
    """
    thread, start = self, _original_start
    if start is None:
        start = super(thread._starts_after, thread).start
    context = capture()  # first: outside a task nothing else is looked at
    if context is _EMPTY:
        return start()
    run = thread.run
    if type(run) is _CallInContext:
        return start()
    thread.run = _CallInContext(context, run, (), None, True, True)  # once, keep_outer
    try:
        return start()
    except BaseException:  # it never started: leave the thread as it was
        if type(thread.run) is _CallInContext:
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


class TaskThread(threading.Thread):
    """A drop-in :class:`threading.Thread` that runs in its starter's task context."""

    start = _start_in_context


TaskThread._starts_after = TaskThread


class TaskTimer(TimerBase):
    """A drop-in :class:`threading.Timer` that fires in its starter's task context.

    ::

        cct.TaskTimer(5.0, self.update_state, kwargs={'state': 'SLOW'}).start()
    """

    start = _start_in_context


TaskTimer._starts_after = TaskTimer
