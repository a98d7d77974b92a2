"""The snapshot itself: capture, run, restore exactly, nesting, concurrency."""

from __future__ import absolute_import

import gc
import os
import threading
import weakref

import pytest
from celery import _state

import celery_ctxthread as cct
from celery_ctxthread import _celery
from tests.helpers.tasks_inprocess import (
    app,
    captured_on_top,
    in_thread,
    observe,
    other,
    probe,
    running,
    states_around,
    thread_state,
)

try:
    import contextvars
except ImportError:  # Python 2.7
    contextvars = None

needs_contextvars = pytest.mark.skipif(contextvars is None, reason='no contextvars on Python 2')


def test_capture_outside_a_task_is_empty_and_just_calls():
    context = cct.capture()
    assert (context.task, context.request, context.task_id) == (None, None, None)
    assert context.run(divmod, 7, 2) == (3, 1)
    assert repr(context) == '<TaskContext empty>'


def test_capture_names_the_task_and_shares_its_request():
    with running(probe, 'abc'):
        context = cct.capture()
        assert context.task is probe
        assert context.request is probe.request  # shared, not copied
    assert context.task_id == 'abc'
    assert 'cct_inprocess.probe[abc]' in repr(context)


def test_run_in_another_thread_sees_the_task():
    with running(probe, 'abc'):
        context = cct.capture()
    seen = in_thread(context.run, observe)
    assert seen['current_task'] == 'cct_inprocess.probe'
    assert seen['current_id'] == seen['probe_request_id'] == seen['worker_task_id'] == 'abc'
    assert seen['app'] is app


def test_plain_thread_sees_nothing():
    """The bug itself: the baseline the library exists to fix."""
    with running(probe, 'abc'):
        seen = in_thread(observe)
    assert (seen['current_task'], seen['probe_request_id'], seen['worker_task_id']) == (
        None,
        None,
        None,
    )


def test_run_restores_the_thread_exactly():
    with running(probe, 'abc'):
        context = cct.capture()

    before, after = in_thread(states_around, context.run, observe)
    assert before == after
    assert after[0] == []


def test_run_restores_a_thread_that_already_had_context():
    with running(probe, 'abc'):
        context = cct.capture()
    with running(other, 'outer'):
        before = thread_state()
        seen = context.run(observe)
        assert thread_state() == before
        assert _state.get_current_task() is other
    assert seen['current_id'] == 'abc'


@pytest.mark.parametrize('error', [ValueError('boom'), KeyboardInterrupt(), SystemExit(3)])
def test_run_restores_on_any_exception(error):
    with running(probe, 'abc'):
        context = cct.capture()

    def explode():
        raise error

    before, after = in_thread(states_around, pytest.raises, type(error), context.run, explode)
    assert before == after


def test_run_repairs_a_target_that_leaves_the_stacks_unbalanced():
    with running(probe, 'abc'):
        context = cct.capture()

    def leaky():
        _state._task_stack.push(other)  # never popped
        probe.request_stack.pop()  # pops ours

    before, after = in_thread(states_around, context.run, leaky)
    assert before == after


def test_nested_propagation_through_two_threads():
    with running(probe, 'abc'):
        outer = cct.capture()
    seen = in_thread(outer.run, lambda: in_thread(cct.capture().run, observe))
    assert seen['current_id'] == 'abc'


def test_one_snapshot_runs_in_many_threads_at_once():
    with running(probe, 'abc'):
        context = cct.capture()
    barrier = threading.Barrier(8) if hasattr(threading, 'Barrier') else None
    results = []

    def job():
        if barrier is not None:
            barrier.wait(10)
        results.append(context.run(observe)['current_id'])
        results.append(_state.get_current_task())  # restored afterwards

    threads = [threading.Thread(target=job) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results.count('abc') == 8
    assert results.count(None) == 8


def test_unbound_task_without_request_stack_is_captured_without_request():
    class Unbound(object):
        name = 'unbound'
        request_stack = None

    task = Unbound()
    context = captured_on_top(task)
    assert context.task is task and context.request is None and context.task_id is None
    assert in_thread(context.run, _state.get_current_task) is task


def test_consecutive_captures_share_one_snapshot_while_nothing_changes():
    # The Celery half is shared; each capture has its own contextvars copy.  The
    # snapshot is kept in the default flavour's task stack entry; USE_FAST_LOCALS
    # has no such entry, and plans every capture anew.
    shared = not os.environ.get('USE_FAST_LOCALS')
    with running(probe, 'abc'):
        first = cct.capture()
        assert (cct.capture()._tasks is first._tasks) is shared
        with running(other, 'inner'):
            inner = cct.capture()
            assert (inner.task, inner.task_id) == (other, 'inner')
        after = cct.capture()
        assert (after.task, after.request) == (probe, first.request)


def _use_every_entry_point():
    """Capture, run, start, submit and wrap inside a task; return its request, weakly."""
    request = weakref.ref(probe.request_stack.top)
    cct.capture().run(observe)
    thread = cct.TaskThread(target=observe)
    thread.start()
    thread.join(10)
    with cct.TaskThreadPoolExecutor(1) as pool:
        list(pool.map(lambda _: observe(), range(3)))
        pool.submit(observe).result(10)
    cct.submit(observe).result(10)
    # submit()'s thread sets the result from inside the context, then leaves it.
    for thread in threading.enumerate():
        if isinstance(thread, cct.TaskThread):
            thread.join(10)
    cct.wrap(observe)()
    return request


def test_nothing_keeps_a_request_alive_once_its_task_ended():
    with running(probe, 'short-lived'):
        request = _use_every_entry_point()
        assert request() is not None
    gc.collect()
    assert request() is None


def test_a_nested_task_s_request_is_released_with_the_outer_task_at_the_latest():
    with running(other, 'outer'):
        with running(probe, 'inner'):
            request = _use_every_entry_point()
        cct.capture()  # the next capture replaces the snapshot that held it
        gc.collect()
        assert request() is None
        with running(probe, 'inner-2'):
            request = _use_every_entry_point()
    gc.collect()
    assert request() is None


@needs_contextvars
def test_contextvars_are_copied_per_run():
    var = contextvars.ContextVar('cct_test_var', default='unset')
    with running(probe, 'abc'):
        var.set('from-task')
        context = cct.capture()
    var.set('unset')

    def read_then_write():
        seen = var.get()
        var.set('changed-by-job')
        return seen

    assert in_thread(context.run, read_then_write) == 'from-task'
    assert in_thread(context.run, read_then_write) == 'from-task'  # the first job did not leak
    assert var.get() == 'unset'


def test_wrap_keeps_name_and_runs_in_context_every_call():
    def report(step, fn=None):
        """Report one step."""
        return step, fn, observe()['current_id']

    with running(probe, 'abc'):
        wrapped = cct.wrap(report)
    assert wrapped.__name__ == 'report' and wrapped.__doc__ == 'Report one step.'
    assert wrapped.__wrapped__ is report and wrapped.task_context.task_id == 'abc'
    assert in_thread(wrapped, 1) == (1, None, 'abc')
    assert wrapped(2, fn='kw') == (2, 'kw', 'abc')  # a keyword named fn reaches the target


def test_wrap_rejects_a_non_callable_at_once():
    with pytest.raises(TypeError, match='callable'):
        cct.wrap(42)


class PublicOnlyStack(object):
    """An unknown ``LocalStack`` flavour: only push, pop, stack and len."""

    def __init__(self):
        self.stack = []

    def push(self, item):
        self.stack.append(item)

    def pop(self):
        return self.stack.pop() if self.stack else None

    def __len__(self):
        return len(self.stack)


def test_unknown_stack_flavours_get_the_public_api_and_are_restored():
    stack = PublicOnlyStack()
    pusher = _celery.pusher_for([(stack, ('b', 'c'))])
    assert type(pusher) is _celery._PublicApiPusher
    stack.push('a')
    seen = []

    def target():
        seen.append(tuple(stack.stack))
        del stack.stack[:]  # the target popped below us

    pusher.call(None, target, (), {})
    assert seen == [('a', 'b', 'c')]
    assert tuple(stack.stack) == ('a',)


class FailingPushStack(PublicOnlyStack):
    """A request stack whose push fails, as if interrupted mid-push."""

    def push(self, item):
        raise KeyboardInterrupt('interrupted while pushing')


def test_a_push_that_fails_half_way_is_undone():
    class HalfBound(object):
        name = 'half-bound'
        request_stack = FailingPushStack()

    task = HalfBound()
    task.request_stack.stack.append('its request')  # captured, so pushed in run()
    context = captured_on_top(task)

    before, after = in_thread(states_around, pytest.raises, KeyboardInterrupt, context.run, observe)
    assert before == after  # the task stack pushed first was restored


def test_the_default_flavour_is_detected():
    expected = (
        _celery._FastLocalStackPusher
        if os.environ.get('USE_FAST_LOCALS')
        else _celery._LocalStackPusher
    )
    assert type(_celery.pusher_for([(_state._task_stack, ())])) is expected
