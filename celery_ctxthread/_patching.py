"""Replace a method on a class, and put it back: the one place that patches.

Both :func:`celery_ctxthread.install` and the late-update guard go through
:class:`MethodPatch`::

    patch = MethodPatch(threading.Thread, 'start', make_start)
    patch.apply()      # Thread.start is now make_start(original)
    patch.restore()    # the original is back, unless someone wrapped ours since
                       # (on top, or by rewriting ours in place)

The original is always called through the descriptor protocol, as attribute
access would call it (:func:`bound`), so it may be a plain function or anyone
else's wrapper of one (OpenTelemetry's ``wrapt.FunctionWrapper``, Sentry's
closure).
"""

import inspect
import threading

_MISSING = object()
lock = threading.RLock()


def defining_class(cls, name):
    """The class in ``cls``'s MRO that defines ``name``: the one to patch.

    Patching there covers every subclass that inherits it, such as gevent's
    monkey-patched ``threading.Thread`` or each result backend.
    """
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass
    raise AttributeError('%s has no %s to patch' % (cls.__name__, name))


def binder(original):
    """``bind(instance)``: ``original`` (from a class ``__dict__``) as ``instance.name`` gives it.

    Looked up once, when patching: the wrappers bind on every call.
    """
    get = getattr(type(original), '__get__', None)
    if get is None:  # a callable that is not a descriptor is not bound by attribute access
        return lambda instance: original
    return lambda instance: get(original, instance, type(instance))


def argument_position(function, name):
    """Where ``name`` stands among ``function``'s positional arguments after ``self``."""
    try:
        names = list(inspect.signature(function).parameters)
    except AttributeError:  # Python 2.7
        names = inspect.getargspec(function).args
    return names.index(name) - 1


class MethodPatch(object):
    """``owner.name`` replaced by ``make(original)`` while applied.

    ``restore()`` puts the original back only where ours is still the
    attribute, unchanged: taking ours out from under a wrapper that someone
    layered on top would take theirs out too.  Some wrap a function in place
    instead (ddtrace swaps its ``__code__`` for its own and keeps a copy of
    ours to call): the attribute is still ours, but theirs runs in it, so that
    counts as wrapped on top as well.  Ours then stays, and the wrapper
    ``make`` built must act exactly like the original while the caller says so
    (``install()`` checks a flag; the guard never restores).
    """

    def __init__(self, owner, name, make):
        self.owner = owner
        self.name = name
        self.make = make
        self.original = self.patched = self.code = None

    def apply(self):
        self.original = self.owner.__dict__.get(self.name, _MISSING)
        if self.original is _MISSING:
            raise AttributeError('%s.%s is not defined there' % (self.owner.__name__, self.name))
        self.patched = self.make(self.original)
        self.patched.__wrapped__ = self.original  # Python 2.7's functools.wraps does not set it
        self.code = getattr(self.patched, '__code__', None)
        setattr(self.owner, self.name, self.patched)

    def is_on_top(self):
        """Whether ours is the attribute, as we made it: nobody wrapped it since."""
        patched = self.patched
        return (
            patched is not None
            and self.owner.__dict__.get(self.name) is patched
            and not rewritten(patched, self.code, self.original)
        )

    def restore(self):
        """Put the original back; False when someone's wrapper sits on ours."""
        on_top = self.is_on_top()
        if on_top:
            setattr(self.owner, self.name, self.original)
        self.original = self.patched = self.code = None
        return on_top


def rewritten(function, code, wrapped):
    """Whether someone changed ``function`` in place since it had ``code`` and
    wrapped ``wrapped``: a new ``__code__`` (ddtrace's wrapping), or a
    ``__wrapped__`` that is no longer ours.  Compared by identity."""
    return (
        getattr(function, '__code__', None) is not code
        or getattr(function, '__wrapped__', None) is not wrapped
    )
