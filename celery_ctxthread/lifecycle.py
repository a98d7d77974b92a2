"""A task's threads can tell when their task is over, and stop.

::

    import celery_ctxthread as cct

    def poll(task):                          # in a TaskThread, a job, a wrap()ped callback
        while not cct.cancelled():
            do_work()
            cct.wait_cancelled(1.0)          # sleeps, but wakes as soon as the task is over

    def crunch(parts):
        for part in parts:
            cct.checkpoint()                 # raises cct.TaskOver once the task is over
            work(part)

A task is *over* (``reason`` in brackets):

- when it returns or raises, just before its final state is stored
  (:data:`RETURNED`, :data:`FAILED`), at the latest at ``task_postrun``
  where nothing is stored (``ignore_result``, ``Ignore``);
- when its soft time limit fires (:data:`SOFT_TIME_LIMIT`), even if the task
  catches the exception and goes on cleaning up;
- when the worker process running it learns that it was revoked (:data:`REVOKED`);
- when the worker begins a warm or cold shutdown (:data:`WORKER_SHUTDOWN`);
- when :func:`cancel` is called (:data:`CANCELLED_BY_HAND`).

Only the threads the task propagated its context to are told, and only about
their own task: the task's own thread, other tasks' threads and threads
outside any task always see ``cancelled() == False``.

Each captured task run has one record (``_TaskLife``), found when its
context is captured; every run under the snapshot makes it active on its
thread where the run's task stack entry is (``_celery.active_record``), so
``cancelled()`` is two lookups and an attribute read.
"""

import logging
import os
import threading
import time
import weakref

from celery_ctxthread import _celery
from celery_ctxthread._stdlib import thread_named, weak_values_now

_logger = logging.getLogger(__name__)

#: The task returned (its final state is about to be stored).
RETURNED = 'returned'
#: The task raised (failure, retry, ``Ignore``, ``Reject``).
FAILED = 'failed'
#: Its soft time limit fired.
SOFT_TIME_LIMIT = 'soft_time_limit'
#: The worker process running it learned that it was revoked.
REVOKED = 'revoked'
#: The worker began a warm or cold shutdown.
WORKER_SHUTDOWN = 'worker_shutdown'
#: :func:`cancel` was called.
CANCELLED_BY_HAND = 'cancelled_by_hand'
#: Every reason, in the order above.
REASONS = (RETURNED, FAILED, SOFT_TIME_LIMIT, REVOKED, WORKER_SHUTDOWN, CANCELLED_BY_HAND)

#: The reason a task is over when the backend method of that name stores its final state.
FINAL_STORE_REASONS = {
    'mark_as_done': RETURNED,
    'mark_as_failure': FAILED,
    'mark_as_revoked': REVOKED,
}

#: App setting: seconds to wait, before a task's final state is stored, for
#: the threads it started to end (None or 0: do not wait).
JOIN_TIMEOUT_SETTING = 'ctxthread_join_timeout'
#: App setting: False switches off the warning about a task's threads still alive at its end.
WARN_STRAGGLERS_SETTING = 'ctxthread_warn_stragglers'


class TaskOver(Exception):
    """Raised by :func:`checkpoint` in a thread whose task is over.

    ``reason`` is one of :data:`REASONS`, ``task_id`` the task's id::

        try:
            cct.checkpoint()
        except cct.TaskOver as over:
            log.info('stopping: task %s %s', over.task_id, over.reason)
    """

    def __init__(self, reason, task_id):
        Exception.__init__(self, 'task %s is over (%s)' % (task_id, reason))
        self.reason = reason
        self.task_id = task_id

    def __reduce__(self):  # picklable as (reason, task_id): it may cross a process pool
        return (TaskOver, (self.reason, self.task_id))


_JOIN_POLL = 0.01  # seconds between looks, while the bounded join waits


class _TaskLife(object):
    """One captured task run: whether it is over, why, and who is told."""

    __slots__ = (
        '__weakref__',
        'ended',
        'event',
        'joined',
        'lock',
        'over',
        'owner',
        'reason',
        'task_id',
    )

    def __init__(self, task_id):
        self.task_id = task_id
        self.over = False  # read without the lock: set once, after reason
        self.reason = None
        # Made now, in the task's thread, not at import: a green Event under gevent and eventlet.
        self.event = threading.Event()
        # Re-entrant: a soft time limit's signal handler may end the task while
        # its own thread holds the lock.
        self.lock = threading.RLock()
        self.joined = False  # the bounded wait at its end is done (once: it is bounded)
        # The task's own thread (the first to capture its context) is not told,
        # until the task has returned (a wrap()ped callback run there later is).
        self.owner = weakref.ref(threading.current_thread())
        self.ended = False

    def end(self, reason):
        """Mark the task over with ``reason``; the first reason wins."""
        with self.lock:
            if self.over:
                return False
            self.reason = reason
            self.over = True
        self.event.set()
        return True

    def running(self):
        """The names of the threads (pool threads with its jobs included) that run in
        the task's context now, but the calling one.  No registry of threads is
        kept: each run's task stack entry names its record (``_celery``)."""
        current = _celery.get_ident()
        idents = _celery.idents_running_under(self)
        names = [
            thread_named(_celery.thread_ident_of(ident)) for ident in idents if ident != current
        ]
        return [name for name in names if name is not None]  # None: it has ended since


# Captured requests -> their record, and task ids -> the same records.
_records = weakref.WeakKeyDictionary()
_by_id = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def _told_record(request):
    """The record of ``request`` if the calling thread is to be told about it (see
    ``_celery.active_record``, where the stack flavour keeps no active record)."""
    record = _record_of(request)
    if record is None or not record.over or record.ended:
        return record
    return None if record.owner() is threading.current_thread() else record


_find_active = _celery.active_record
# cancelled() and checkpoint() read the active record inline where they can: a
# loop asks every turn, and a call more is a third of their cost.
_entry_of, _ident = _celery.active_entry_lookup()
_KEY = _celery.ACTIVE_RECORD


def _active_record():
    return _find_active(_told_record)


# The last request looked up and its record: a task capturing in a loop (each
# start(), each submit()) finds its record without a weak dictionary lookup.
_last = (lambda: None, None)


def record_for(request):
    """The record of the task run with ``request`` (made on its first capture)."""
    last = _last
    if last[0]() is request:
        return last[1]
    record = _record_of(request) or _new_record(request)
    _remember(request, record)
    return record


def _remember(request, record):
    global _last
    try:
        _last = (weakref.ref(request), record)
    except TypeError:  # not weakly referable
        pass


def _new_record(request):
    _tell_at_soft_time_limit()
    with _registry_lock:
        record = _TaskLife(getattr(request, 'id', None))
        try:
            record = _records.setdefault(request, record)
        except TypeError:  # not weakly referable: a record of its own, never ended by the worker
            return record
        if record.task_id is not None:
            _by_id[record.task_id] = record
    return record


_soft_limit_chained_in = []  # the pid where it was checked: a forked child checks again


def _tell_at_soft_time_limit():
    """Once per process, at its first record: a prefork child's soft time limit
    ends its task's record first (it runs one task at a time), then raises."""
    pid = os.getpid()
    if pid not in _soft_limit_chained_in:
        _soft_limit_chained_in[:] = [pid]
        _celery.chain_soft_time_limit(_soft_time_limit)


def _soft_time_limit():
    end_all(SOFT_TIME_LIMIT)


def found_record(request):
    """The record of ``request``, or None: never made here (a task over before
    its record was looked up was never captured, so it has none)."""
    return _record_of(request) if request is not None else None


def _record_of(request):
    try:
        return _records.get(request)
    except TypeError:
        return None


def _live_records():
    """The records of this process's tasks that are not over yet."""
    return [record for record in weak_values_now(_by_id) if not record.over]


# ------------------------------------------------------------------ the API


def cancelled():
    """True once the task whose context this thread runs in is over.

    False in the task's own thread, in the threads of a task still running,
    and outside any task.  Cheap enough for every turn of a loop::

        while not cct.cancelled():
            do_work()
    """
    if _entry_of is None:
        record = _find_active(_told_record)
    else:
        entry = _entry_of(_ident())
        record = entry.get(_KEY) if entry is not None else None
    return record is not None and record.over


def checkpoint():
    """Raise :class:`TaskOver` once :func:`cancelled` would return True; else do nothing."""
    if _entry_of is None:
        record = _find_active(_told_record)
    else:  # as cancelled()
        entry = _entry_of(_ident())
        record = entry.get(_KEY) if entry is not None else None
    if record is not None and record.over:
        raise TaskOver(record.reason, record.task_id)


def wait_cancelled(timeout=None):
    """Sleep up to ``timeout`` seconds, waking early once the task is over.

    Returns True if it is over (as :func:`cancelled`), False on timeout::

        while not cct.wait_cancelled(5.0):   # every 5 s until the task is over
            heartbeat()

    Outside any task nothing can end the wait: it is ``time.sleep(timeout)``
    (forever when ``timeout`` is None), returning False.
    """
    record = _active_record()
    if record is None:
        return threading.Event().wait(timeout) and False
    return record.event.wait(timeout) or record.over


def cancel(task_id=None, reason=CANCELLED_BY_HAND):
    """Tell the threads of a task in this process that the task is over.

    ``task_id`` None: the task of the calling thread (the task's own thread,
    or any thread running in its context)::

        cct.cancel()                         # in the task: its threads stop
        cct.cancel(result.id)                # elsewhere in the same worker process

    Queued executor jobs of that task never run.  Returns True if the
    task's threads were told now, False if they were already told or this
    process has no record of that task (its context was never captured here).
    """
    if reason not in REASONS:
        raise ValueError('cancel(): reason must be one of %s, got %r' % (REASONS, reason))
    if task_id is None:
        return _end(_active_record() or _own_record(), reason)
    return _end(_by_id.get(task_id), reason)


def _end(record, reason):
    return record is not None and record.end(reason)


def _own_record():
    tasks, top_requests, _ = _celery.read_tasks()
    if not tasks or top_requests[-1] is None:
        return None
    return record_for(top_requests[-1])  # made now: threads started later see it over


# ------------------------------------------------ where the worker ends a task


def end_all(reason):
    """Mark every task of this process that is not over yet over, with ``reason``."""
    ended = 0
    for record in _live_records():
        ended += record.end(reason)
    return ended


def before_final_store(request, reason, app):
    """Called by the guard just before the final state of captured ``request`` is stored:
    the task is over, and its threads get up to ``ctxthread_join_timeout`` seconds to end."""
    record = _record_of(request)
    if record is None:
        return
    record.end(reason)
    _join_once(record, app)


def _join_once(record, app):
    """Wait up to ``ctxthread_join_timeout`` seconds for the task's threads, once."""
    if record.joined:
        return
    record.joined = True
    timeout = _setting(app, JOIN_TIMEOUT_SETTING, None)
    if not timeout:
        return
    # Until no thread or job runs in the task's context: a pool thread that ran
    # its job is free, so this waits for the work, never for the thread.
    deadline = time.time() + float(timeout)
    while record.running() and time.time() < deadline:
        time.sleep(_JOIN_POLL)


def at_postrun(request, state, app):
    """``task_postrun``: over where nothing was stored; warn about threads still alive."""
    record = _record_of(request)
    if record is None:
        return
    record.end(RETURNED if state == 'SUCCESS' else FAILED)
    record.ended = True
    _join_once(record, app)  # where nothing was stored, this is the task's end
    if not _setting(app, WARN_STRAGGLERS_SETTING, True):
        return
    running = record.running()
    if running:
        _logger.warning(
            'celery_ctxthread: task %s ended (%s) with %d of its threads still in it: %s',
            record.task_id,
            record.reason,
            len(running),
            ', '.join(sorted(repr(name) for name in running)),
        )


def _setting(app, name, default):
    try:
        return app.conf.get(name, default)
    except Exception:  # no app, or a configuration that cannot be read: the default
        return default
