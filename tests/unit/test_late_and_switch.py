"""The late-update guard, the retry refusal and the worker-wide switch, in-process.

Tasks run through Celery's real tracer (``build_tracer`` with ``eager=False``,
as a worker runs them), so the final state is stored where a worker stores it,
and the task's hooks and ``task_success``/``task_failure`` receivers run after
that store, in the task's own thread.  The tracers are built when this module
is imported, before any test captures anything: a worker builds its tracers
when it starts, before any task runs.  The same rules on real workers:
tests/integration/test_guard.py.
"""

from __future__ import absolute_import

import gc
import logging
import os
import sys
import threading
import time
import uuid
import weakref

import celery
import pytest
from celery import Celery, Task
from celery.app.trace import build_tracer
from celery.exceptions import Ignore, Retry
from celery.signals import before_task_publish, task_failure, task_success

import celery_ctxthread as cct
from celery_ctxthread import worker
from tests.conftest import REPO_DIR, WORKER_APP, _python_path
from tests.helpers.servers import CeleryWorker, ServerError, wait_until
from tests.helpers.tasks_inprocess import (
    in_thread,
    probe,
    retry_in_a_task_thread,
    run_bounded,
    running,
)

WAIT = 10
LATE_LOGGER = 'celery_ctxthread.guard'

app = Celery('cct_late', broker='memory://', backend='cache+memory://', set_as_current=False)
# task_always_eager stays off: these tasks run through a worker's tracer.
# Retries are published to the in-memory broker, on a queue nobody consumes.
app.conf.update(task_default_queue='cct-late-retries')

# What the tests hand to a running task or read back from it, by task id.
kept = {}


# ---------------------------------------------------------------- helpers


class Straggler(object):
    """A TaskThread its task starts: it updates once while the task runs (when
    ``during``), then twice more once the test lets it go, from the task's context."""

    def __init__(self, during=True, task_id=None):
        self.name = 'straggler-%s' % uuid.uuid4().hex[:8]
        self.during = during
        self.task_id = task_id  # the late updates' explicit task_id (None: the task's own)
        self.started, self.go, self.done = threading.Event(), threading.Event(), threading.Event()
        self.seen_id = None
        self.errors = []

    def start(self, task):
        """In the task: start the thread; return once its update during the task is made."""
        cct.TaskThread(target=self._run, args=(task,), name=self.name).start()
        assert self.started.wait(WAIT), 'the straggler did not start within %d s' % WAIT

    def let_go(self):
        """Let it make its late updates; wait until it has."""
        self.go.set()
        assert self.done.wait(WAIT), 'the straggler did not finish within %d s' % WAIT
        assert self.errors == [], self.errors

    def _run(self, task):
        self.seen_id = task.request.id
        if self.during:
            self._update(task, None, 1)
        self.started.set()
        self.go.wait(WAIT)
        for step in (2, 3):
            self._update(task, self.task_id, step)
        self.done.set()

    def _update(self, task, task_id, step):
        try:
            task.update_state(task_id=task_id, state='PROGRESS', meta={'step': step})
        except Exception as exc:  # reported to the test by let_go()
            self.errors.append(repr(exc))


def end_with(outcome):
    """End a task body: return ``outcome``, or raise for 'failure' and 'ignore'."""
    if outcome == 'failure':
        raise RuntimeError('failing on purpose')
    if outcome == 'ignore':
        raise Ignore()
    return outcome


def late_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LATE_LOGGER]


def stored(task_id):
    return app.backend.get_task_meta(task_id)


# ------------------------------------------------------------------ tasks


@app.task(bind=True, name='cct_late.outlived')
def outlived(self, straggler, outcome):
    """Start ``straggler``, then end as ``outcome`` says."""
    straggler.start(self)
    return end_with(outcome)


@app.task(bind=True, name='cct_late.leaves_a_callback')
def leaves_a_callback(self):
    """Leave a wrap()ped update for later, as a task may hand a callback to a library."""
    kept[self.request.id] = cct.wrap(self.update_state)
    return 'done'


@app.task(bind=True, name='cct_late.runs_a_callback')
def runs_a_callback(self, callback):
    """Run an earlier task's callback on this (the same) thread."""
    callback(state='PROGRESS', meta={'late': True})


@app.task(bind=True, name='cct_late.outlived_ignoring_result', ignore_result=True)
def outlived_ignoring_result(self, straggler):
    straggler.start(self)
    return 'nothing stored'


class UpdatesFromAHook(Task):
    """Updates its own state to HANDLED from the hook named by its first argument."""

    def on_success(self, retval, task_id, args, kwargs):
        handle(self, 'on_success', task_id, args)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        handle(self, 'on_failure', task_id, args)

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        handle(self, 'after_return', task_id, args)


def handle(task, hook, task_id, args):
    if args[0] == hook:
        task.update_state(task_id=task_id, state='HANDLED', meta={'by': hook})


@app.task(bind=True, base=UpdatesFromAHook, name='cct_late.hooked')
def hooked(self, hook, outcome, captures):
    """Capture this task's context (a TaskThread) when ``captures``; end as ``outcome`` says."""
    if captures:
        thread = cct.TaskThread(target=lambda: None)
        thread.start()
        thread.join(WAIT)
    return end_with(outcome)


@app.task(bind=True, name='cct_late.retries_from_a_thread')
def retries_from_a_thread(self):
    """A TaskThread calls self.retry(); return what it raised, as 'Type: message'."""
    return retry_in_a_task_thread(self, 60, WAIT)


@app.task(bind=True, name='cct_late.retries_itself')
def retries_itself(self):
    """Capture (as a task with threads does), then retry from the task's own thread."""
    cct.capture()
    try:
        self.retry(countdown=60)
    except Retry as exc:
        kept[self.request.id] = exc
        raise


def fail_on_purpose():
    raise RuntimeError('job failing on purpose')


@app.task(bind=True, name='cct_late.fails_a_job')
def fails_a_job(self, pool):
    """Submit a failing job to ``pool``; keep its future and a weak reference to the request."""
    future = pool.submit(fail_on_purpose)
    future.exception(WAIT)
    kept[self.request.id] = (future, weakref.ref(self.request))


@app.task(bind=True, name='cct_late.updates_in_flight')
def updates_in_flight(self, straggler, in_store):
    """Start ``straggler`` and return once its update is in flight (inside the store).

    Waiting for ``in_store`` matters: returning as soon as the thread has started
    lets the final store win the race now and then, and the update is dropped.
    """
    straggler.start(self)
    assert in_store.wait(WAIT), 'the straggler did not reach the store within %d s' % WAIT
    return 'returned'


@app.task(bind=True, name='cct_late.leaves_a_sleeper')
def leaves_a_sleeper(self, wake):
    """Start a TaskThread that only waits for ``wake``, then updates; return at once."""
    cct.TaskThread(target=_sleep_then_update, args=(self, wake)).start()
    return 'returned'


def _sleep_then_update(task, wake):
    wake.wait(WAIT)
    task.update_state(state='PROGRESS', meta={'late': True})


@app.task(bind=True, name='cct_late.backends_seen')
def backends_seen(self, pool):
    """Update from a TaskThread and from a job of ``pool``; keep the task's own backend."""
    kept[self.request.id] = app.backend
    thread = cct.TaskThread(target=self.update_state, kwargs={'state': 'FROM_THREAD'})
    thread.start()
    thread.join(WAIT)
    pool.submit(self.update_state, state='FROM_JOB').result(WAIT)
    return 'seen'


# Receivers of task_success / task_failure, connected before the tracers are
# built (a worker's are connected when its modules are imported): they call
# what a test puts in ``in_receiver`` under (signal name, task name).
in_receiver = {}


def _receiver(signal_name):
    def receiver(sender=None, **kwargs):
        action = in_receiver.get((signal_name, getattr(sender, 'name', None)))
        if action is not None:
            action(sender)

    return receiver


task_success.connect(_receiver('task_success'), weak=False, dispatch_uid='cct_late.success')
task_failure.connect(_receiver('task_failure'), weak=False, dispatch_uid='cct_late.failure')

# The tasks of this module that were published (retries), by name.
published = []


def _note_publish(sender=None, **kwargs):
    if str(sender).startswith('cct_late.'):
        published.append(sender)


before_task_publish.connect(_note_publish, weak=False, dispatch_uid='cct_late.publish')

TRACERS = {
    name: build_tracer(name, task, app=app, eager=False, propagate=False)
    for name, task in app.tasks.items()
    if name.startswith('cct_late.')
}


def traced(task, *args):
    """Run ``task(*args)`` through its tracer, as a worker does; return the task id."""
    task_id = str(uuid.uuid4())
    request = {'id': task_id, 'delivery_info': {}, 'hostname': 'cct-inprocess'}
    TRACERS[task.name](task_id, list(args), {}, request)
    return task_id


@pytest.fixture
def receivers():
    """``in_receiver``, emptied after the test."""
    yield in_receiver
    in_receiver.clear()


@pytest.fixture
def publishes():
    """``published``, emptied before and after the test."""
    del published[:]
    yield published
    del published[:]


@pytest.fixture
def warnings_logged(caplog):
    """The late-update guard's warnings, as a function returning them so far."""
    caplog.set_level(logging.WARNING, logger=LATE_LOGGER)
    return lambda: late_warnings(caplog)


@pytest.fixture
def store_calls(monkeypatch):
    """Every (task id, state) that reaches the result backend's store_result, in order.

    The backend still stores each: this only notes what reached it.  Needed
    after SUCCESS, which key-value backends refuse to overwrite.
    """
    calls = []
    backend_class = type(app.backend)
    real = backend_class.store_result

    def store_result(self, task_id, result, state, *args, **kwargs):
        calls.append((task_id, state))
        return real(self, task_id, result, state, *args, **kwargs)

    monkeypatch.setattr(backend_class, 'store_result', store_result)
    return calls


@pytest.fixture
def another_task_captured():
    """Another task's context was captured in this process: the guard is in place."""
    with running(probe, 'another-task'):
        cct.capture()


# ---------------------------------------- the final state is the last word


class HeldStore(object):
    """The backend's store of PROGRESS, held until ``release()``: an update in flight."""

    def __init__(self, monkeypatch):
        self.entered, self.released = threading.Event(), threading.Event()
        self.calls = []
        backend_class = type(app.backend)
        real = backend_class.store_result

        def store_result(backend, task_id, result, state, *args, **kwargs):
            if state == 'PROGRESS' and not self.entered.is_set():
                self.entered.set()
                self.released.wait(WAIT)
            self.calls.append(state)
            return real(backend, task_id, result, state, *args, **kwargs)

        monkeypatch.setattr(backend_class, 'store_result', store_result)


def test_the_final_store_waits_for_an_update_in_flight_and_lands_last(monkeypatch):
    """A thread's PROGRESS is inside the backend's store when the task returns:
    the final store waits for it, then lands; the state ends as SUCCESS."""
    held = HeldStore(monkeypatch)
    straggler = Straggler(during=False)
    straggler.go.set()  # update at once: twice, the first held in the store
    seen = {}

    def release_later():
        seen['entered'] = held.entered.wait(WAIT)
        time.sleep(0.5)  # the task has returned by now, and waits to store SUCCESS
        seen['success_before_release'] = 'SUCCESS' in held.calls
        held.released.set()

    releaser = threading.Thread(target=release_later)
    releaser.start()
    # In this thread, as the other tests: with USE_FAST_LOCALS Celery's tracer
    # pushes onto the stacks of the thread that built it.
    task_id = traced(updates_in_flight, straggler, held.entered)
    releaser.join(WAIT)
    assert seen == {'entered': True, 'success_before_release': False}, seen
    assert straggler.done.wait(WAIT) and straggler.errors == []
    # The held update first, the final state last: the straggler's second update
    # is stored before it (if it took the lock first) or dropped, never after.
    assert held.calls in (['PROGRESS', 'SUCCESS'], ['PROGRESS', 'PROGRESS', 'SUCCESS']), held.calls
    assert stored(task_id)['status'] == 'SUCCESS'


def test_the_final_store_never_waits_for_a_thread_that_is_merely_alive(warnings_logged):
    wake = threading.Event()
    started = time.time()
    task_id = traced(leaves_a_sleeper, wake)
    assert time.time() - started < 1.0  # the thread is alive and never delays the task
    assert stored(task_id)['status'] == 'SUCCESS'
    wake.set()
    assert wait_until(lambda: warnings_logged(), WAIT), 'the late update was not refused'
    assert stored(task_id)['status'] == 'SUCCESS'


def test_the_guard_forgets_a_freed_request_even_while_its_lock_is_held():
    """The guard's record of a captured request goes with the request, and its
    clean-up takes no lock: a collection may free a request in a thread that
    holds the guard's lock (inside watch()), which must not deadlock."""
    from celery.app.task import Context

    from celery_ctxthread import guard

    requests = [Context(id='freed-%d' % n) for n in range(3)]
    for request in requests:
        guard.watch(probe, request)
    keys = [id(request) for request in requests]
    assert all(guard._watch_of(request) is not None for request in requests)
    del request
    freed = []

    def free_under_the_lock():
        with guard._lock:
            del requests[:]  # the last references: each record's clean-up runs here
        freed.append(True)

    freer = threading.Thread(target=free_under_the_lock)
    freer.daemon = True  # if it deadlocks, the test fails and the process still ends
    freer.start()
    freer.join(WAIT)
    assert freed == [True], 'freeing a watched request under the guard lock deadlocked'
    assert [key for key in keys if key in guard._watched] == []


@pytest.mark.skipif(celery.VERSION < (5, 0), reason='Celery 4 has one backend for every thread')
def test_a_tasks_threads_and_jobs_store_through_its_backend_and_keep_none(monkeypatch):
    """Celery 5 keeps app.backend per thread: the task's threads and jobs store
    through the task's, and a pool thread is left with what it had before (none)."""
    used = {}
    backend_class = type(app.backend)
    real = backend_class.store_result

    def store_result(backend, task_id, result, state, *args, **kwargs):
        used[state] = backend
        return real(backend, task_id, result, state, *args, **kwargs)

    monkeypatch.setattr(backend_class, 'store_result', store_result)
    pool = cct.TaskThreadPoolExecutor(max_workers=1)
    try:
        own = kept.pop(traced(backends_seen, pool))
        assert used['FROM_THREAD'] is own and used['FROM_JOB'] is own
        # The same pool thread, outside any task, builds a backend of its own as before.
        assert pool.submit(lambda: app.backend).result(WAIT) is not own
    finally:
        pool.shutdown()


# ------------------------------------------------ stragglers: dropped


@pytest.mark.parametrize('outcome, final', [('success', 'SUCCESS'), ('failure', 'FAILURE')])
def test_a_straggler_after_the_final_state_is_dropped_with_one_warning(
    warnings_logged, outcome, final
):
    straggler = Straggler()
    task_id = traced(outlived, straggler, outcome)
    assert stored(task_id)['status'] == final
    straggler.let_go()
    assert straggler.seen_id == task_id  # it had the task's context
    assert stored(task_id)['status'] == final
    warnings = warnings_logged()
    assert len(warnings) == 1, warnings  # two updates refused, one warning
    assert task_id in warnings[0] and "'%s'" % straggler.name in warnings[0]
    assert "'PROGRESS'" in warnings[0]


@pytest.mark.parametrize(
    'outcome, signal_name, final',
    [('success', 'task_success', 'SUCCESS'), ('failure', 'task_failure', 'FAILURE')],
)
def test_a_straggler_between_the_final_store_and_postrun_is_dropped_too(
    receivers, warnings_logged, outcome, signal_name, final
):
    """The tracer stores the final state, then sends task_success/task_failure, then
    task_postrun.  A client can see the final state before task_postrun: here the
    straggler updates in that window, let go by the receiver of the task's signal."""
    straggler = Straggler()
    receivers[(signal_name, outlived.name)] = lambda task: straggler.let_go()
    task_id = traced(outlived, straggler, outcome)
    assert straggler.done.is_set() and straggler.errors == []
    assert stored(task_id)['status'] == final
    warnings = warnings_logged()
    assert len(warnings) == 1 and "'%s'" % straggler.name in warnings[0], warnings


def test_a_callback_run_on_the_tasks_own_thread_after_it_returned_is_dropped(warnings_logged):
    """Solo and prefork run every task on one thread: "the task's own thread" ends
    with the task, so a later task running the callback cannot overwrite it."""
    task_id = traced(leaves_a_callback)
    traced(runs_a_callback, kept.pop(task_id))
    assert stored(task_id)['status'] == 'SUCCESS'
    warnings = warnings_logged()
    assert len(warnings) == 1 and task_id in warnings[0], warnings


# -------------------------------------------- nothing else is dropped


HOOKS = [
    ('on_success', 'success'),
    ('task_success', 'success'),
    ('after_return', 'success'),
    ('on_failure', 'failure'),
    ('task_failure', 'failure'),
    ('after_return', 'failure'),
]


@pytest.mark.parametrize('hook, outcome', HOOKS, ids=['-'.join(pair) for pair in HOOKS])
@pytest.mark.parametrize('captures', [True, False], ids=['captured', 'never-captured'])
def test_the_tasks_own_hooks_update_after_the_final_state(
    another_task_captured, receivers, store_calls, warnings_logged, hook, outcome, captures
):
    """Celery runs the hooks and the task_success/task_failure receivers after the
    final store, in the task's own thread: their updates go through, whether this
    task captured its context or only another task did."""
    for signal_name in ('task_success', 'task_failure'):
        receivers[(signal_name, hooked.name)] = lambda task, name=signal_name: handle(
            task, name, task.request.id, task.request.args
        )
    task_id = traced(hooked, hook, outcome, captures)
    final = 'SUCCESS' if outcome == 'success' else 'FAILURE'
    assert [state for id_, state in store_calls if id_ == task_id] == [final, 'HANDLED']
    assert warnings_logged() == []
    if outcome == 'failure':  # key-value backends keep a SUCCESS whatever comes after
        assert stored(task_id)['status'] == 'HANDLED'
        assert stored(task_id)['result'] == {'by': hook}


def test_updates_for_a_task_that_never_captured_are_untouched(
    another_task_captured, warnings_logged
):
    task_id = traced(hooked, 'no hook', 'failure', False)
    assert stored(task_id)['status'] == 'FAILURE'
    in_thread(hooked.update_state, task_id, 'LATE', {'from': 'a plain thread'})
    assert stored(task_id)['result'] == {'from': 'a plain thread'}
    hooked.update_state(task_id=task_id, state='LATER', meta={'from': 'its own thread'})
    assert stored(task_id)['status'] == 'LATER'
    assert warnings_logged() == []


def test_a_thread_updating_after_ignore_is_stored(warnings_logged):
    """``raise Ignore()`` stores no final state: there is nothing to protect."""
    straggler = Straggler(during=False)
    task_id = traced(outlived, straggler, 'ignore')
    assert stored(task_id)['status'] == 'PENDING'
    straggler.let_go()
    assert stored(task_id)['status'] == 'PROGRESS'
    assert stored(task_id)['result'] == {'step': 3}
    assert warnings_logged() == []


def test_a_thread_of_an_ignore_result_task_updates_after_it_ended(warnings_logged):
    straggler = Straggler(during=False)
    task_id = traced(outlived_ignoring_result, straggler)
    assert stored(task_id)['status'] == 'PENDING'
    straggler.let_go()
    assert stored(task_id)['result'] == {'step': 3}
    assert warnings_logged() == []


def test_a_straggler_updating_another_task_id_goes_through(warnings_logged):
    other_id = 'other-%s' % uuid.uuid4().hex
    straggler = Straggler(task_id=other_id)
    task_id = traced(outlived, straggler, 'failure')
    straggler.let_go()
    assert stored(other_id)['result'] == {'step': 3}
    assert stored(task_id)['status'] == 'FAILURE'
    assert warnings_logged() == []


# ------------------------------------------------------------- retry


def test_retry_from_a_propagated_thread_raises_and_publishes_nothing(publishes):
    task_id = traced(retries_from_a_thread)
    meta = stored(task_id)
    assert meta['status'] == 'SUCCESS'
    (raised,) = meta['result']
    assert raised.startswith('RuntimeError: '), raised
    assert "'retrier-%s'" % task_id[:8] in raised and 'retry()' in raised
    assert publishes == []


def test_retry_from_the_tasks_own_thread_still_raises_retry(publishes):
    task_id = traced(retries_itself)
    assert isinstance(kept.pop(task_id), Retry)
    assert publishes == [retries_itself.name]
    assert stored(task_id)['status'] == 'RETRY'


# ------------------------------------------- what a failed job keeps


def _traceback_of(future):
    exception_info = getattr(future, 'exception_info', None)  # Python 2.7's futures
    if exception_info is not None:
        return exception_info(WAIT)[1]
    return future.exception(WAIT).__traceback__


def test_a_failed_executor_job_keeps_its_error_but_not_the_request():
    """The future keeps the job's exception and traceback; once the task has
    ended, nothing of it keeps the task's request alive."""
    with cct.TaskThreadPoolExecutor(max_workers=1) as pool:
        task_id = traced(fails_a_job, pool)
        future, request = kept.pop(task_id)
        gc.collect()
        assert request() is None, "the failed job keeps the ended task's request alive"
        assert isinstance(future.exception(WAIT), RuntimeError)
        assert _traceback_of(future) is not None


# ----------------------------------------------------- worker switch


@pytest.mark.parametrize(
    'environment, setting, expected',
    [
        (None, None, False),
        (None, True, True),
        ('1', None, True),
        ('yes', False, True),
        ('0', True, False),
        ('off', True, False),
    ],
)
def test_switch_reads_the_environment_first_then_the_setting(
    monkeypatch, environment, setting, expected
):
    if environment is None:
        monkeypatch.delenv(worker.ENVIRONMENT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(worker.ENVIRONMENT_VARIABLE, environment)
    configured = Celery('cct_switch', set_as_current=False)
    if setting is not None:
        configured.conf[worker.SETTING] = setting
    assert worker.install_requested(configured) is expected


def test_switch_rejects_a_value_it_cannot_read(monkeypatch):
    monkeypatch.setenv(worker.ENVIRONMENT_VARIABLE, 'maybe')
    with pytest.raises(ValueError, match='CELERY_CTXTHREAD_INSTALL'):
        worker.install_requested(None)


def _environment_with(value):
    return dict(os.environ, PYTHONPATH=_python_path(), CELERY_CTXTHREAD_INSTALL=value)


def test_a_value_it_cannot_read_fails_the_import():
    command = [sys.executable, '-c', 'import celery_ctxthread']
    code, output = run_bounded(command, 60, env=_environment_with('maybe'), cwd=REPO_DIR)
    assert code != 0, output
    assert 'ValueError' in output and "CELERY_CTXTHREAD_INSTALL='maybe'" in output, output


def test_a_worker_with_a_value_it_cannot_read_refuses_to_start(work_dir):
    """Raised in a signal receiver, the error would only be logged and the worker
    would run without propagation: it must stop the worker instead."""
    env = _environment_with('maybe')
    with pytest.raises(ServerError) as error:
        started = CeleryWorker(WORKER_APP, REPO_DIR, 'bad-switch', 'solo', env, work_dir, 1, 60.0)
        started.stop()  # it started: stop it, and fail below
    message = str(error.value)
    assert 'exited with' in message, message
    assert 'CELERY_CTXTHREAD_INSTALL' in message, message


# ------------------------------------------------ the core on a pristine Celery


def test_the_core_runs_on_a_pristine_celery_with_the_guard_taken_down():
    """The guard depends on the core, not the other way round: taken down, Celery's
    methods are its own again and every entry point still propagates; set up again,
    the guard is back."""
    from celery.backends.base import Backend

    from celery_ctxthread import guard

    assert guard.is_set_up()
    guard.tear_down()
    try:
        assert not guard.is_set_up()
        for owner, name in [(Task, 'update_state'), (Task, 'retry'), (Backend, 'mark_as_done')]:
            assert not hasattr(owner.__dict__[name], '__wrapped__'), (owner, name)
        with running(probe, 'pristine'):
            thread_saw = []
            thread = cct.TaskThread(target=lambda: thread_saw.append(probe.request.id))
            thread.start()
            thread.join(WAIT)
            assert thread_saw == ['pristine']
    finally:
        guard.set_up()
    assert guard.is_set_up()
    assert hasattr(Task.__dict__['update_state'], '__wrapped__')
