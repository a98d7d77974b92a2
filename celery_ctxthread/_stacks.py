"""Read, push and restore Celery's ``LocalStack`` for the current thread.

Every Celery from 4.3 to 5.7 ships two stack flavours, chosen at import by
``USE_FAST_LOCALS``:

- ``_LocalStack`` (the default): ``{ident: {'stack': [...]}}`` in a ``Local``,
  keyed by thread or greenlet.  Its public ``push``/``top``/``pop`` raise and
  catch ``AttributeError`` on a thread with no entry yet, which costs about
  10 us a push/pop pair: as much as the thread-pool round trip we ride on.
- ``_FastLocalStack``: a ``threading.local`` whose ``push``/``pop`` are bound
  to the per-thread ``stack`` list.

This is the one place that goes below the public API.  A snapshot reads its
stacks with :func:`read`, and :func:`plan` turns ``(stack, items)`` pairs into
*steps* that it runs on every activation::

    steps = plan([(task_stack, tasks), (request_stack, requests)])
    tokens = [push(target, items) for push, _, target, items in steps]
    ...                                    # the stacks now end with the items
    for (_, restore, target, _), token in reversed(list(zip(steps, tokens))):
        restore(target, token)             # back to exactly what they were

``_LocalStack``\\ s keyed by the same ident function share one step, so a run
asks for the thread's ident once.  Any other stack type gets the public API
(slower, same behaviour).
"""

from celery.utils import threads as _celery_threads


class IdentDictAccess(object):
    """``_LocalStack``: one ``{'stack': list}`` entry per ident in ``__storage__``.

    A push *replaces* the thread's entry with a new one holding the longer
    list, and a restore puts the saved entry object back (or deletes the new
    one): whatever the target did to the stack in between is dropped with it.
    ``_LocalStack`` looks its entry up on every call, so nobody holds the old one.
    """

    @staticmethod
    def target(stack):
        return stack._local

    @staticmethod
    def read(local):
        entry = local.__storage__.get(local.__ident_func__())
        return tuple(entry.get('stack') or ()) if entry else ()

    @staticmethod
    def read_stack(stack):  # read(target(stack)) in one call: capture() runs it per stack
        local = stack._local
        entry = local.__storage__.get(local.__ident_func__())
        return tuple(entry.get('stack') or ()) if entry else ()

    @staticmethod
    def push(local, items):
        return push_ident_group(local.__ident_func__, ((local.__storage__, list(items)),))

    @staticmethod
    def restore(local, token):
        restore_ident_group(local.__ident_func__, token)


def push_ident_group(ident_func, parts):
    """Extend the current thread's stack in each ``(storage, items_list)`` part."""
    ident = ident_func()
    saved = []
    for storage, items in parts:
        entry = storage.get(ident)
        saved.append(entry)
        if not items:  # pushing nothing must not create an entry: pop() differs
            continue
        stack = entry.get('stack') if entry else None
        # A new list each time: runs in several threads share `items`.
        storage[ident] = {'stack': stack + items if stack else items[:]}
    return ident, parts, saved


def restore_ident_group(_, token):
    ident, parts, saved = token
    index = len(saved)
    while index:
        index -= 1
        entry = saved[index]
        storage = parts[index][0]
        if entry is None:  # the thread had no entry: release it, as pop() would
            storage.pop(ident, None)
        else:
            storage[ident] = entry


class ThreadLocalListAccess(object):
    """``_FastLocalStack``: ``push``/``pop`` are bound to ``stack``, so edit it in place."""

    @staticmethod
    def target(stack):
        return stack

    @staticmethod
    def read(stack):
        return tuple(stack.stack)

    read_stack = read

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


def read(stack):
    """The current thread's items on ``stack``, bottom first, as a tuple."""
    return _ACCESS_BY_TYPE.get(type(stack), PublicApiAccess).read_stack(stack)


def plan(pairs):
    """The steps ``(push, restore, target, items)`` that push each pair's items."""
    steps = []
    groups = {}  # ident function -> the parts of its step
    for stack, items in pairs:
        access = access_for(stack)
        target = access.target(stack)
        if access is not IdentDictAccess:
            steps.append((access.push, access.restore, target, tuple(items)))
            continue
        parts = groups.get(target.__ident_func__)
        if parts is None:
            parts = groups[target.__ident_func__] = []
            steps.append((push_ident_group, restore_ident_group, target.__ident_func__, parts))
        parts.append((target.__storage__, list(items)))
    return tuple(steps)
