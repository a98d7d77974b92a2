"""Read, push and restore Celery's ``LocalStack``\\ s on the current thread.

The one place that goes below Celery's public API.  Celery 4.3 to 5.7 ship
two flavours, chosen at import by ``USE_FAST_LOCALS``: ``_LocalStack`` (the
default), ``{ident: {'stack': [...]}}`` in a ``Local``, whose public
``push``/``pop`` raise and catch ``AttributeError`` on a thread with no entry
(4-7 us a pair, twice a pair without: ``bench/stack_pair.py``); and
``_FastLocalStack``, a ``threading.local`` with ``push``/``pop`` bound to its list.

:func:`plan` turns ``(stack, items)`` pairs into the step a snapshot runs::

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


def read_tasks():
    """``(tasks, tops, memo)`` of the current thread, read without raising and catching.

    ``tasks``: the tasks, bottom first.  ``tops``: the request on top of each
    one's ``request_stack`` (None: none).  ``memo``: a dict that lives exactly
    as long as the tasks do (the thread's own entry in the default flavour's
    task stack, which Celery deletes with the last task), or None.
    """
    if _TASK_LOCAL is None:
        tasks, memo, ident_func = tuple(TASK_STACK.stack), None, None
    else:
        ident_func = _TASK_LOCAL.__ident_func__
        ident = ident_func()
        memo = _TASK_LOCAL.__storage__.get(ident)
        tasks = tuple(memo.get('stack') or ()) if memo else ()
    if not tasks:  # outside any task: what everybody else in the process pays
        return (), (), None
    tops = ()
    for task in tasks:
        try:
            stack = task.request_stack
        except AttributeError:  # an unbound task class
            stack = None
        if type(stack) is _IDENT_DICT_STACK:
            local = stack._local
            if local.__ident_func__ is not ident_func:  # never, with Celery's locals
                ident_func, ident = local.__ident_func__, local.__ident_func__()
            entry = local.__storage__.get(ident)
            requests = entry.get('stack') if entry else None
        else:
            requests = stack.stack if stack is not None else None
        tops += (requests[-1] if requests else None,)  # usually one task: no list
    return tasks, tops, memo


class _IdentDictStacks(object):
    """Default-flavour stacks: a push *replaces* the thread's entry in each with
    one holding the longer list, and a restore puts the saved entry back (or
    deletes the new one): whatever the target did in between goes with it.
    ``_LocalStack`` looks its entry up on every call, so nobody holds the old one."""

    __slots__ = ('ident_func', 'parts')

    def __init__(self, ident_func, parts):
        self.ident_func = ident_func  # Celery's locals all share one
        self.parts = parts  # ((storage, items as a list), ...)

    def push(self):
        ident = self.ident_func()
        saved = []
        for storage, items in self.parts:
            entry = storage.get(ident)
            saved.append(entry)
            if items:  # pushing nothing must not create an entry: pop() differs
                # A new list each time: runs in several threads share `items`.
                storage[ident] = {
                    'stack': (entry.get('stack') or []) + items if entry else items[:]
                }
        saved.append(ident)  # the token: the entries replaced, then the ident
        return saved

    def restore(self, saved):
        ident, parts = saved[-1], self.parts
        index = len(parts)
        while index:  # an index walk: cheaper than zip() or enumerate() here
            index -= 1
            if saved[index] is None:  # the thread had no entry: release it, as pop() would
                parts[index][0].pop(ident, None)
            else:
                parts[index][0][ident] = saved[index]


class _ListStacks(object):
    """``_FastLocalStack``\\ s: ``push``/``pop`` are bound to the list, so edit it in place."""

    __slots__ = ('parts',)

    def __init__(self, parts):
        self.parts = parts  # ((stack, items), ...)

    def push(self):
        saved = []
        for stack, items in self.parts:
            live = stack.stack
            saved.append(live[:])
            live.extend(items)
        return saved

    def restore(self, saved):
        for (stack, _), items in zip(self.parts, saved):
            stack.stack[:] = items


class _PublicApiStacks(_ListStacks):
    """Any other mix of stacks: read ``.stack``, push and pop through the public API."""

    __slots__ = ()

    def push(self):
        saved = []
        try:
            for stack, items in self.parts:
                saved.append(tuple(stack.stack))
                for item in items:
                    stack.push(item)
        except BaseException:  # interrupted half-way: undo what was pushed
            self.restore(saved)
            raise
        return saved

    def restore(self, saved):
        for (stack, _), items in zip(self.parts, saved):
            for _ in range(len(stack) - len(items)):
                stack.pop()
            for item in items[len(stack) :]:  # the target popped some of ours
                stack.push(item)


def plan(pairs):
    """The one step that pushes each ``(stack, items)`` pair's items."""
    ident_funcs, by_entry, listed, public = set(), [], 0, []
    for stack, items in pairs:
        if type(stack) is _IDENT_DICT_STACK:
            ident_funcs.add(stack._local.__ident_func__)
            by_entry.append((stack._local.__storage__, list(items)))
        listed += type(stack) is _LIST_STACK
        public.append((stack, tuple(items)))
    if len(by_entry) == len(pairs) and len(ident_funcs) == 1:  # Celery's locals share one
        return _IdentDictStacks(ident_funcs.pop(), tuple(by_entry))
    return (_ListStacks if listed == len(pairs) else _PublicApiStacks)(tuple(public))
