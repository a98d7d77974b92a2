"""What :func:`~celery_ctxthread.install` has put in place: one place, one owner.

:mod:`celery_ctxthread.patch` alone turns it on and off and registers its
submit wrappers; the executors and the patched methods only ask::

    state.enabled                       # install() is in force
    run_as_pool_code(submit, args, {})  # threads started meanwhile are the pool's own
    inside_pool_code()                  # ... what it sets, per thread
    wrapped_by_others(submit)           # someone else's submit wrapper sits below ours
"""

from types import MethodType

from celery_ctxthread._stdlib import STDLIB_SUBMIT


class _State(object):
    enabled = False  # set by patch.install() and patch.uninstall(), under their lock


state = _State()


try:  # the ident threading.local is keyed by: a greenlet's under gevent's patching
    from threading import get_ident as _get_ident
except ImportError:  # Python 2.7
    from thread import get_ident as _get_ident

# The idents of the threads on which a pool's own code runs now (an executor's
# submit(), a ThreadPool being built): the threads started then are the pool's
# workers and helpers, which outlive the job and must never keep its context,
# and a submit() reached then is already wrapped by ours.  A set of idents, not
# a threading.local: a look-up costs a third of a local's attribute read, and
# every submit() sets and clears it.
_pool_code_threads = set()


def inside_pool_code():
    """Whether a pool's own code is running on this thread (see ``run_as_pool_code``)."""
    return _get_ident() in _pool_code_threads


def run_as_pool_code(method, args, kwargs):
    """``method(*args, **kwargs)``, with every thread it starts left without a context."""
    ident = _get_ident()
    if ident in _pool_code_threads:  # nested: the outermost call clears it
        return method(*args, **kwargs)
    _pool_code_threads.add(ident)  # a set's add and discard are atomic
    try:
        return method(*args, **kwargs)
    finally:
        _pool_code_threads.discard(ident)


# install()'s own submit wrappers, which pass our jobs through untouched.
# Found by identity: functools.wraps copies attributes onto others' wrappers.
# Each maps to the code it was made with: ddtrace wraps a function by giving
# it new code in place, and then theirs runs around ours.
_passing_submits = {}  # id -> the function's code
_passing_kept = []  # the functions, kept alive so that each id stays its own


def register_passing_submit(function):
    """Note one of install()'s submit wrappers (patch.py calls this)."""
    _passing_kept.append(function)
    _passing_submits[id(function)] = function.__code__


def wrapped_by_others(submit):
    """Whether anyone but us wraps ``submit`` (bound): their job wrappers run around ours."""
    function = submit.__func__ if type(submit) is MethodType else None
    while function is not STDLIB_SUBMIT:
        code = _passing_submits.get(id(function))  # None for anyone's but ours, and for None
        if code is None or code is not function.__code__:
            return True
        function = function.__wrapped__
    return False
