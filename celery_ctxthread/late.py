"""Keep a thread that outlives its task from rewriting the task's final state.

A propagated thread shares its task's request.  When the task ends, that
request is marked finished: just before the backend stores the final state
(``mark_as_done``, ``mark_as_failure``, ``mark_as_revoked``, which Celery's
tracer calls with the request), and again on ``task_postrun`` for a task whose
state is not stored.  ``Task.update_state`` for it, from any thread, then
stores nothing and logs one warning per thread naming the task and the thread::

    celery_ctxthread.late: task 3f2a9c1e-... ended; ignored update_state('PROGRESS')
    from thread 'Thread-7' that outlived it

Without this, Redis and the database backend let a straggler turn a stored
FAILURE or REVOKED back into PROGRESS (they refuse writes only after SUCCESS),
and an rpc client may see PROGRESS after the final state.

The guard is set up by the first capture inside a task, so processes that
never propagate are untouched.  What it cannot stop: a direct
``backend.store_result(...)``, and an update that is already past the check
when the task stores its final state.
"""

import functools
import logging
import threading
import weakref

from celery.app.task import Task
from celery.backends.base import BaseBackend
from celery.signals import task_postrun

from celery_ctxthread._compat import defining_class

logger = logging.getLogger(__name__)

_ORIGINAL_ATTRIBUTE = '__celery_ctxthread_original__'
_lock = threading.Lock()
# Finished requests -> the idents of the threads already warned.  Kept off the
# request itself: Celery 5.5+ copies a request's __dict__ into nested requests
# and their message headers.
_finished = weakref.WeakKeyDictionary()


# The backend methods through which a task's final state is stored, and the
# position of their ``request`` argument (the task id is 0), Celery 4.3 to 5.7.
_FINAL_STORES = (('mark_as_done', 2), ('mark_as_failure', 3), ('mark_as_revoked', 2))


def _mark(request):
    if request is not None:
        with _lock:
            _finished.setdefault(request, set())


def _mark_finished(sender=None, task=None, **kwargs):
    _mark(getattr(task or sender, 'request', None))


def _marking(store, position):
    @functools.wraps(store)
    def mark_then_store(self, *args, **kwargs):
        request = kwargs.get('request', args[position] if len(args) > position else None)
        # Before the store: a client that sees the final state must not see
        # a straggler's update after it.
        if getattr(request, 'id', None) == (args[0] if args else kwargs.get('task_id')):
            _mark(request)
        return store(self, *args, **kwargs)

    setattr(mark_then_store, _ORIGINAL_ATTRIBUTE, store)
    return mark_then_store


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
        for name, position in _FINAL_STORES:
            owner = defining_class(BaseBackend, name)  # celery.backends.base.Backend
            setattr(owner, name, _marking(owner.__dict__[name], position))
        Task.update_state = _guarded(current)
