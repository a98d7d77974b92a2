"""Opt-in, process-wide propagation for threads and pools you do not control.

::

    cct.install()      # Thread/Timer.start(), ThreadPoolExecutor.submit() and
                       # ThreadPool jobs propagate
    cct.installed()    # -> True
    cct.uninstall()    # the stdlib's behaviour is back

Both calls are idempotent and thread-safe, and work whether Sentry's or
OpenTelemetry's threading patches came before or come after.  What changes:

- ``threading.Thread.start`` (and ``Timer.start`` where someone gave ``Timer``
  a start of its own): the thread's bound ``run`` is wrapped at start, so
  subclasses that override ``run()`` are covered.  Leave one thread out with
  :func:`celery_ctxthread.opt_out`.
- ``ThreadPoolExecutor.submit`` and the job methods of
  ``multiprocessing.pool.ThreadPool`` (``apply_async``, ``map``, ``imap``...):
  each job is wrapped, so a pool shared by many tasks gives every job its own
  submitter's context.
- The threads the stdlib's pools start for themselves (executor and
  ``ThreadPool`` workers and handlers, a process pool's manager thread, a
  ``multiprocessing.Queue``'s feeder) never carry a context: they outlive the
  task that happened to start them.

``uninstall()`` restores each method, except where someone wrapped ours since
(taking ours out would take theirs out too), on top of it or in place, as
ddtrace does by rewriting its code: ours then stays under theirs and passes
everything straight through, exactly like the original.
"""

import concurrent.futures
import functools
import logging
import multiprocessing.pool
import multiprocessing.queues
import threading

from celery_ctxthread import _patching
from celery_ctxthread._compat import TimerBase, split_fn
from celery_ctxthread._patching import binder
from celery_ctxthread.context import _EMPTY, capture
from celery_ctxthread.futures import _JobInContext, _keep_passing_submit, _submit_in_context
from celery_ctxthread.threads import _inside_pool, _start_in_context

_ThreadPool = multiprocessing.pool.ThreadPool

_logger = logging.getLogger(__name__)

_enabled = False
_applied = []  # the MethodPatch objects of the current install()


def _propagating_start(original):
    bind = binder(original)

    @functools.wraps(original)
    def start(self):
        if not _enabled:
            return bind(self)()
        return _start_in_context(self, bind(self))

    return start


def _propagating_submit(original):
    bind = binder(original)

    @functools.wraps(original)
    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), as the stdlib's
        self, args = split_fn(args, 'submit')
        method = bind(self)
        if not _enabled or _inside_pool.active:  # off, or a job our executor already wrapped
            return method(*args, **kwargs)
        return _submit_in_context(method, args, kwargs)

    _keep_passing_submit(submit)
    return submit


def _propagating_pool_job(original):
    """A ``multiprocessing.pool.ThreadPool`` method whose first argument is the job."""
    bind = binder(original)

    @functools.wraps(original)
    def method(self, func, *args, **kwargs):
        if _enabled and isinstance(self, _ThreadPool) and type(func) is not _JobInContext:
            context = capture()
            if context is not _EMPTY:
                func = _JobInContext(context, func)
        return bind(self)(func, *args, **kwargs)

    return method


def _starting_pool_threads(original):
    """A method that starts a pool's own long-lived threads: they get no context."""
    bind = binder(original)

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        if not _enabled or _inside_pool.active:
            return bind(self)(*args, **kwargs)
        _inside_pool.active = True
        try:
            return bind(self)(*args, **kwargs)
        finally:
            _inside_pool.active = False

    return method


def _targets():
    """``(class, method, make_wrapper)`` for each patch, looked up now.

    Now, not at import: gevent swaps ``threading.Thread`` for a subclass that
    inherits ``start()``, and OpenTelemetry gives ``Timer`` a ``start`` of its
    own, which a patch of ``Thread.start`` alone no longer reaches.
    """
    thread_class = _patching.defining_class(threading.Thread, 'start')
    yield thread_class, 'start', _propagating_start
    if 'start' in TimerBase.__dict__:
        yield TimerBase, 'start', _propagating_start
    executor = concurrent.futures.ThreadPoolExecutor
    yield _patching.defining_class(executor, 'submit'), 'submit', _propagating_submit
    pool = multiprocessing.pool.Pool
    # map(), starmap() and their _async forms all go through _map_async (3.x);
    # apply() through apply_async().
    map_method = '_map_async' if hasattr(pool, '_map_async') else 'map_async'
    for name in ('apply_async', map_method, 'imap', 'imap_unordered'):
        yield _patching.defining_class(pool, name), name, _propagating_pool_job
    yield _patching.defining_class(_ThreadPool, '__init__'), '__init__', _starting_pool_threads
    process_pool = concurrent.futures.ProcessPoolExecutor
    yield _patching.defining_class(process_pool, 'submit'), 'submit', _starting_pool_threads
    queue = multiprocessing.queues.Queue
    yield _patching.defining_class(queue, '_start_thread'), '_start_thread', _starting_pool_threads


def install():
    """Make plain threads and thread pools started inside tasks propagate."""
    global _enabled
    with _patching.lock:
        if _enabled:
            return
        for owner, name, make in _targets():
            patch = _patching.MethodPatch(owner, name, make)
            patch.apply()
            _applied.append(patch)
        _enabled = True


def uninstall():
    """Undo :func:`install`; a no-op when it is not installed."""
    global _enabled
    with _patching.lock:
        _enabled = False  # first: a patch left under someone's wrapper passes through
        for patch in reversed(_applied):
            owner, name = patch.owner.__name__, patch.name
            if not patch.restore():
                _logger.debug(
                    'celery_ctxthread: %s.%s was wrapped (or rewritten in place) after '
                    'install(); ours stays under that wrapper and passes everything '
                    'straight through',
                    owner,
                    name,
                )
        del _applied[:]


def installed():
    """Return True while :func:`install` is in effect."""
    return _enabled
