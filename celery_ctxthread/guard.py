r"""Keep a thread that outlives its task from overwriting the task's final state.

The rule, exactly: once the final state of a task whose context was captured
has been stored, ``update_state`` for that task stores nothing and logs one
warning per thread, when it comes from *any thread other than the task's own*,
or from any thread at all once the task has returned (``task_postrun``: a
``wrap()``\ ped callback run later by another task on the same thread)::

    celery_ctxthread.guard: task 3f2a9c1e-... ended; ignored update_state('PROGRESS')
    from thread 'Thread-7' that outlived it

Nothing else is held back: the task's own thread (``on_success``,
``on_failure``, ``after_return``, ``task_success``/``task_failure``
receivers, all of which Celery runs after the store) updates as always; a
task whose context was never captured is never looked at; and where no final
state is stored (``raise Ignore()``, ``ignore_result``, eager mode) nothing
is dropped.

"Stored" is decided where Celery's tracer stores it: the backend's
``mark_as_done``, ``mark_as_failure`` and ``mark_as_revoked``, called with the
task's request.  Each captured request has one lock, and every store for it
goes through that lock: an ``update_state`` checks and stores while holding
it, and the final store marks the request and stores while holding it.  So
the final store waits for an update already in flight (never for a thread
that is merely alive), and every update that comes after it is dropped: the
final state is the last word.  Without the guard, Redis and the database
backend let a straggler turn a stored FAILURE or REVOKED back into PROGRESS,
a straggler's read-then-write store may even replace SUCCESS, and an rpc
client may see PROGRESS after SUCCESS.

The same bookkeeping refuses ``self.retry()`` from a propagated thread: Celery
would publish the retry and the task would carry on, so it would run twice.

What it cannot stop: a direct ``backend.store_result(...)``, which goes around
``update_state``.

``set_up()`` puts the wrappers in place and ``tear_down()`` takes them
out; ``celery_ctxthread`` sets the guard up when it is imported (its
docstring says why).  The guard hooks into the core
(``celery_ctxthread.context._capture_hooks``), never the other way round.
For a task whose context was never captured each wrapper only looks its
request up and passes the call through.
"""

import functools
import logging
import threading
import weakref

from celery.app.task import Task
from celery.signals import task_postrun

from celery_ctxthread import _celery, _patching, context, lifecycle

_logger = logging.getLogger(__name__)

# id(captured request) -> (_RequestRef to it, its _Watch).  Kept off the request
# itself: Celery 5.5+ copies a request's __dict__ into nested requests and their
# message headers.  Keyed by id, not a WeakKeyDictionary: a look-up is by
# identity alone and builds no weak reference (every capture and every update
# looks its request up), and nobody's __eq__ or __hash__ runs.
_watched = {}
_lock = threading.Lock()
_applied = []  # the MethodPatch objects while set up


class _Watch(object):
    """What the guard knows of one captured request."""

    __slots__ = ('backend_seat', 'ended', 'finished', 'lock', 'owner', 'warned')

    def __init__(self, owner, backend_seat):
        self.owner = weakref.ref(owner)  # the task's own thread: the first to capture it
        self.backend_seat = backend_seat  # the task's own result backend (Celery 5), or None
        self.finished = False  # its final state is stored, or being stored
        self.ended = False  # the task has returned (task_postrun)
        self.warned = set()  # idents of the threads already warned
        # Held by every store for this request: an update checks and stores
        # under it, the final store marks and stores under it.  Re-entrant:
        # a store may call back into the task's own hooks.  Made now, not at
        # import, so that it is a green lock under gevent and eventlet.
        self.lock = threading.RLock()

    def from_elsewhere(self):
        return self.ended or self.owner() is not threading.current_thread()


class _RequestRef(weakref.ref):
    """A weak reference to a watched request that knows its key in ``_watched``."""

    __slots__ = ('key',)

    def __init__(self, request, callback):
        super(_RequestRef, self).__init__(request, callback)
        self.key = id(request)


def _forget(request_ref):
    # Called as the request is freed, before its id can be reused, so nobody
    # else can be writing this key.  No lock: a collection may call this in
    # any thread, one that holds _lock in watch() included.
    entry = _watched.get(request_ref.key)
    if entry is not None and entry[0] is request_ref:
        _watched.pop(request_ref.key, None)


def watch(task, request):
    """Note that ``task``'s context, with ``request``, was captured in the current thread."""
    if _watch_of(request) is None:
        seat = _celery.task_backend_seat(_app_of(task))  # once per task run, not per capture
        try:
            request_ref = _RequestRef(request, _forget)
        except TypeError:  # not weakly referable: such a request cannot be guarded
            return
        with _lock:
            if _watch_of(request) is None:
                _watched[id(request)] = (request_ref, _Watch(threading.current_thread(), seat))
        lifecycle.record_for(request)  # once per task run, as the watch


def _app_of(task):
    try:
        return task.app
    except Exception:  # not a bound task
        return None


def _watch_of(request):
    """``request``'s _Watch, or None: never captured (or not weakly referable)."""
    entry = _watched.get(id(request))
    if entry is not None and entry[0]() is request:
        return entry[1]
    return None


def set_up():
    """Put the guard in place; idempotent and thread-safe."""
    with _patching.lock:
        if _applied:
            return
        patches = [
            _patching.MethodPatch(_celery.final_store_owner(name), name, _marking_finished)
            for name in _celery.FINAL_STORES
        ]
        patches.append(_patching.MethodPatch(Task, 'update_state', _guarded_update_state))
        patches.append(_patching.MethodPatch(Task, 'retry', _refusing_retry_elsewhere))
        for patch in patches:
            patch.apply()
            _applied.append(patch)
        task_postrun.connect(_mark_ended, weak=False, dispatch_uid=__name__)
        context._capture_hooks.append(watch)


def tear_down():
    """Take the guard out again (for tests): Celery's methods are back where
    nobody wrapped them since; a method someone wrapped keeps ours under theirs."""
    with _patching.lock:
        if not _applied:
            return
        context._capture_hooks.remove(watch)
        task_postrun.disconnect(_mark_ended, dispatch_uid=__name__)
        for patch in reversed(_applied):
            patch.restore()
        del _applied[:]


def is_set_up():
    """Whether :func:`set_up` is in effect."""
    return bool(_applied)


def _mark_ended(sender=None, task=None, state=None, **kwargs):
    task = task or sender
    request = getattr(task, 'request', None)
    watched = _watch_of(request)
    if watched is not None:
        watched.ended = True
        # Over where nothing was stored (ignore_result, Ignore); a warning for stragglers.
        lifecycle.at_postrun(request, state, _app_of(task))


def _marking_finished(store):
    read_call = _celery.final_store_reader(store)
    reason = lifecycle.FINAL_STORE_REASONS[store.__name__]

    @functools.wraps(store)
    def mark_then_store(self, task_id, *args, **kwargs):
        request, stored = read_call(args, kwargs)
        watched = _watch_of(request) if request is not None else None
        if watched is None or not stored or getattr(request, 'id', None) != task_id:
            return store(self, task_id, *args, **kwargs)
        # The task is over before its final state is stored; its threads may get
        # a bounded join (ctxthread_join_timeout), outside the lock their updates take.
        lifecycle.before_final_store(request, reason, getattr(self, 'app', None))
        with watched.lock:  # after any update in flight; before every later one
            watched.finished = True
            return store(self, task_id, *args, **kwargs)

    return mark_then_store


def _guarded_update_state(update_state):
    @functools.wraps(update_state)
    def guarded_update_state(self, task_id=None, state=None, meta=None, **kwargs):
        request = self.request
        watched = _watch_of(request)
        if watched is None or (task_id is not None and task_id != request.id):
            return update_state(self, task_id, state, meta, **kwargs)
        with watched.lock:  # checked and stored in one step: see the module's docstring
            if watched.finished and watched.from_elsewhere():
                _warn_once(watched, request, state)
                return None
            seat = watched.backend_seat
            if seat is None or watched.owner() is threading.current_thread():
                return update_state(self, task_id, state, meta, **kwargs)
            # Another thread: it stores through its task's backend, and builds none.
            return _celery.call_with_backend(
                seat, update_state, (self, task_id, state, meta), kwargs
            )

    return guarded_update_state


def _refusing_retry_elsewhere(retry):
    @functools.wraps(retry)
    def retry_in_own_thread(self, *args, **kwargs):
        watched = _watch_of(self.request)
        if watched is not None and watched.from_elsewhere():
            raise RuntimeError(
                'celery_ctxthread: %s.retry() was called from thread %r, not from the '
                "task's own thread. Celery would publish the retry while the task carries "
                'on, so the task would run twice. Let the error reach the task '
                '(future.result(), or join the thread and check) and call self.retry() '
                'there.' % (self.name, threading.current_thread().name)
            )
        return retry(self, *args, **kwargs)

    return retry_in_own_thread


def _warn_once(watched, request, state):
    thread = threading.current_thread()
    with _lock:
        if thread.ident in watched.warned:
            return
        watched.warned.add(thread.ident)
    _logger.warning(
        'celery_ctxthread.guard: task %s ended; ignored update_state(%r) '
        'from thread %r that outlived it',
        request.id,
        state,
        thread.name,
    )
