"""Opt-in, process-wide propagation for threads and pools you do not control.

::

    cct.install()      # Thread/Timer.start() and ThreadPoolExecutor.submit() propagate
    cct.installed()    # -> True
    cct.uninstall()    # the stdlib's own methods are back

Both calls are idempotent and thread-safe.  Only two methods change:
``threading.Thread.start`` (subclasses and ``Timer`` inherit it, and those
that override ``run()`` are covered because the thread's bound ``run`` is
wrapped at start) and ``ThreadPoolExecutor.submit`` (each job is wrapped; the
executor's own worker threads are never given a context).  A thread can be
left out with :func:`celery_ctxthread.opt_out`.
"""

import concurrent.futures
import functools
import logging
import threading

from celery_ctxthread._compat import defining_class
from celery_ctxthread.futures import submit_in_context
from celery_ctxthread.threads import start_in_context

logger = logging.getLogger(__name__)

_ORIGINAL_ATTRIBUTE = '__celery_ctxthread_original__'
_lock = threading.Lock()
_originals = {}  # (owner, name) -> the attribute we replaced, while installed


def _patched_start(original):
    @functools.wraps(original)
    def start(self):
        return start_in_context(self, original.__get__(self))

    return start


def _patched_submit(original):
    @functools.wraps(original)
    def submit(*args, **kwargs):  # (self, fn, /, *args, **kwargs), as the stdlib's
        return submit_in_context(original, args, kwargs)

    return submit


# (module, class, method): the class is looked up in its module at install().
_TARGETS = (
    (threading, 'Thread', 'start', _patched_start),
    (concurrent.futures, 'ThreadPoolExecutor', 'submit', _patched_submit),
)


def install():
    """Make plain threads and thread pools started inside tasks propagate."""
    with _lock:
        if _originals:
            return
        for module, class_name, name, make_patch in _TARGETS:
            # Looked up now, not at import: gevent swaps threading.Thread
            # for a subclass that inherits start().
            owner = defining_class(getattr(module, class_name), name)
            original = owner.__dict__[name]
            patched = make_patch(original)
            setattr(patched, _ORIGINAL_ATTRIBUTE, original)
            _originals[(owner, name)] = original
            setattr(owner, name, patched)


def uninstall():
    """Undo :func:`install`; a no-op when it is not installed."""
    with _lock:
        for (owner, name), original in _originals.items():
            current = owner.__dict__.get(name)
            if getattr(current, _ORIGINAL_ATTRIBUTE, None) is original:
                setattr(owner, name, original)
            else:  # restoring now would also remove what was layered on us
                logger.warning(
                    'celery_ctxthread: %s.%s was patched again after install(); '
                    'left in place, so it still propagates',
                    owner.__name__,
                    name,
                )
        _originals.clear()


def installed():
    """Return True while :func:`install` is in effect."""
    return bool(_originals)
