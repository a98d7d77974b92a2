"""Read, push and restore Celery's ``LocalStack`` for the current thread.

Every Celery from 4.3 to 5.7 ships two stack flavours, chosen at import by
``USE_FAST_LOCALS``:

- ``_LocalStack`` (the default): ``{ident: {'stack': [...]}}`` in a ``Local``,
  keyed by thread or greenlet.  Its public ``push``/``top``/``pop`` raise and
  catch ``AttributeError`` on a thread with no entry yet, which costs about
  10 us a push/pop pair: as much as the thread-pool round trip we ride on.
- ``_FastLocalStack``: a ``threading.local`` whose ``push``/``pop`` are bound
  to the per-thread ``stack`` list.

This is the one place that goes below the public API.  An accessor works on
a *target* (what it needs of the stack, found once per capture)::

    target = access.target(stack)
    items = access.read(target)           # tuple, bottom first
    token = access.push(target, items)    # push on this thread's stack
    access.restore(target, token)         # back to exactly what it was

Any other stack type gets the public API (slower, same behaviour).
"""

from celery.utils import threads as _celery_threads


class IdentDictAccess(object):
    """``_LocalStack``: one ``{'stack': list}`` entry per ident in ``__storage__``."""

    @staticmethod
    def target(stack):
        return stack._local

    @staticmethod
    def read(local):
        entry = local.__storage__.get(local.__ident_func__())
        return tuple(entry.get('stack') or ()) if entry else ()

    @staticmethod
    def push(local, items):
        ident = local.__ident_func__()
        entry = local.__storage__.get(ident)
        live = entry.get('stack') if entry else None
        if live is None:
            if items:  # pushing nothing must not create an entry: pop() differs
                local.__storage__[ident] = {'stack': list(items)}
            return ident, None
        saved = live[:]
        live.extend(items)
        return ident, saved

    @staticmethod
    def restore(local, token):
        ident, saved = token
        storage = local.__storage__
        if saved is None:  # the thread had no entry: release it, as pop() would
            storage.pop(ident, None)
            return
        entry = storage.setdefault(ident, {})
        live = entry.get('stack')
        if live is None:  # the target popped the entry away
            entry['stack'] = saved
        else:
            live[:] = saved  # in place: callers may hold the live list


class ThreadLocalListAccess(object):
    """``_FastLocalStack``: ``push``/``pop`` are bound to ``stack``, so edit it in place."""

    @staticmethod
    def target(stack):
        return stack

    @staticmethod
    def read(stack):
        return tuple(stack.stack)

    @staticmethod
    def push(stack, items):
        live = stack.stack
        saved = live[:]
        live.extend(items)
        return saved

    @staticmethod
    def restore(stack, saved):
        stack.stack[:] = saved


class PublicApiAccess(ThreadLocalListAccess):
    """Any other ``LocalStack``: read like the fast one, push and pop through the public API."""

    @staticmethod
    def push(stack, items):
        saved = tuple(stack.stack)
        for item in items:
            stack.push(item)
        return saved

    @staticmethod
    def restore(stack, saved):
        for _ in range(len(stack) - len(saved)):
            stack.pop()
        for item in saved[len(stack) :]:  # the target popped some of ours
            stack.push(item)


_ACCESS_BY_TYPE = {}
for _name, _access in (
    ('_LocalStack', IdentDictAccess),
    ('_FastLocalStack', ThreadLocalListAccess),
):
    _cls = getattr(_celery_threads, _name, None)
    if _cls is not None:
        _ACCESS_BY_TYPE[_cls] = _access
del _name, _access, _cls


def access_for(stack):
    """Return the accessor for ``stack``'s flavour."""
    return _ACCESS_BY_TYPE.get(type(stack), PublicApiAccess)
