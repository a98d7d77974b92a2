"""Hostile inputs and misuse: each gets the stdlib's error at the stdlib's moment, or a
documented behaviour pinned here so that a change is noticed."""

from __future__ import absolute_import

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from celery import Task, _state

import celery_ctxthread as cct
from celery_ctxthread._stdlib import TimerBase
from tests.helpers.servers import wait_until
from tests.helpers.tasks_inprocess import (
    app,
    captured_on_top,
    in_thread,
    observe,
    probe,
    running,
    states_around,
    thread_state,
)

WAIT = 10


def error_in_run(thread_class, *args, **kwargs):
    """Start a ``thread_class`` whose ``run()`` keeps the error it raised; return it.

    Returns (what start() returned, the error run() raised or None).
    """

    class Catching(thread_class):
        def run(self):
            self.error = None
            try:
                super(Catching, self).run()
            except Exception as exc:
                self.error = exc

    thread = Catching(*args, **kwargs)
    returned = thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), 'thread did not finish within %d s' % WAIT
    return returned, thread.error


def same_error(ours, theirs):
    assert type(ours) is type(theirs) and str(ours) == str(theirs), (ours, theirs)


# -- non-callable targets: the error surfaces where the stdlib raises it -------


@pytest.mark.parametrize('in_task', [True, False], ids=['in-task', 'no-task'])
def test_thread_with_a_non_callable_target_starts_and_fails_in_run_like_the_stdlib(in_task):
    with running(probe, 'abc') if in_task else _nothing():
        theirs = error_in_run(threading.Thread, target=42)
        ours = error_in_run(cct.TaskThread, target=42)
    assert theirs[0] is None and ours[0] is None  # start() accepted it
    assert isinstance(ours[1], TypeError)
    same_error(ours[1], theirs[1])


def test_timer_with_a_non_callable_function_fails_when_it_fires_like_the_stdlib():
    with running(probe, 'abc'):
        theirs = error_in_run(TimerBase, 0.01, 42)  # threading.Timer's class
        ours = error_in_run(cct.TaskTimer, 0.01, 42)
    assert isinstance(ours[1], TypeError)
    same_error(ours[1], theirs[1])


def test_installed_plain_thread_with_a_non_callable_target_fails_in_run(uninstalled):
    with running(probe, 'abc'):
        theirs = error_in_run(threading.Thread, target=42)
        cct.install()
        ours = error_in_run(threading.Thread, target=42)
    assert isinstance(ours[1], TypeError)
    same_error(ours[1], theirs[1])


@pytest.mark.parametrize('under_install', [False, True], ids=['ours', 'installed'])
def test_executor_submit_of_a_non_callable_returns_a_failing_future(under_install, uninstalled):
    with ThreadPoolExecutor(1) as stdlib_pool:
        theirs = stdlib_pool.submit(42).exception(WAIT)
    if under_install:
        cct.install()
    pool_class = ThreadPoolExecutor if under_install else cct.TaskThreadPoolExecutor
    with pool_class(1) as pool, running(probe, 'abc'):
        future = pool.submit(42)  # accepted, like the stdlib
        ours = future.exception(WAIT)
        clean = pool.submit(thread_state)
    assert isinstance(ours, TypeError)
    same_error(ours, theirs)
    assert clean.result(WAIT)[0] == [probe]  # the next job still runs, in its context


def test_module_submit_of_a_non_callable_returns_a_failing_future():
    with ThreadPoolExecutor(1) as stdlib_pool:
        theirs = stdlib_pool.submit(42).exception(WAIT)
    with running(probe, 'abc'):
        ours = cct.submit(42).exception(WAIT)
    assert isinstance(ours, TypeError)
    same_error(ours, theirs)


def test_submit_without_a_function_raises_at_once_like_the_stdlib(uninstalled):
    with ThreadPoolExecutor(1) as stdlib_pool, pytest.raises(TypeError):
        stdlib_pool.submit()
    with cct.TaskThreadPoolExecutor(1) as pool, running(probe, 'abc'):
        with pytest.raises(TypeError):
            pool.submit()
        cct.install()
        with pytest.raises(TypeError):
            ThreadPoolExecutor.submit(pool)
    with pytest.raises(TypeError):
        cct.submit()


def test_wrap_of_a_non_callable_raises_at_once_as_documented():
    with running(probe, 'abc'), pytest.raises(TypeError, match='callable, got 42'):
        cct.wrap(42)
    with pytest.raises(TypeError, match='callable'):
        cct.wrap(None)  # outside a task too


def test_running_a_non_callable_under_a_snapshot_raises_typeerror_and_restores():
    with running(probe, 'abc'):
        context = cct.capture()

    before, after = in_thread(states_around, pytest.raises, TypeError, context.run, 42)
    assert before == after


# -- install() / uninstall() misuse -------------------------------------------


def test_install_twice_uninstall_without_install_and_installed(uninstalled):
    original_start = threading.Thread.__dict__['start']
    original_submit = ThreadPoolExecutor.__dict__['submit']
    assert not cct.installed()
    cct.uninstall()  # without install: a no-op
    assert threading.Thread.__dict__['start'] is original_start
    assert not cct.installed()
    cct.install()
    patched = threading.Thread.__dict__['start']
    cct.install()  # twice: the first patch stays, nothing is layered on it
    assert threading.Thread.__dict__['start'] is patched and cct.installed()
    depths = []
    with running(probe, 'abc'):
        thread = threading.Thread(target=lambda: depths.append(len(_state._task_stack.stack)))
        thread.start()
        thread.join(WAIT)
    assert depths == [1]  # wrapped once
    cct.uninstall()
    cct.uninstall()
    assert threading.Thread.__dict__['start'] is original_start
    assert ThreadPoolExecutor.__dict__['submit'] is original_submit
    assert not cct.installed()


def _plain_wrapper(start, calls):
    def start_wrapped_by_someone(self, *args, **kwargs):
        calls.append(self)
        return start(self, *args, **kwargs)

    return start_wrapped_by_someone


def _wrapt_wrapper(start, calls):
    wrapt = pytest.importorskip('wrapt')

    def wrapper(wrapped, instance, args, kwargs):
        calls.append(instance)
        return wrapped(*args, **kwargs)

    return wrapt.FunctionWrapper(start, wrapper)


def _id_seen_by_a_plain_thread():
    """Inside a task: the task id a plain threading.Thread sees, and how deep its stack is."""
    seen = []
    thread = threading.Thread(
        target=lambda: seen.append((observe()['current_id'], len(_state._task_stack.stack)))
    )
    with running(probe, 'abc'):
        thread.start()
        thread.join(WAIT)
    return seen[0]


@pytest.mark.parametrize('wrap_start', [_plain_wrapper, _wrapt_wrapper], ids=['function', 'wrapt'])
def test_uninstall_under_someone_elses_wrapper_leaves_ours_disabled(uninstalled, wrap_start):
    """Someone wrapped our Thread.start after install() (OpenTelemetry, Sentry):
    uninstall() leaves ours under theirs, but installed() is False and plain threads
    no longer propagate; install() again works, wrapping once."""
    original_start = threading.Thread.__dict__['start']
    calls = []
    cct.install()
    try:
        theirs = wrap_start(threading.Thread.__dict__['start'], calls)
        threading.Thread.start = theirs
        cct.uninstall()
        assert not cct.installed()
        assert threading.Thread.__dict__['start'] is theirs
        assert _id_seen_by_a_plain_thread() == (None, 0)
        assert len(calls) == 1  # their wrapper still runs
        cct.install()
        assert cct.installed()
        assert _id_seen_by_a_plain_thread() == ('abc', 1)
        cct.uninstall()
        assert threading.Thread.__dict__['start'] is theirs
        assert _id_seen_by_a_plain_thread() == (None, 0)
        assert len(calls) == 3
    finally:
        threading.Thread.start = original_start


# -- after shutdown(): RuntimeError, like the stdlib ----------------------------


@pytest.mark.parametrize('in_task', [True, False], ids=['in-task', 'no-task'])
def test_submit_after_shutdown_raises_runtimeerror_like_the_stdlib(in_task, uninstalled):
    stdlib_pool = ThreadPoolExecutor(1)
    stdlib_pool.shutdown()
    with pytest.raises(RuntimeError) as theirs:
        stdlib_pool.submit(observe)
    ours_pool = cct.TaskThreadPoolExecutor(1)
    ours_pool.shutdown()
    with running(probe, 'abc') if in_task else _nothing():
        with pytest.raises(RuntimeError) as ours:
            ours_pool.submit(observe)
        cct.install()
        with pytest.raises(RuntimeError) as installed:
            stdlib_pool.submit(observe)
        assert _state.get_current_task() is (probe if in_task else None)
    assert str(ours.value) == str(theirs.value) == str(installed.value)


# -- a snapshot crossing a fork -------------------------------------------------


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='POSIX only')
@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # 3.12+: fork with threads
def test_a_snapshot_captured_before_fork_runs_in_the_child():
    """Documented: a snapshot is plain objects; a forked child gets its own copies and
    runs under them, on its main thread and on a new thread, and is restored after."""
    with running(probe, 'abc'):
        context = cct.capture()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            os.close(read_end)
            report = {
                'main': context.run(_seen_in_child),
                'thread': in_thread(context.run, _seen_in_child),
                'after': [len(stack) for stack in thread_state()[:3]],
                'current_task': getattr(_state.get_current_task(), 'name', None),
            }
            os.write(write_end, json.dumps(report).encode('utf-8'))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        status = _wait_bounded(pid, 20)
        data = os.read(read_end, 65536).decode('utf-8')
    finally:
        os.close(read_end)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, data)
    report = json.loads(data)
    expected = {
        'current_task': 'cct_inprocess.probe',
        'current_id': 'abc',
        'worker_task_id': 'abc',
        'app': app.main,
    }
    assert report['main'] == expected and report['thread'] == expected
    assert report['after'] == [0, 0, 0] and report['current_task'] is None


def _seen_in_child():
    seen = observe()
    return {
        'current_task': seen['current_task'],
        'current_id': seen['current_id'],
        'worker_task_id': seen['worker_task_id'],
        'app': getattr(seen['app'], 'main', None),
    }


def _wait_bounded(pid, timeout):
    statuses = []

    def reaped():
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            statuses.append(status)
        return done

    if wait_until(reaped, timeout, interval=0.02):
        return statuses[0]
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError('forked child did not exit within %d s' % timeout)


# -- odd things on the task stack -----------------------------------------------


class UnboundTask(Task):
    """A real Celery task class never bound to an app: ``request_stack`` is None."""

    name = 'cct_misuse.unbound'


def test_an_unbound_task_class_on_the_stack_is_captured_without_request():
    assert UnboundTask.request_stack is None
    with running(probe, 'below'):
        context = captured_on_top(UnboundTask)
    assert context.task is UnboundTask and context.request is None and context.task_id is None
    assert 'cct_misuse.unbound[None]' in repr(context)

    def check():
        before = thread_state()
        seen = context.run(
            lambda: (list(_state._task_stack.stack), probe.request.id, _state.get_current_task())
        )
        return seen, before, thread_state()

    seen, before, after = in_thread(check)
    # The task below still gets its request: the worker task is probe, the current one not.
    assert seen == ([probe, UnboundTask], 'below', UnboundTask)
    assert before == after


def test_an_object_with_no_request_stack_attribute_on_the_stack():
    stranger = object()
    context = captured_on_top(stranger)
    assert context.task is stranger and context.request is None
    assert in_thread(context.run, _state.get_current_task) is stranger


def test_a_snapshot_run_after_its_task_ended_still_sees_that_request():
    """Documented: the request is shared, not copied, so a thread that outlives its task
    sees the ended task's request (the late-update guard keys on it), not a fresh one."""
    with running(probe, 'ended'):
        context = cct.capture()
        request = probe.request
    assert probe.request is not request  # the task's thread moved on

    def look():
        return probe.request, observe()

    seen_request, seen = in_thread(context.run, look)
    assert seen_request is request is context.request
    assert seen['current_id'] == seen['worker_task_id'] == 'ended'
    # ...and the same for a thread started from it after the task ended.
    started_late = in_thread(context.run, lambda: cct.submit(observe).result(WAIT))
    assert started_late['current_id'] == 'ended'


# -- a keyword argument named fn ------------------------------------------------


def keyword_named_fn(fn=None):
    return fn, observe()['current_id']


def test_a_target_s_own_fn_keyword_reaches_it_through_every_entry_point():
    """One convention: the callable is positional-only, as in ``Context.run`` and
    ``Executor.submit``, so a target's own ``fn=`` keyword always reaches it."""
    with running(probe, 'abc'):
        context = cct.capture()
        wrapped = cct.wrap(keyword_named_fn)
        submitted = cct.submit(keyword_named_fn, fn='mine')
        with cct.TaskThreadPoolExecutor(1) as pool:
            assert pool.submit(keyword_named_fn, fn='mine').result(WAIT) == ('mine', 'abc')
    assert submitted.result(WAIT) == ('mine', 'abc')
    assert in_thread(lambda: context.run(keyword_named_fn, fn='mine')) == ('mine', 'abc')
    assert cct.capture().run(keyword_named_fn, fn='mine') == ('mine', None)  # the empty one
    assert in_thread(lambda: wrapped(fn='mine')) == ('mine', 'abc')


@pytest.mark.parametrize(
    'call',
    [
        lambda: cct.submit(),
        lambda: cct.capture().run(),
        lambda: cct.TaskThreadPoolExecutor(1).submit(),
    ],
    ids=['submit', 'run', 'executor-submit'],
)
def test_an_entry_point_called_without_a_callable_raises_typeerror(call):
    with pytest.raises(TypeError, match='argument') as raised:
        call()
    error = raised.value  # nothing chained to it, or shown as chained
    assert getattr(error, '__context__', None) is None or error.__suppress_context__


# -- opt_out, double start, failed start ----------------------------------------


@pytest.mark.parametrize(
    'not_a_thread',
    [object(), None, threading.Thread, lambda: None],
    ids=['object', 'None', 'the-class', 'a-function'],
)
def test_opt_out_of_something_that_is_not_a_thread_raises_typeerror(not_a_thread):
    with pytest.raises(TypeError, match=r'threading\.Thread'):
        cct.opt_out(not_a_thread)


def test_opt_out_on_a_task_thread_runs_it_without_context():
    seen = []
    thread = cct.TaskThread(target=lambda: seen.append(observe()['current_id']))
    assert cct.opt_out(thread) is thread  # chains
    with running(probe, 'abc'):
        thread.start()
        thread.join(WAIT)
    assert seen == [None]


@pytest.mark.parametrize('in_task', [True, False], ids=['in-task', 'no-task'])
def test_starting_twice_raises_the_stdlibs_runtimeerror(in_task):
    errors = []
    for thread_class in (threading.Thread, cct.TaskThread):
        thread = thread_class(target=lambda: None)
        with running(probe, 'abc') if in_task else _nothing():
            thread.start()
            thread.join(WAIT)
            with pytest.raises(RuntimeError) as error:
                thread.start()
        errors.append(str(error.value))
        assert not thread.is_alive()
    assert errors[0] == errors[1]


def _refuse_thread_starts(monkeypatch):
    """Make every thread start fail in the stdlib, as when the process is out of threads."""
    name = '_start_joinable_thread' if hasattr(threading, '_start_joinable_thread') else None

    def refuse(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading, name or '_start_new_thread', refuse)


def test_a_failed_start_leaves_the_thread_as_it_was_and_a_retry_uses_the_new_context(
    monkeypatch,
):
    """Thread creation failing (e.g. out of threads) raises the stdlib's error; the
    thread is left unwrapped, and a later start() captures afresh and wraps once."""
    seen = []

    def record():
        seen.append((observe()['current_id'], len(_state._task_stack.stack)))

    stdlib_thread, ours = threading.Thread(target=record), cct.TaskThread(target=record)
    with running(probe, 'first'):
        _refuse_thread_starts(monkeypatch)
        for thread in (stdlib_thread, ours):
            with pytest.raises(RuntimeError, match="can't start new thread"):
                thread.start()
        monkeypatch.undo()
    assert 'run' not in ours.__dict__
    with running(probe, 'second'):
        for thread in (stdlib_thread, ours):
            thread.start()  # a retry is allowed, as the stdlib allows it
            thread.join(WAIT)
    assert seen == [(None, 0), ('second', 1)]


class _TouchyThread(cct.TaskThread):
    """A thread whose ``__eq__`` must never be called by us."""

    def __eq__(self, other):
        raise AssertionError('celery_ctxthread compared a thread with ==')

    __hash__ = threading.Thread.__hash__


@pytest.mark.parametrize('own_run', [False, True], ids=['class-run', 'instance-run'])
def test_a_failed_start_restores_run_by_identity(monkeypatch, own_run):
    """After a failed start the thread's ``run`` is what it was: a run set on the
    instance stays, the class's is not copied onto it, and no ``__eq__`` runs."""

    def instance_run():
        return None

    thread = _TouchyThread()
    if own_run:
        thread.run = instance_run
    with running(probe, 'first'):
        _refuse_thread_starts(monkeypatch)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            thread.start()
        monkeypatch.undo()
    if own_run:
        assert thread.__dict__['run'] is instance_run
    else:
        assert 'run' not in thread.__dict__


class _nothing(object):
    """A do-nothing context manager (``contextlib.nullcontext`` is 3.7+)."""

    def __enter__(self):
        return None

    def __exit__(self, *exc_info):
        return False
