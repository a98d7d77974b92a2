"""Keep a thread that outlives its task from rewriting the task's final state.

A propagated thread shares its task's request.  When the task ends (Celery's
``task_postrun``, sent after the final state is stored) that request is marked
finished, and ``Task.update_state`` for it, from any thread, then stores
nothing and logs one warning per thread naming the task and the thread::

    celery_ctxthread.late: task 3f2a9c1e-... ended; ignored update_state('PROGRESS')
    from thread 'Thread-7' that outlived it

Without this, Redis and the database backend let a straggler turn a stored
FAILURE or REVOKED back into PROGRESS (they refuse writes only after SUCCESS),
and an rpc client may see PROGRESS after the final state.

The guard is set up by the first capture inside a task, so processes that
never propagate are untouched.  What it cannot stop: a direct
``backend.store_result(...)``, and an update already under way when the task
stores its final state.
"""

import functools
import logging
import threading
import weakref

from celery.app.task import Task
from celery.signals import task_postrun

logger = logging.getLogger(__name__)

_ORIGINAL_ATTRIBUTE = '__celery_ctxthread_original__'
_lock = threading.Lock()
# Finished requests -> the idents of the threads already warned.  Kept off the
# request itself: Celery 5.5+ copies a request's __dict__ into nested requests
# and their message headers.
_finished = weakref.WeakKeyDictionary()


def _mark_finished(sender=None, task=None, **kwargs):
    request = getattr(task or sender, 'request', None)
    if request is not None:
        with _lock:
            _finished.setdefault(request, set())


def _guarded(update_state):
    @functools.wraps(update_state)
    def guarded_update_state(self, task_id=None, state=None, meta=None, **kwargs):
        request = self.request
        if request in _finished and task_id in (None, request.id):
            _warn_once(request, state)
            return None
        return update_state(self, task_id, state, meta, **kwargs)

    setattr(guarded_update_state, _ORIGINAL_ATTRIBUTE, update_state)
    return guarded_update_state


def _warn_once(request, state):
    thread = threading.current_thread()
    with _lock:
        warned = _finished.get(request)
        if warned is None or thread.ident in warned:
            return
        warned.add(thread.ident)
    logger.warning(
        'celery_ctxthread.late: task %s ended; ignored update_state(%r) '
        'from thread %r that outlived it',
        request.id,
        state,
        thread.name,
    )


def ensure_guard():
    """Set the guard up once per process; idempotent and thread-safe."""
    with _lock:
        current = Task.__dict__['update_state']
        if hasattr(current, _ORIGINAL_ATTRIBUTE):
            return
        task_postrun.connect(_mark_finished, weak=False, dispatch_uid=__name__)
        Task.update_state = _guarded(current)
