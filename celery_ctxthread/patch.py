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
import threading

from celery_ctxthread import _patching, _stdlib
from celery_ctxthread._compat import split_fn
from celery_ctxthread._install_state import (
    inside_pool_code,
    register_passing_submit,
    run_as_pool_code,
    state,
)
from celery_ctxthread._patching import binder
from celery_ctxthread.context import _EMPTY, _CallInContext, capture
from celery_ctxthread.futures import _submit_in_context
from celery_ctxthread.threads import _start_in_context

_logger = logging.getLogger(__name__)

_applied = []  # the MethodPatch objects of the current install()


def _propagating_start(original):
    bind = binder(original)

    @functools.wraps(original)
    def start(self):
        if not state.enabled or inside_pool_code():  # off, or a pool starting its own
            return bind(self)()
        return _start_in_context(self, bind(self))

    return start


def _propagating_submit(original):
    bind = binder(original)

    @functools.wraps(original)
    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), as the stdlib's
        self, args = split_fn(args, 'submit')
        method = bind(self)
        if not state.enabled or inside_pool_code():  # off, or a job our executor wrapped
            return method(*args, **kwargs)
        # Code we do not control waits on these futures: its jobs run as the stdlib's would.
        return _submit_in_context(method, args, kwargs, True)

    register_passing_submit(submit)
    return submit


def _propagating_pool_job(original):
    """A ``multiprocessing.pool.ThreadPool`` method whose first argument is the job."""
    bind = binder(original)

    @functools.wraps(original)
    def method(self, func, *args, **kwargs):
        pool_job = isinstance(self, _stdlib.ThreadPool) and type(func) is not _CallInContext
        if state.enabled and pool_job:
            context = capture()
            if context is not _EMPTY:
                func = _CallInContext(context, func)
        return bind(self)(func, *args, **kwargs)

    return method


def _without_propagation(original):
    """A method that starts a pool's own long-lived threads: they get no context."""
    bind = binder(original)

    @functools.wraps(original)
    def method(self, *args, **kwargs):
        if not state.enabled:
            return bind(self)(*args, **kwargs)
        return run_as_pool_code(bind(self), args, kwargs)

    return method


def _targets():
    """``(class, method, make_wrapper)`` for each patch, looked up now.

    Now, not at import: gevent swaps ``threading.Thread`` for a subclass that
    inherits ``start()``, and OpenTelemetry gives ``Timer`` a ``start`` of its
    own, which a patch of ``Thread.start`` alone no longer reaches.
    """
    thread_class = _patching.defining_class(threading.Thread, 'start')
    yield thread_class, 'start', _propagating_start
    if 'start' in _stdlib.TimerBase.__dict__:
        yield _stdlib.TimerBase, 'start', _propagating_start
    executor = concurrent.futures.ThreadPoolExecutor
    yield _patching.defining_class(executor, 'submit'), 'submit', _propagating_submit
    for name in _stdlib.POOL_JOB_METHODS:
        owner = _patching.defining_class(_stdlib.ThreadPool, name)
        yield owner, name, _propagating_pool_job
    for cls, name in _stdlib.POOL_THREAD_STARTERS:
        yield _patching.defining_class(cls, name), name, _without_propagation


def install():
    """Make plain threads and thread pools started inside tasks propagate."""
    with _patching.lock:
        if state.enabled:
            return
        for owner, name, make in _targets():
            patch = _patching.MethodPatch(owner, name, make)
            patch.apply()
            _applied.append(patch)
        state.enabled = True


def uninstall():
    """Undo :func:`install`; a no-op when it is not installed."""
    with _patching.lock:
        state.enabled = False  # first: a patch left under someone's wrapper passes through
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
    return state.enabled
