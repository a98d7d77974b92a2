"""Read, push and restore Celery's ``LocalStack``\\ s on the current thread.

The one place that goes below Celery's public API.  Every Celery from 4.3 to
5.7 ships two stack flavours, chosen at import by ``USE_FAST_LOCALS``:

- ``_LocalStack`` (the default): ``{ident: {'stack': [...]}}`` in a ``Local``,
  keyed by thread or greenlet.  Its public ``push``/``top``/``pop`` raise and
  catch ``AttributeError`` on a thread with no entry yet, which costs about
  10 us a push/pop pair: as much as the thread-pool round trip we ride on.
- ``_FastLocalStack``: a ``threading.local`` whose ``push``/``pop`` are bound
  to the per-thread ``stack`` list.

:func:`plan` turns ``(stack, items)`` pairs into the one step a snapshot runs
on every activation::

    step = plan([(task_stack, tasks), (request_stack, requests)])
    token = step.push()      # the stacks now end with the items
    ...
    step.restore(token)      # back to exactly what they were
"""

from celery import _state
from celery.utils import threads as _celery_threads

_IDENT_DICT_STACK = getattr(_celery_threads, '_LocalStack', None)
_LIST_STACK = getattr(_celery_threads, '_FastLocalStack', None)
TASK_STACK = _state._task_stack
_TASK_LOCAL = TASK_STACK._local if type(TASK_STACK) is _IDENT_DICT_STACK else None


def read(stack):
    """The current thread's items on ``stack``, bottom first, as a tuple."""
    if type(stack) is _IDENT_DICT_STACK:  # read without raising and catching
        local = stack._local
        entry = local.__storage__.get(local.__ident_func__())
        return tuple(entry.get('stack') or ()) if entry else ()
    return tuple(stack.stack)


def read_tasks():
    """``(tasks, entry)``: the current thread's tasks, and a dict that lives as long as they do.

    ``entry`` is the thread's own entry in the default flavour's task stack,
    which Celery deletes when it pops the last task; None in the other flavour.
    """
    if _TASK_LOCAL is None:
        return tuple(TASK_STACK.stack), None
    entry = _TASK_LOCAL.__storage__.get(_TASK_LOCAL.__ident_func__())
    return (tuple(entry.get('stack') or ()), entry) if entry else ((), None)


class _IdentDictStacks(object):
    """``_LocalStack``\\ s keyed by one ident function, pushed together.

    A push *replaces* the thread's entry in each with a new one holding the
    longer list, and a restore puts the saved entry object back (or deletes
    the new one): whatever the target did to the stacks in between is dropped
    with it.  ``_LocalStack`` looks its entry up on every call, so nobody
    holds the old one.
    """

    __slots__ = ('ident_func', 'parts')

    def __init__(self, ident_func, parts):
        self.ident_func = ident_func
        self.parts = parts  # ((storage, items as a list), ...)

    def push(self):
        ident = self.ident_func()
        saved = []
        for storage, items in self.parts:
            entry = storage.get(ident)
            saved.append(entry)
            if not items:  # pushing nothing must not create an entry: pop() differs
                continue
            # A new list each time: runs in several threads share `items`.
            if entry is None:
                storage[ident] = {'stack': items[:]}
            else:
                storage[ident] = {'stack': (entry.get('stack') or []) + items}
        saved.append(ident)  # the token: the entries replaced, then the ident
        return saved

    def restore(self, saved):
        ident = saved.pop()
        parts = self.parts
        index = len(saved)
        while index:  # last pushed, first restored
            index -= 1
            entry = saved[index]
            if entry is None:  # the thread had no entry: release it, as pop() would
                parts[index][0].pop(ident, None)
            else:
                parts[index][0][ident] = entry


class _ListStack(object):
    """``_FastLocalStack``: ``push``/``pop`` are bound to the list, so edit it in place."""

    __slots__ = ('items', 'stack')

    def __init__(self, stack, items):
        self.stack = stack
        self.items = items

    def push(self):
        live = self.stack.stack
        saved = live[:]
        live.extend(self.items)
        return saved

    def restore(self, saved):
        self.stack.stack[:] = saved


class _PublicApiStack(_ListStack):
    """Any other ``LocalStack``: read like the fast one, push and pop through the public API."""

    __slots__ = ()

    def push(self):
        saved = tuple(self.stack.stack)
        for item in self.items:
            self.stack.push(item)
        return saved

    def restore(self, saved):
        stack = self.stack
        for _ in range(len(stack) - len(saved)):
            stack.pop()
        for item in saved[len(stack) :]:  # the target popped some of ours
            stack.push(item)


class _Steps(object):
    """Several steps as one; a push that fails half-way undoes the steps before it."""

    __slots__ = ('steps',)

    def __init__(self, steps):
        self.steps = steps

    def push(self):
        tokens = []
        try:
            for step in self.steps:
                tokens.append(step.push())
        except BaseException:
            self.restore(tokens)
            raise
        return tokens

    def restore(self, tokens):
        for step, token in reversed(list(zip(self.steps, tokens))):  # last pushed, first restored
            step.restore(token)


def plan(pairs):
    """The one step that pushes each ``(stack, items)`` pair's items; None for no pairs.

    All of Celery's ``_LocalStack``\\ s share one ident function, so they make
    one group, which asks for the thread's ident once per run.
    """
    ident_func, group, steps = None, [], []
    for stack, items in pairs:
        local = stack._local if type(stack) is _IDENT_DICT_STACK else None
        if local is not None and (ident_func is None or local.__ident_func__ is ident_func):
            ident_func = local.__ident_func__
            group.append((local.__storage__, list(items)))
        elif type(stack) is _LIST_STACK:
            steps.append(_ListStack(stack, tuple(items)))
        else:
            steps.append(_PublicApiStack(stack, tuple(items)))
    if group:
        steps.insert(0, _IdentDictStacks(ident_func, tuple(group)))
    if len(steps) > 1:
        return _Steps(tuple(steps))
    return steps[0] if steps else None
