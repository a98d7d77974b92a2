"""The few names that differ between Python 2.7 and 3.x, and one lookup both patchers share."""

import threading

try:  # Python 3.7+, or the backport on 3.6
    from contextvars import copy_context
except ImportError:  # Python 2.7: nothing to propagate
    copy_context = None

# Python 2.7's ``threading.Timer`` is a factory function; the class is private.
TimerBase = threading.Timer if isinstance(threading.Timer, type) else threading._Timer


def set_exception(future, exc, traceback):
    """``future.set_exception``, keeping the traceback on Python 2.7's ``futures``."""
    if hasattr(future, 'set_exception_info'):
        future.set_exception_info(exc, traceback)
    else:
        future.set_exception(exc)


def defining_class(cls, name):
    """The class in ``cls``'s MRO that defines ``name``: the one to patch.

    Patching there covers every subclass that inherits it, such as gevent's
    monkey-patched ``threading.Thread`` or each result backend.
    """
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    raise AttributeError('%s has no %s to patch' % (cls.__name__, name))
