r"""Everything that reads or changes Celery's private state: the one module to
check and edit when a Celery release moves it (then add its grid cell).

Celery 4.3 to 5.7 keep a thread's context in these places:

- ``celery._state._task_stack`` and each task's ``request_stack``, both a
  ``celery.utils.threads.LocalStack``: ``_LocalStack`` (the default,
  ``{ident: {'stack': [...]}}`` in a ``Local``, whose public ``push``/``pop``
  raise and catch ``AttributeError`` on a thread with no entry: 4-7 us a
  pair, twice a pair without: ``bench/stack_pair.py``) or ``_FastLocalStack``
  (a ``threading.local`` whose ``push``/``pop`` are bound to its list), chosen
  at import by ``USE_FAST_LOCALS``;
- ``celery._state._tls.current_app``;
- ``app._local.backend`` (Celery 5): one result backend per thread.

and store a task's final state through the backend's ``mark_as_done``,
``mark_as_failure`` and ``mark_as_revoked``, which the guard wraps.

:func:`pusher_for` turns ``(stack, items)`` pairs into the object a snapshot
runs its target under::

    pusher = pusher_for([(TASK_STACK, tasks), (task.request_stack, requests)])
    pusher.call(app, fn, args, kwargs)   # while fn runs, the stacks end with the
                                         # items and app is current; afterwards
                                         # both are exactly what they were
"""

import sys

from celery import _state
from celery.backends.base import BaseBackend
from celery.utils import threads as _celery_threads

from celery_ctxthread import _patching

_LocalStack = getattr(_celery_threads, '_LocalStack', None)
_FastLocalStack = getattr(_celery_threads, '_FastLocalStack', None)
TASK_STACK = _state._task_stack
_TASK_LOCAL = TASK_STACK._local if type(TASK_STACK) is _LocalStack else None
#: The thread's current app lives in ``APP_LOCAL.current_app``.
APP_LOCAL = _state._tls
#: Where a thread's newest snapshot is kept: its entry in the task stack (see ``read_tasks``).
NEWEST_SNAPSHOT = 'celery_ctxthread.snapshot'
#: Where a run under a snapshot keeps its task's lifecycle record: the entry
#: the pusher gives the thread in the task stack (``_LocalStack``), which goes
#: with the run.
ACTIVE_RECORD = 'celery_ctxthread_record'  # an identifier: interned, hashed once
_TASK_STORAGE = _TASK_LOCAL.__storage__ if _TASK_LOCAL is not None else None
# Celery's (a greenlet where greenlet is importable), as the task stack's entries are keyed.
_get_ident = _TASK_LOCAL.__ident_func__ if _TASK_LOCAL is not None else _celery_threads.get_ident
get_ident = _get_ident  # the current thread's ident, as the task stack's entries are keyed


def read_tasks():
    """``(tasks, top_requests, thread_entry)`` of the current thread, read without raising.

    ``tasks``: the tasks, bottom first.  ``top_requests``: the request on top
    of each one's ``request_stack`` (None: none).  ``thread_entry``: a dict
    that lives exactly as long as the thread's tasks do (its entry in the
    default flavour's task stack, which Celery deletes with the last task),
    or None: the snapshot cache.
    """
    if _TASK_LOCAL is None:
        tasks, thread_entry, ident_func = tuple(TASK_STACK.stack), None, None
    else:
        ident_func = _TASK_LOCAL.__ident_func__
        ident = ident_func()
        thread_entry = _TASK_STORAGE.get(ident)
        tasks = tuple(thread_entry.get('stack') or ()) if thread_entry else ()
    if not tasks:  # outside any task: what everybody else in the process pays
        return (), (), None
    top_requests = ()
    for task in tasks:
        try:
            stack = task.request_stack
        except AttributeError:  # an unbound task class
            stack = None
        if type(stack) is _LocalStack:
            local = stack._local
            if local.__ident_func__ is not ident_func:  # never, with Celery's locals
                ident_func, ident = local.__ident_func__, local.__ident_func__()
            entry = local.__storage__.get(ident)
            requests = entry.get('stack') if entry else None
        else:
            requests = stack.stack if stack is not None else None
        top_requests += (requests[-1] if requests else None,)  # usually one task: no list
    return tasks, top_requests, thread_entry


def active_record(record_of):
    """The lifecycle record of the task whose context this thread runs in, or None.

    With ``_LocalStack`` (the default), the entry a run's pusher made in the
    task stack holds it (``ACTIVE_RECORD``): one lookup, and nothing to restore.
    Elsewhere, ``record_of(request)`` for the request on top of the top task's
    stack (the caller tells the task's own thread apart).
    """
    if _TASK_STORAGE is not None:
        entry = _TASK_STORAGE.get(_get_ident())
        return entry.get(ACTIVE_RECORD) if entry is not None else None
    tasks = TASK_STACK.stack
    if not tasks:
        return None
    requests = getattr(tasks[-1], 'request_stack', None)
    requests = requests.stack if requests is not None else None
    return record_of(requests[-1]) if requests else None


def idents_running_under(record):
    """The idents (Celery's: greenlets where greenlet is importable) of the threads
    that run in a context whose record is ``record`` now; none with the other
    stack flavours, which keep no active record."""
    if _TASK_STORAGE is None:
        return []
    entries = list(_TASK_STORAGE.items())  # one step under the GIL
    return [ident for ident, entry in entries if entry.get(ACTIVE_RECORD) is record]


def thread_ident_of(ident):
    """The thread ident of the run keyed ``ident`` in the task stack, or None.

    Celery keys its stacks by greenlet wherever greenlet is importable (SQLAlchemy
    installs it), so a key may be a thread's greenlet: then the thread is the one
    whose pusher ``call`` runs with that key (a look at every thread's frames, only
    when a task ends with threads still in it).  Under gevent's monkey-patching
    the thread ident of a greenlet is its ``id()``.
    """
    if isinstance(ident, int):
        return ident
    for thread_ident, frame in sys._current_frames().items():
        while frame is not None:
            if frame.f_code is _PUSHER_CALL_CODE and frame.f_locals.get('ident') is ident:
                return thread_ident
            frame = frame.f_back
    return id(ident)


def marks_runs():
    """Whether each run's task stack entry names its record (``_LocalStack``)."""
    return _TASK_STORAGE is not None


def active_entry_lookup():
    """``(entry_of, ident)``: ``entry_of(ident()).get(ACTIVE_RECORD)`` is what
    :func:`active_record` reads, for a caller that cannot afford its call (a
    cooperative loop asks every turn); ``(None, None)`` where the records are
    found by request."""
    if _TASK_STORAGE is None:
        return None, None
    return _TASK_STORAGE.get, _get_ident


_NO_APP = object()  # the thread has set no current app: Celery's class default applies


class _LocalStackPusher(object):
    """Pushes onto ``_LocalStack``\\ s: replaces the thread's entry in each with
    one holding the longer list, then puts the saved entry back (or deletes the
    new one): whatever the target did in between goes with it.
    ``_LocalStack`` looks its entry up on every call, so nobody holds the old one.
    The new entry in the task stack also holds the run's lifecycle record: set
    and restored with the entry, for nothing."""

    __slots__ = ('ident_func', 'parts', 'record')

    def __init__(self, ident_func, parts, record=None):
        self.ident_func = ident_func  # Celery's locals all share one
        self.parts = parts  # ((storage, items as a list), ...), the task stack's last
        self.record = record

    def call(self, app, fn, args, kwargs):
        ident = self.ident_func()
        saved = []
        # Saved even when the snapshot has no app: the target may make one
        # current, and a pool thread must not keep it for its next job.  Read
        # and written as the thread's dict of it: one look-up of the local.
        app_attributes = APP_LOCAL.__dict__
        previous_app = app_attributes.get('current_app', _NO_APP)
        try:
            if app is not None:
                app_attributes['current_app'] = app
            for storage, items in self.parts:
                entry = storage.get(ident)
                saved.append((storage, entry))
                if items:  # pushing nothing must not create an entry: pop() differs
                    # A new list each time: runs in several threads share `items`.
                    new_stack = (entry.get('stack') or []) + items if entry else items[:]
                    storage[ident] = new_entry = {'stack': new_stack}
            # The task stack's entry, made last (see pusher_for), names the record:
            # restored with the entry, for nothing.
            new_entry[ACTIVE_RECORD] = self.record
            return fn(*args, **kwargs)
        except BaseException:  # let the traceback keep nothing of the run: see _released
            self = app = fn = args = kwargs = items = new_stack = new_entry = None
            raise
        finally:
            for storage, entry in saved:
                if entry is None:  # the thread had no entry: release it, as pop() would
                    storage.pop(ident, None)
                else:
                    storage[ident] = entry
            if previous_app is _NO_APP:  # none of the thread's own: the class default
                app_attributes.pop('current_app', None)
            else:
                app_attributes['current_app'] = previous_app
            saved = storage = entry = None  # the entries it restored: see _released


_PUSHER_CALL_CODE = _LocalStackPusher.call.__code__


class _FastLocalStackPusher(object):
    """Pushes onto ``_FastLocalStack``\\ s, whose ``push``/``pop`` are bound to
    the list: edit it in place."""

    __slots__ = ('parts',)

    def __init__(self, parts, record=None):
        self.parts = parts  # ((stack, items), ...); record: found by request instead

    def call(self, app, fn, args, kwargs):
        saved = []
        previous_app = APP_LOCAL.current_app  # as _LocalStackPusher.call
        try:
            if app is not None:
                APP_LOCAL.current_app = app
            self._push(saved)
            return fn(*args, **kwargs)
        except BaseException:  # let the traceback keep nothing of the run: see _released
            app = fn = args = kwargs = None
            raise
        finally:
            self._restore(saved)
            APP_LOCAL.current_app = previous_app
            self = saved = previous_app = None  # see _released

    def _push(self, saved):
        for stack, items in self.parts:
            live = stack.stack
            saved.append((live, live[:]))
            live.extend(items)

    def _restore(self, saved):
        for live, items in saved:
            live[:] = items


class _PublicApiPusher(_FastLocalStackPusher):
    """Any other mix of stacks: read ``.stack``, push and pop through the public API."""

    __slots__ = ()

    def _push(self, saved):
        for stack, items in self.parts:
            saved.append((stack, tuple(stack.stack)))
            for item in items:
                stack.push(item)

    def _restore(self, saved):
        for stack, items in saved:
            for _ in range(len(stack) - len(items)):
                stack.pop()
            for item in items[len(stack) :]:  # the target popped some of ours
                stack.push(item)


# _released: a failed job's traceback keeps the frames of ``call`` (the stdlib's
# executor keeps it with the future), and a pusher holds the task's requests:
# each ``call`` that raises lets go of all it holds (one that returns loses its
# frame anyway).


def pusher_for(pairs, record=None):
    """The one pusher that pushes each ``(stack, items)`` pair's items (the task
    stack's first), and makes ``record`` active for :func:`active_record`."""
    ident_funcs, by_entry, fast, public = set(), [], 0, []
    for stack, items in pairs:
        if type(stack) is _LocalStack:
            ident_funcs.add(stack._local.__ident_func__)
            by_entry.append((stack._local.__storage__, list(items)))
        fast += type(stack) is _FastLocalStack
        public.append((stack, tuple(items)))
    if len(by_entry) == len(pairs) and len(ident_funcs) == 1:  # Celery's locals share one
        # The task stack last: its new entry is the one call() keeps the record in.
        return _LocalStackPusher(ident_funcs.pop(), tuple(by_entry[1:] + by_entry[:1]), record)
    kind = _FastLocalStackPusher if fast == len(pairs) else _PublicApiPusher
    return kind(tuple(public), record)


def task_backend_seat(app):
    """``(app._local, backend)``: the result backend the calling thread uses for
    ``app``, and where Celery keeps it per thread; None where there is nothing
    to share.

    Celery 5 gives every thread that touches ``app.backend`` a backend of its
    own (unless :setting:`result_backend_thread_safe`), and a Redis or SQL
    backend's connection outlives a dead thread until the cyclic collector
    frees it.  A task's threads store through their task's instead
    (:func:`call_with_backend`, from the guard's ``update_state``): stores
    through it are thread-safe (a Redis client's pool, the rpc producer pool,
    an SQL session per store), and the guard serialises the stores of one
    task.  Celery 4 (one backend per app) and thread-safe backends share
    already.  Built here, in the task's thread, if the task has not used it
    yet: the task stores its final state with it.
    """
    local = getattr(app, '_local', None)
    if local is None:  # Celery 4, or no app
        return None
    backend = local.__dict__.get('backend')  # this thread's
    if backend is None and getattr(app, '_backend_cache', None) is None:
        try:
            backend = app.backend
        except Exception:  # a backend that cannot be built: let the thread fail as it would
            return None
    if backend is None or local.__dict__.get('backend') is not backend:
        return None  # result_backend_thread_safe: Celery shares it itself
    return local, backend


def call_with_backend(seat, fn, args, kwargs):
    """``fn(*args, **kwargs)`` with ``app.backend`` on this thread being the one in
    ``seat``; the thread's own (or none) is back afterwards."""
    backend_local, backend = seat
    # This thread's attributes of app._local, read through the dict: a missing
    # attribute would raise and catch.
    thread_attributes = backend_local.__dict__
    previous = thread_attributes.get('backend')
    thread_attributes['backend'] = backend
    try:
        return fn(*args, **kwargs)
    finally:
        if previous is None:  # the thread had none: it is left with none
            thread_attributes.pop('backend', None)
        else:
            thread_attributes['backend'] = previous


# ------------------------------------------------ where a final state is stored

#: The backend methods Celery's tracer stores a final state with, called with the task's request.
FINAL_STORES = ('mark_as_done', 'mark_as_failure', 'mark_as_revoked')


def final_store_owner(name):
    """The class that defines backend method ``name`` (``Backend``, inherited by every backend)."""
    return _patching.defining_class(BaseBackend, name)


def final_store_reader(store):
    """``read(args, kwargs) -> (request, stores)`` for ``store(self, task_id, *args, **kwargs)``.

    Positions are read from the signature, Celery 4.3 to 5.7 alike.  ``stores``
    is False where the call stores nothing: ``store_result=False``, or (Celery
    5) ``mark_as_done`` for a request with ``ignore_result``.
    """
    request_at = _patching.argument_position(store, 'request') - 1
    store_at = _patching.argument_position(store, 'store_result') - 1
    checks_ignore_result = store.__name__ == 'mark_as_done'

    def read(args, kwargs):
        request = kwargs.get('request', args[request_at] if len(args) > request_at else None)
        stores = kwargs.get('store_result', args[store_at] if len(args) > store_at else True)
        if checks_ignore_result and getattr(request, 'ignore_result', False):
            stores = False
        return request, stores

    return read


# ------------------------------------------------- where a worker ends its tasks


def chain_soft_time_limit(before):
    """In a prefork child: call ``before()`` first when the soft time limit fires.

    billiard's child installs ``soft_timeout_sighandler`` for its soft-timeout
    signal (SIGUSR1) after or before ``worker_process_init``, by version
    (billiard 4.3 after), so the caller chains when a task first captures its
    context; ours calls ``before()``, then billiard's, which raises
    ``SoftTimeLimitExceeded`` in the task.
    Anywhere else (no such handler installed: solo, threads, green pools) it
    changes nothing.  Returns whether it chained.
    """
    import signal

    from billiard import pool as billiard_pool

    signum = getattr(billiard_pool, 'SIG_SOFT_TIMEOUT', None)
    if signum is None:  # no SIGUSR1 here (Windows)
        return False
    original = signal.getsignal(signum)
    if original is not billiard_pool.soft_timeout_sighandler:  # ours already, or not a child
        return False

    def on_soft_time_limit(signum, frame):
        try:
            before()
        finally:
            original(signum, frame)

    signal.signal(signum, on_soft_time_limit)
    return True


def wrap_revoke_command(before):
    """Call ``before(task_ids)`` first whenever this process runs the ``revoke``
    control command (the worker's main process; the tasks' too on the solo,
    threads, gevent and eventlet pools); idempotent.  The worker dispatches
    through ``Panel.data``, looked up on each command."""
    from celery.worker.control import Panel

    original = Panel.data.get('revoke')
    if original is None or getattr(original, '_ctxthread_wrapped', False):
        return

    def revoke(state, task_id, *args, **kwargs):
        several = isinstance(task_id, (list, tuple, set, frozenset))
        before(list(task_id) if several else [task_id])
        return original(state, task_id, *args, **kwargs)

    for name in ('__doc__', '__name__', '__module__'):  # Panel.meta is keyed by name
        if hasattr(original, name):
            setattr(revoke, name, getattr(original, name))
    revoke._ctxthread_wrapped = True
    Panel.data['revoke'] = revoke
