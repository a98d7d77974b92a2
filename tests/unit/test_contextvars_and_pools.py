"""contextvars by identity, and the stdlib pools' own long-lived threads under install().

Every thread and job runs in exactly the context ``contextvars.copy_context()``
would have given at its ``start()``/``submit()``: a snapshot never compares
anyone's values, so ``__eq__`` is never called.  Under :func:`install` the
threads a pool starts for itself carry no task, whichever task happened to
create the pool: its jobs each see their own submitter, and the first task's
request is not kept alive by the pool.
"""

from __future__ import absolute_import

import gc
import multiprocessing.dummy
import multiprocessing.pool
import sys
import threading
import time
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import celery_ctxthread as cct
from tests.conftest import contextvars, needs_contextvars
from tests.helpers.tasks_inprocess import current_id, other, probe, running

TIMEOUT = 10


def wrapped_threads(threads):
    """The threads whose run is our wrapper: they would run in a captured context."""
    return [t for t in threads if type(t.__dict__.get('run')).__name__ == '_CallInContext']


# --------------------------------------------------- contextvars by identity

if contextvars is not None:
    box = contextvars.ContextVar('box')
    value = contextvars.ContextVar('value')


def put_in_box(index):
    time.sleep(0.02)  # every start()/submit() of the loop has happened by now
    box.get().append(index)


def start_thread(fn, index):
    thread = cct.TaskThread(target=fn, args=(index,))
    thread.start()
    return thread.join


def start_timer(fn, index):
    timer = cct.TaskTimer(0.01, fn, args=(index,))
    timer.start()
    return timer.join


def start_plain_thread(fn, index):  # under install()
    thread = threading.Thread(target=fn, args=(index,))
    thread.start()
    return thread.join


def start_with_submit(fn, index):
    future = cct.submit(fn, index)
    return lambda: future.result(TIMEOUT)


def call_wrapped(fn, index):
    wrapped = cct.wrap(fn)
    thread = threading.Thread(target=wrapped, args=(index,))
    thread.start()
    return thread.join


def in_copy_of_context(fn, index):
    """The reference: what copy_context() gives a thread started here."""
    thread = threading.Thread(target=contextvars.copy_context().run, args=(fn, index))
    thread.start()
    return thread.join


STARTERS = [
    pytest.param(in_copy_of_context, False, id='copy_context'),
    pytest.param(start_thread, False, id='TaskThread'),
    pytest.param(start_timer, False, id='TaskTimer'),
    pytest.param(start_with_submit, False, id='submit'),
    pytest.param(call_wrapped, False, id='wrap'),
    pytest.param(start_plain_thread, True, id='install-Thread'),
]


def fill_boxes(start_one, count=4):
    """The box example: each start() sees the box that was set just before it."""
    boxes, waits = [], []
    with running(probe, 'id'):
        for index in range(count):
            new_box = []  # equal to every other new box, never the same object
            box.set(new_box)
            boxes.append(new_box)
            waits.append(start_one(put_in_box, index))
    for wait in waits:
        wait()
    return boxes


@needs_contextvars
@pytest.mark.parametrize('start_one, under_install', STARTERS)
def test_each_thread_gets_the_box_set_before_its_start(start_one, under_install, request):
    if under_install:
        request.getfixturevalue('installed')
    boxes = contextvars.copy_context().run(fill_boxes, start_one)
    assert boxes == [[0], [1], [2], [3]]


def submit_to(pool):
    def start_one(fn, index):
        future = pool.submit(fn, index)
        return lambda: future.result(TIMEOUT)

    return start_one


@needs_contextvars
@pytest.mark.parametrize('workers', [1, 4])
def test_each_executor_job_gets_the_box_set_before_its_submit(workers):
    with cct.TaskThreadPoolExecutor(max_workers=workers) as pool:
        boxes = contextvars.copy_context().run(fill_boxes, submit_to(pool))
    assert boxes == [[0], [1], [2], [3]]


@needs_contextvars
def test_each_stdlib_executor_job_gets_its_box_under_install(installed):
    with ThreadPoolExecutor(max_workers=2) as pool:
        boxes = contextvars.copy_context().run(fill_boxes, submit_to(pool))
    assert boxes == [[0], [1], [2], [3]]


@needs_contextvars
def test_each_thread_pool_job_gets_its_box_under_install(installed):
    pool = multiprocessing.pool.ThreadPool(2)
    try:

        def start_one(fn, index):
            result = pool.apply_async(fn, (index,))
            return lambda: result.get(TIMEOUT)

        boxes = contextvars.copy_context().run(fill_boxes, start_one)
    finally:
        pool.terminate()
        pool.join()
    assert boxes == [[0], [1], [2], [3]]


class RaisingEq(object):
    """A value whose comparison must never be needed."""

    calls = 0

    def __eq__(self, other):
        type(self).calls += 1
        raise AssertionError('__eq__ was called')

    def __ne__(self, other):
        type(self).calls += 1
        raise AssertionError('__ne__ was called')

    __hash__ = object.__hash__


class Ambiguous(object):
    """Like a NumPy array: its truth value raises."""

    def __bool__(self):
        raise ValueError('the truth value of this object is ambiguous')

    __nonzero__ = __bool__  # Python 2


class AmbiguousEq(object):
    """Like a NumPy array: == returns an object whose truth value raises."""

    calls = 0

    def __eq__(self, other):
        type(self).calls += 1
        return Ambiguous()

    def __ne__(self, other):
        type(self).calls += 1
        return Ambiguous()

    __hash__ = object.__hash__


def saw_value():
    return value.get()


def start_and_see(start_one, values):
    """In a task: set each value, start one thread/job after each; what each saw."""
    waits = []
    with running(probe, 'id'):
        for item in values:
            value.set(item)
            waits.append(start_one(item))
    return [wait() for wait in waits]


def thread_seeing():
    def start_one(item):
        seen = []
        thread = cct.TaskThread(target=lambda: seen.append(saw_value()))
        thread.start()

        def wait():
            thread.join(TIMEOUT)
            return seen[0]

        return wait

    return start_one


@needs_contextvars
@pytest.mark.parametrize('kind', [RaisingEq, AmbiguousEq], ids=['raises', 'ambiguous'])
@pytest.mark.parametrize('entry', ['TaskThread', 'executor', 'install-executor', 'install-Thread'])
def test_start_and_submit_never_compare_contextvar_values(kind, entry, request):
    kind.calls = 0
    values = [kind() for _ in range(3)]
    if entry.startswith('install'):
        request.getfixturevalue('installed')
    pool = None
    if entry == 'TaskThread':
        start_one = thread_seeing()
    elif entry == 'install-Thread':

        def start_one(item):
            seen = []
            thread = threading.Thread(target=lambda: seen.append(saw_value()))
            thread.start()
            return lambda: (thread.join(TIMEOUT), seen[0])[1]

    else:
        pool = (cct.TaskThreadPoolExecutor if entry == 'executor' else ThreadPoolExecutor)(2)

        def start_one(item):
            future = pool.submit(saw_value)
            return lambda: future.result(TIMEOUT)

    try:
        seen = contextvars.copy_context().run(start_and_see, start_one, values)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    assert kind.calls == 0
    assert len(seen) == len(values)
    assert all(s is v for s, v in zip(seen, values))


# ------------------------------ multiprocessing.pool.ThreadPool under install()

POOL_FACTORIES = [
    pytest.param(multiprocessing.pool.ThreadPool, id='ThreadPool'),
    pytest.param(multiprocessing.dummy.Pool, id='dummy.Pool'),
]


def ids_of_each_job_method(pool):
    """What a job sees, submitted through each of the pool's job methods."""

    def job(*ignored):
        return current_id()

    seen = {
        'apply_async': pool.apply_async(job).get(TIMEOUT),
        'apply': pool.apply(job),
        'map': pool.map(job, range(4)),
        'map_async': pool.map_async(job, range(4)).get(TIMEOUT),
        'imap': list(pool.imap(job, range(4))),
        'imap_unordered': list(pool.imap_unordered(job, range(4))),
    }
    if hasattr(pool, 'starmap'):  # Python 3.3+
        seen['starmap'] = pool.starmap(job, [(1,), (2,)])
        seen['starmap_async'] = pool.starmap_async(job, [(1,), (2,)]).get(TIMEOUT)
    return seen


def expected_ids(seen, task_id):
    return {
        name: [task_id] * len(value) if isinstance(value, list) else task_id
        for name, value in seen.items()
    }


@pytest.mark.parametrize('make_pool', POOL_FACTORIES)
def test_thread_pool_created_in_a_task_serves_each_submitter(make_pool, installed):
    before = set(threading.enumerate())
    initialized = []  # what each worker thread sees when it starts
    callbacks = []  # callbacks run on the pool's result-handler thread

    def initializer():
        initialized.append(current_id())

    with running(probe, 'task-a'):
        pool = make_pool(2, initializer)  # created lazily, by the first task that needs it
        request_a = weakref.ref(probe.request)
        try:
            first = ids_of_each_job_method(pool)
            pool.apply_async(current_id, callback=lambda _: callbacks.append(current_id())).get(
                TIMEOUT
            )
        except BaseException:
            pool.terminate()
            raise
    try:
        own_threads = set(threading.enumerate()) - before
        assert own_threads, 'the pool started no threads'
        assert first == expected_ids(first, 'task-a')
        # The pool's own threads (workers and handlers) carry no task.
        assert wrapped_threads(own_threads) == []
        assert initialized == [None, None]
        assert callbacks == [None]

        with running(other, 'task-b'):
            second = ids_of_each_job_method(pool)
        assert second == expected_ids(second, 'task-b')
        outside = ids_of_each_job_method(pool)
        assert outside == expected_ids(outside, None)

        # Task A has ended: the pool, still alive and serving, does not keep its request.
        assert pool.apply_async(current_id).get(TIMEOUT) is None
        gc.collect()
        assert request_a() is None
        assert all(thread.is_alive() for thread in own_threads)
    finally:
        pool.terminate()
        pool.join()


@pytest.mark.parametrize('make_pool', POOL_FACTORIES)
def test_thread_pool_jobs_propagate_only_while_installed(make_pool, installed):
    pool = make_pool(1)
    try:
        with running(probe, 'abc'):
            assert pool.apply_async(current_id).get(TIMEOUT) == 'abc'
        cct.uninstall()
        with running(probe, 'abc'):
            assert pool.apply_async(current_id).get(TIMEOUT) is None  # the stdlib's again
            assert pool.apply_async(cct.wrap(current_id)).get(TIMEOUT) == 'abc'
    finally:
        pool.terminate()
        pool.join()


# ----------------------------------------- ProcessPoolExecutor's helper threads


@pytest.mark.skipif(sys.platform == 'win32', reason='fork-based process pool')
def test_process_pool_helper_threads_carry_no_task(installed):
    before = set(threading.enumerate())
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        with running(probe, 'task-a'):
            request_a = weakref.ref(probe.request)
            # The first submit() starts the manager thread and the call queue's feeder.
            assert executor.submit(pow, 2, 5).result(30) == 32
        helpers = set(threading.enumerate()) - before
        assert helpers, 'the executor started no threads'
        assert wrapped_threads(helpers) == []
        assert executor.submit(pow, 3, 2).result(30) == 9
        gc.collect()
        assert request_a() is None  # while the executor and its threads are alive
        assert any(thread.is_alive() for thread in helpers)
    finally:
        executor.shutdown(wait=True)


def test_multiprocessing_queue_feeder_carries_no_task(installed):
    import multiprocessing

    before = set(threading.enumerate())
    queue = multiprocessing.Queue()
    try:
        with running(probe, 'task-a'):
            request_a = weakref.ref(probe.request)
            queue.put('item')  # the first put() starts the queue's feeder thread
        assert queue.get(timeout=TIMEOUT) == 'item'
        feeders = set(threading.enumerate()) - before
        assert feeders, 'the queue started no feeder thread'
        assert wrapped_threads(feeders) == []
        gc.collect()
        assert request_a() is None  # while the queue and its feeder are alive
    finally:
        queue.close()
        queue.join_thread()


# ------------------------------------------------ other processes: not propagated


def forks():
    if sys.platform == 'win32':
        return False
    import multiprocessing

    get_start_method = getattr(multiprocessing, 'get_start_method', None)  # Python 3.4+
    return get_start_method is None or get_start_method() == 'fork'


def test_process_pool_jobs_do_not_see_the_submitting_task(installed):
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        assert executor.submit(current_id).result(30) is None  # its process starts here
        with running(probe, 'abc'):
            assert executor.submit(current_id).result(30) is None  # only arguments travel
    finally:
        executor.shutdown(wait=True)


@pytest.mark.skipif(not forks(), reason='processes are forked only with the fork start method')
def test_a_process_forked_inside_a_task_keeps_a_copy_of_that_task():
    """Not ours: fork copies Celery's stacks as the forking thread had them.

    Install or not, every job of that process then sees the task that happened
    to start it: start process pools outside tasks.
    """
    executor = ProcessPoolExecutor(max_workers=1)
    try:
        with running(probe, 'task-a'):
            assert executor.submit(current_id).result(30) == 'task-a'  # forked here
        with running(other, 'task-b'):
            assert executor.submit(current_id).result(30) == 'task-a'
        assert executor.submit(current_id).result(30) == 'task-a'
    finally:
        executor.shutdown(wait=True)
