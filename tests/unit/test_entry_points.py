"""TaskThread, TaskTimer, TaskThreadPoolExecutor, submit() and install(), in-process."""

from __future__ import absolute_import

import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from celery import _state

import celery_ctxthread as cct
from tests.helpers.tasks_inprocess import observe, other, probe, running, thread_state


def started(thread):
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), 'thread did not finish within 10 s'
    return thread


class Recorder(object):
    """A thread target that keeps what it saw."""

    def __init__(self):
        self.seen = []

    def __call__(self, *args):
        self.seen.append(observe()['current_id'])
        return observe()['current_id']


@pytest.mark.parametrize(
    'make_thread',
    [
        lambda target: cct.TaskThread(target=target),
        lambda target: cct.TaskTimer(0.01, target),
    ],
    ids=['TaskThread', 'TaskTimer'],
)
def test_threads_run_in_the_starting_task(make_thread):
    record = Recorder()
    thread = make_thread(record)
    with running(probe, 'abc'):
        started(thread)
    assert record.seen == ['abc']


def test_context_is_taken_at_start_not_at_construction():
    record = Recorder()
    thread = cct.TaskThread(target=record)
    with running(probe, 'started-here'):
        started(thread)
    assert record.seen == ['started-here']


def test_subclass_that_overrides_run_is_covered():
    class Worker(cct.TaskThread):
        def run(self):
            self.seen = observe()['current_id']

    with running(probe, 'abc'):
        thread = started(Worker())
    assert thread.seen == 'abc'


def test_outside_a_task_threads_are_the_stdlib_ones():
    record = Recorder()
    thread = started(cct.TaskThread(target=record, name='plain-name', args=(1,)))
    assert record.seen == [None] and thread.name == 'plain-name'
    assert 'run' not in thread.__dict__  # nothing was wrapped


def test_run_without_start_is_the_stdlib_run():
    record = Recorder()
    with running(probe, 'abc'):
        cct.TaskThread(target=record).run()  # same thread, so it sees the task anyway
    assert record.seen == ['abc']
    assert _state.get_current_task() is None


def test_starting_twice_raises_like_the_stdlib():
    with running(probe, 'abc'):
        thread = started(cct.TaskThread(target=Recorder()))
        with pytest.raises(RuntimeError):
            thread.start()


def test_a_finished_thread_keeps_no_task_alive():
    with running(probe, 'abc'):
        thread = started(cct.TaskThread(target=Recorder()))
    wrapper = thread.__dict__['run']
    assert wrapper.context is None and wrapper.fn is None


def test_non_callable_target_fails_in_run_like_the_stdlib():
    class Catching(cct.TaskThread):
        def run(self):
            try:
                super(Catching, self).run()
            except TypeError as exc:
                self.error = exc

    with running(probe, 'abc'):
        thread = started(Catching(target=42))  # start() accepts it, as the stdlib does
    assert 'not callable' in str(thread.error)


def test_executor_gives_each_job_its_submitters_context_and_workers_stay_clean():
    pool = cct.TaskThreadPoolExecutor(max_workers=2)
    try:
        with running(probe, 'first'):
            first = pool.submit(observe)
        with running(other, 'second'):
            second = list(pool.map(lambda _: observe(), range(4)))
        later = [pool.submit(observe) for _ in range(4)]
        assert first.result(10)['current_id'] == 'first'
        assert [seen['current_id'] for seen in second] == ['second'] * 4
        assert [f.result(10)['current_id'] for f in later] == [None] * 4
        assert all(f.result(10)['current_task'] is None for f in later)
        assert pool.submit(thread_state).result(10)[:3] == [[], [], []]
    finally:
        pool.shutdown(wait=True)


def test_map_takes_the_context_of_its_caller_once_and_still_goes_through_submit():
    class Counting(cct.TaskThreadPoolExecutor):
        submitted = 0

        def submit(self, fn, *args, **kwargs):  # a subclass's own submit still sees map's jobs
            Counting.submitted += 1
            return super(Counting, self).submit(fn, *args, **kwargs)

    with Counting(max_workers=2) as pool:
        with running(probe, 'mapper'):
            results = pool.map(lambda index: (index, observe()['current_id']), range(5))
        # Iterated after the task left: the jobs keep the context of map()'s caller.
        assert list(results) == [(index, 'mapper') for index in range(5)]
        assert Counting.submitted == 5
        assert list(pool.map(lambda _: observe()['current_id'], range(2))) == [None, None]
        assert pool.submit(thread_state).result(10)[:3] == [[], [], []]


def test_a_job_from_map_called_directly_runs_in_its_context():
    """A subclass whose submit() calls the job itself, later, gets map's wrapper: it propagates."""

    class Deferred(cct.TaskThreadPoolExecutor):
        def __init__(self):
            super(Deferred, self).__init__(max_workers=1)
            self.queued = []

        def submit(self, fn, *args, **kwargs):
            future = Future()
            self.queued.append(lambda: future.set_result(fn(*args, **kwargs)))
            return future

    pool = Deferred()
    with running(probe, 'mapper'):
        results = pool.map(lambda _: observe()['current_id'], range(2))
    before = thread_state()
    for job in pool.queued:  # outside the task now
        job()
    assert list(results) == ['mapper', 'mapper']
    assert thread_state() == before
    pool.shutdown()


def test_executor_passes_a_keyword_named_fn_to_the_job():
    with cct.TaskThreadPoolExecutor(1) as pool, running(probe, 'abc'):
        assert pool.submit(lambda fn: fn, fn='value').result(10) == 'value'


def test_executor_submit_after_shutdown_raises_like_the_stdlib():
    pool = cct.TaskThreadPoolExecutor(1)
    pool.shutdown()
    with running(probe, 'abc'), pytest.raises(RuntimeError):
        pool.submit(observe)


def test_submit_returns_a_future_with_result_or_exception():
    with running(probe, 'abc'):
        ok = cct.submit(lambda x: (x, observe()['current_id']), 1)
        failed = cct.submit(lambda: 1 // 0)
    assert ok.result(10) == (1, 'abc')
    with pytest.raises(ZeroDivisionError):
        failed.result(10)


def test_install_patches_plain_threads_timers_and_pools_then_uninstall_restores(uninstalled):
    original_start, original_submit = threading.Thread.start, ThreadPoolExecutor.submit
    cct.install()
    cct.install()  # idempotent
    assert cct.installed()
    assert threading.Thread.__dict__['start'].__name__ == 'start'  # functools.wraps-clean
    assert threading.Thread.__dict__['start'] is not original_start
    record = Recorder()
    with running(probe, 'abc'):
        started(threading.Thread(target=record))
        started(threading.Timer(0.01, record))
        with ThreadPoolExecutor(1) as pool:
            pool.submit(record).result(10)
            workers_state = pool.submit(lambda: None)
        started(cct.opt_out(threading.Thread(target=record)))
    assert workers_state.result(10) is None
    assert record.seen == ['abc', 'abc', 'abc', None]
    cct.uninstall()
    cct.uninstall()  # idempotent
    assert threading.Thread.start == original_start
    assert ThreadPoolExecutor.submit == original_submit
    with running(probe, 'abc'):
        started(threading.Thread(target=record))
    assert record.seen[-1] is None


def test_install_never_gives_pool_workers_a_context(uninstalled):
    cct.install()
    with ThreadPoolExecutor(1) as pool:
        with running(probe, 'abc'):
            assert pool.submit(observe).result(10)['current_id'] == 'abc'
        # Same worker thread, job submitted from no task: it must see nothing.
        assert pool.submit(observe).result(10)['current_id'] is None


def test_task_thread_under_install_is_wrapped_once(uninstalled):
    cct.install()
    depths = []
    with running(probe, 'abc'):
        started(cct.TaskThread(target=lambda: depths.append(len(_state._task_stack.stack))))
    assert depths == [1]


@pytest.mark.skipif(
    bool(os.environ.get('USE_FAST_LOCALS')),
    reason='USE_FAST_LOCALS: no per-thread task entry to keep a snapshot in, never warm',
)
def test_a_warm_thread_start_and_join_runs_at_most_six_library_functions():
    """One seam: a TaskThread's start (its capture, a snapshot already built)
    and its run go through at most six functions of the package, both threads
    counted."""
    package = os.path.dirname(os.path.abspath(cct.__file__))
    called = set()

    def profile(frame, event, arg):
        if event == 'call' and frame.f_code.co_filename.startswith(package):
            called.add((frame.f_code.co_filename, frame.f_code.co_name))

    with running(probe, 'abc'):
        started(cct.TaskThread(target=Recorder()))  # warm: the snapshot is built
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            thread = cct.TaskThread(target=Recorder())
            thread.start()
            thread.join(10)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    names = sorted(name for _, name in called)
    # Python 3.14's thread_inherit_context: the new thread's own context is a copy of
    # the starter's, whose variables keep_outer sets on top of the snapshot's: one more.
    inherits = getattr(sys.flags, 'thread_inherit_context', 0) == 1
    assert len(called) <= (7 if inherits else 6), names
    assert inherits or '_set_then_call' not in names
    assert '__call__' in names  # the seam ran the target
