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
"""

import concurrent.futures
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
