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
the one *step* that it runs on every activation::

    push, restore, target, items = plan([(task_stack, tasks), (request_stack, requests)])
    token = push(target, items)    # the stacks now end with the items
    ...
    restore(target, token)         # back to exactly what they were

``_LocalStack``\\ s keyed by the same ident function are pushed together, so
a run asks for the thread's ident once.  Any other stack type gets the public
API (slower, same behaviour).
"""

import warnings

import celery
from celery.utils import threads as _celery_threads

#: The Celery releases the test grid runs: newer ones may move what we read.
TESTED_CELERY = ((4, 3), (5, 7))

if tuple(celery.VERSION[:2]) > TESTED_CELERY[1]:
    warnings.warn(
        'celery_ctxthread is tested with Celery %d.%d to %d.%d and reads Celery internals '
        '(celery._state, LocalStack); Celery %s is newer: check that threads still see '
        'their task, and report what breaks'
        % (TESTED_CELERY[0] + TESTED_CELERY[1] + (celery.__version__,)),
        RuntimeWarning,
        stacklevel=2,
    )


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
    def read(stack):
        local = stack._local
        entry = local.__storage__.get(local.__ident_func__())
        return tuple(entry.get('stack') or ()) if entry else ()

    @staticmethod
    def push(local, items):
        return push_ident_group(((local.__storage__, list(items)),), local.__ident_func__)

    @staticmethod
    def restore(local, token):
        restore_ident_group(((local.__storage__, None),), token)


def push_ident_group(parts, ident_func):
    """Extend the current thread's stack in each ``(storage, items_list)`` part.

    The token is the list of the entries it replaced, then the ident.
    """
    ident = ident_func()
    saved = []
    for storage, items in parts:
        entry = storage.get(ident)
        saved.append(entry)
        if not items:  # pushing nothing must not create an entry: pop() differs
            continue
        # A new list each time: runs in several threads share `items`.
        if entry is None:
            storage[ident] = {'stack': items[:]}
        else:
            storage[ident] = {'stack': (entry.get('stack') or []) + items}
    saved.append(ident)
    return saved


def restore_ident_group(parts, saved):
    ident = saved[-1]
    index = len(parts)
    while index:  # last pushed, first restored
        index -= 1
        entry = saved[index]
        if entry is None:  # the thread had no entry: release it, as pop() would
            parts[index][0].pop(ident, None)
        else:
            parts[index][0][ident] = entry


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


def read(stack):
    """The current thread's items on ``stack``, bottom first, as a tuple."""
    return _ACCESS_BY_TYPE.get(type(stack), PublicApiAccess).read(stack)


def plan(pairs):
    """The one step ``(push, restore, target, items)`` that pushes each pair's items.

    ``token = push(target, items)`` pushes them all, ``restore(target, token)``
    puts every stack back.  None when there is nothing to push.
    """
    ident_func = None
    parts = []  # the _LocalStacks, pushed together
    steps = []  # any other stack, one step each
    for stack, items in pairs:
        access = access_for(stack)
        if access is IdentDictAccess:
            local = stack._local
            ident_func = ident_func or local.__ident_func__
            if local.__ident_func__ is ident_func:
                parts.append((local.__storage__, list(items)))
                continue
        steps.append((access.push, access.restore, access.target(stack), tuple(items)))
    if parts:
        steps.insert(0, (push_ident_group, restore_ident_group, tuple(parts), ident_func))
    if len(steps) > 1:
        return (_push_steps, _restore_steps, tuple(steps), None)
    return steps[0] if steps else None


def _push_steps(steps, _):
    tokens = []
    try:
        for push, _, target, items in steps:
            tokens.append(push(target, items))
    except BaseException:  # a push failed half-way: undo the steps before it
        _restore_steps(steps, tokens)
        raise
    return tokens


def _restore_steps(steps, tokens):
    index = len(tokens)
    while index:  # last pushed, first restored
        index -= 1
        _, restore, target, _ = steps[index]
        restore(target, tokens[index])
