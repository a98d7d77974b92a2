"""Everything that relies on the standard library's private names: the one
module to check when a Python release moves them.

- Python 2.7's ``threading.Timer`` is a factory function; the class is the
  private ``threading._Timer``.
- ``ThreadPoolExecutor.submit``: the stdlib's own, even when someone wrapped it
  before we were imported (found through ``__wrapped__``).
- ``multiprocessing.pool.Pool``: ``map()``, ``starmap()`` and their ``_async``
  forms all go through the private ``_map_async`` (3.x; ``map_async`` on 2.7).
- ``multiprocessing.queues.Queue._start_thread`` starts a queue's feeder thread.
- ``threading._active``: the running threads by ident.
- ``WeakValueDictionary.data``: its weak references, read in one step.
- ``ThreadPoolExecutor._work_queue``, and what its work items call: ``fn``
  (up to 3.13) or ``task[0]`` (3.14 keeps ``(fn, args, kwargs)`` as the task).
"""

import concurrent.futures
import concurrent.futures.thread
import multiprocessing.pool
import multiprocessing.queues
import threading

TimerBase = threading.Timer if isinstance(threading.Timer, type) else threading._Timer


def _unwrapped(function):
    while hasattr(function, '__wrapped__'):  # through Sentry's, OpenTelemetry's, ours
        function = function.__wrapped__
    return function


STDLIB_SUBMIT = _unwrapped(concurrent.futures.ThreadPoolExecutor.__dict__['submit'])

ThreadPool = multiprocessing.pool.ThreadPool
#: The ``Pool`` methods whose first argument is a job (``apply()`` goes through ``apply_async()``).
POOL_JOB_METHODS = (
    'apply_async',
    '_map_async' if hasattr(multiprocessing.pool.Pool, '_map_async') else 'map_async',
    'imap',
    'imap_unordered',
)
#: ``(class, method)``: where the stdlib's pools start their own long-lived threads.
POOL_THREAD_STARTERS = (
    (ThreadPool, '__init__'),
    (concurrent.futures.ProcessPoolExecutor, 'submit'),
    (multiprocessing.queues.Queue, '_start_thread'),
)


def thread_named(ident):
    """The name of the running thread ``ident`` (None: not a running thread's)."""
    thread = threading._active.get(ident)
    return thread.name if thread is not None else None


def weak_values_now(mapping):
    """The live values of WeakValueDictionary ``mapping``, read without iterating it.

    ``list()`` of its inner dict's references is one step under the GIL, so it is
    safe in a signal handler that interrupted a thread changing ``mapping``.
    """
    refs = list(mapping.data.values()) if hasattr(mapping, 'data') else []
    values = (ref() for ref in refs)
    return [value for value in values if value is not None]


# What a ThreadPoolExecutor work item calls: 3.14 keeps (fn, args, kwargs) as its task.
_WORK_ITEM_HAS_TASK = 'task' in concurrent.futures.thread._WorkItem.__init__.__code__.co_varnames
_cancelling_queue_types = {}  # (the stdlib's queue type, refuses) -> its subclass


def cancel_on_take(executor, refuses):
    """Give ``executor`` (a ThreadPoolExecutor that has started no worker yet) a
    work queue of the same type that asks ``refuses(fn)`` of each work item a
    worker takes, and cancels the item's future if so: the worker then skips
    it, as after ``Future.cancel()``."""
    base = executor._work_queue.__class__  # Python 2.7: an old-style Queue.Queue
    key = (base, refuses)
    if key not in _cancelling_queue_types:
        _cancelling_queue_types[key] = _cancelling_queue_type(base, refuses)
    executor._work_queue = _cancelling_queue_types[key]()


def _cancelling_queue_type(base, refuses):
    # A worker takes with get(block=True) (3.14: after get_nowait()); None is
    # the stdlib's wake-up at shutdown.
    base_get = base.get
    if _WORK_ITEM_HAS_TASK:

        def get(self, block=True, timeout=None):
            item = base_get(self, block, timeout)
            if item is not None and refuses(item.task[0]):
                item.future.cancel()
            return item
    else:

        def get(self, block=True, timeout=None):
            item = base_get(self, block, timeout)
            if item is not None and refuses(item.fn):
                item.future.cancel()
            return item

    def get_nowait(self):
        return self.get(False)

    return type(base)('Cancelling' + base.__name__, (base,), {'get': get, 'get_nowait': get_nowait})
