"""A task's threads learn that it is over: cancelled(), checkpoint(), wait_cancelled(), cancel().

Tasks run through Celery's real tracer (``build_tracer`` with ``eager=False``,
as a worker runs them), built at import as a worker builds them at start.
The same on real workers, per pool and per event: tests/integration/test_lifecycle.py.
"""

from __future__ import absolute_import

import gc
import logging
import threading
import time
import uuid
import weakref
from concurrent.futures import CancelledError
from concurrent.futures import wait as futures_wait

import pytest
from celery import Celery
from celery.app.trace import build_tracer
from celery.exceptions import Ignore

import celery_ctxthread as cct
from celery_ctxthread import lifecycle
from tests.conftest import FAST_LOCALS

WAIT = 10

app = Celery('cct_life', broker='memory://', backend='cache+memory://', set_as_current=False)


class Watcher(object):
    """A TaskThread that reports what it sees while its task runs, then once it is over."""

    def __init__(self):
        self.name = 'watcher-%s' % uuid.uuid4().hex[:8]
        self.started, self.done = threading.Event(), threading.Event()
        self.during = None  # cancelled() while the task runs
        self.woke_after = None  # seconds wait_cancelled() slept
        self.after = None  # cancelled() once woken
        self.raised = None  # what checkpoint() raised once woken

    def start(self):
        cct.TaskThread(target=self._run, name=self.name).start()
        assert self.started.wait(WAIT), 'the watcher did not start within %d s' % WAIT

    def _run(self):
        self.during = (cct.cancelled(), _checkpoint_raises())
        self.started.set()
        begun = time.time()
        woken = cct.wait_cancelled(WAIT)
        self.woke_after = time.time() - begun
        self.after = (woken, cct.cancelled())
        self.raised = _checkpoint_raises()
        self.done.set()

    def wait(self):
        assert self.done.wait(WAIT + 5), 'the watcher did not finish'
        return self


def _checkpoint_raises():
    try:
        cct.checkpoint()
    except cct.TaskOver as over:
        return over
    return None


def end_with(outcome):
    if outcome == 'failure':
        raise RuntimeError('failing on purpose')
    if outcome == 'ignore':
        raise Ignore()
    return outcome


# ------------------------------------------------------------------ tasks


@app.task(bind=True, name='cct_life.watched')
def watched(self, watcher, outcome, before_end=None):
    watcher.start()
    if before_end is not None:
        before_end(self)
    return end_with(outcome)


@app.task(bind=True, name='cct_life.watched_ignoring_result', ignore_result=True)
def watched_ignoring_result(self, watcher):
    watcher.start()
    return 'nothing stored'


@app.task(bind=True, name='cct_life.holds')
def holds(self, watcher, release):
    """Start ``watcher``, then stay running until ``release`` is set."""
    watcher.start()
    assert release.wait(WAIT), 'not released within %d s' % WAIT
    return 'released'


@app.task(bind=True, name='cct_life.keeps_a_callback')
def keeps_a_callback(self, kept):
    kept.append(cct.wrap(lambda: (cct.cancelled(), _checkpoint_raises())))
    kept.append(cct.capture())


def traced(task, *args, **options):
    """Run ``task(*args)`` through its tracer, as a worker does; return the task id.

    The tracer is built in the calling thread, as a worker's pool thread has
    its own: with ``USE_FAST_LOCALS`` a tracer binds the stacks' ``push`` to
    the lists of the thread that built it.
    """
    task_id = options.get('task_id') or str(uuid.uuid4())
    request = {'id': task_id, 'delivery_info': {}, 'hostname': 'cct-inprocess'}
    tracer = build_tracer(task.name, task, app=app, eager=False, propagate=False)
    tracer(task_id, list(args), {}, request)
    return task_id


@pytest.fixture
def states_at_store(monkeypatch):
    """(task id, state, whether its threads' record was over) at each store_result."""
    calls = []
    backend_class = type(app.backend)
    real = backend_class.store_result

    def store_result(self, task_id, result, state, *args, **kwargs):
        record = lifecycle._by_id.get(task_id)
        calls.append((task_id, state, record is not None and record.over))
        return real(self, task_id, result, state, *args, **kwargs)

    monkeypatch.setattr(backend_class, 'store_result', store_result)
    return calls


# ------------------------------------------------------------------ tests


def test_outside_any_task_nothing_is_cancelled():
    assert cct.cancelled() is False
    assert cct.checkpoint() is None
    begun = time.time()
    assert cct.wait_cancelled(0.05) is False
    assert time.time() - begun >= 0.04
    assert cct.cancel() is False  # no task here: nothing to tell
    assert cct.cancel('no-such-task') is False


def test_reasons_are_distinct_strings():
    assert len(set(cct.REASONS)) == 6
    assert cct.REASONS == (
        cct.RETURNED,
        cct.FAILED,
        cct.SOFT_TIME_LIMIT,
        cct.REVOKED,
        cct.WORKER_SHUTDOWN,
        cct.CANCELLED_BY_HAND,
    )
    with pytest.raises(ValueError):
        cct.cancel('some-task', reason='bored')


@pytest.mark.parametrize(
    'outcome, reason, state',
    [('returned', cct.RETURNED, 'SUCCESS'), ('failure', cct.FAILED, 'FAILURE')],
)
def test_thread_sees_its_task_over_before_the_final_store(states_at_store, outcome, reason, state):
    watcher = Watcher()
    task_id = traced(watched, watcher, outcome)
    watcher.wait()
    assert watcher.during == (False, None)  # while the task ran
    assert watcher.after == (True, True)
    assert watcher.woke_after < 0.5  # woken, not timed out
    assert isinstance(watcher.raised, cct.TaskOver)
    assert (watcher.raised.reason, watcher.raised.task_id) == (reason, task_id)
    assert reason in str(watcher.raised) and task_id in str(watcher.raised)
    assert (task_id, state, True) in states_at_store  # over when the final state was stored


def test_ignored_task_is_over_at_postrun():
    watcher = Watcher()
    task_id = traced(watched, watcher, 'ignore')
    assert watcher.wait().raised.reason == cct.FAILED
    assert watcher.raised.task_id == task_id
    watcher = Watcher()
    traced(watched_ignoring_result, watcher)
    assert watcher.wait().raised.reason == cct.RETURNED


def test_threads_of_another_task_see_nothing():
    """Task B runs (in another thread) while task A ends: B's thread stays live."""
    watcher_b, release_b = Watcher(), threading.Event()
    runner = threading.Thread(target=traced, args=(holds, watcher_b, release_b))
    runner.start()
    try:
        assert watcher_b.started.wait(WAIT)
        watcher_a = Watcher()
        traced(watched, watcher_a, 'failure')
        assert watcher_a.wait().after == (True, True)
        time.sleep(0.1)
        assert not watcher_b.done.is_set()  # B's wait_cancelled() still sleeps
    finally:
        release_b.set()
        runner.join(WAIT)
    assert watcher_b.wait().raised.reason == cct.RETURNED


def test_cancel_by_id_and_from_the_task():
    watcher, release = Watcher(), threading.Event()
    task_id = str(uuid.uuid4())
    runner = threading.Thread(
        target=traced, args=(holds, watcher, release), kwargs={'task_id': task_id}
    )
    runner.start()
    try:
        assert watcher.started.wait(WAIT)
        begun = time.time()
        assert cct.cancel(task_id) is True
        assert watcher.wait().raised.reason == cct.CANCELLED_BY_HAND
        assert time.time() - begun < 0.5
        assert cct.cancel(task_id) is False  # told already
    finally:
        release.set()
        runner.join(WAIT)

    watcher = Watcher()
    traced(watched, watcher, 'returned', lambda task: cct.cancel(reason=cct.REVOKED))
    assert watcher.wait().raised.reason == cct.REVOKED  # the first reason wins


def test_callbacks_and_runs_after_the_task_see_it_over():
    kept = []
    traced(keeps_a_callback, kept)
    callback, context = kept
    over = callback()
    assert over[0] is True and over[1].reason == cct.RETURNED
    assert context.run(cct.cancelled) is True
    assert cct.cancelled() is False  # only while running in it


def test_the_tasks_own_thread_is_not_told(states_at_store):
    seen = []

    def look(task):
        cct.cancel()
        seen.append(cct.cancelled())

    watcher = Watcher()
    traced(watched, watcher, 'returned', look)
    assert seen == [False]
    assert watcher.wait().raised.reason == cct.CANCELLED_BY_HAND


def test_task_over_pickles():
    import pickle

    over = pickle.loads(pickle.dumps(cct.TaskOver(cct.REVOKED, 'abc')))
    assert (over.reason, over.task_id) == (cct.REVOKED, 'abc')


def test_wait_cancelled_outside_a_task_sleeps_its_timeout():
    begun = time.time()
    assert cct.wait_cancelled(0.2) is False
    assert 0.15 <= time.time() - begun < 2


def test_no_warning_or_record_for_a_task_without_threads(caplog):
    caplog.set_level(logging.WARNING, logger='celery_ctxthread')
    task_id = traced(watched, _NoThread(), 'returned')
    assert task_id not in lifecycle._by_id
    assert caplog.records == []


class _NoThread(object):
    def start(self):
        pass


# ------------------------------------------------- queued jobs of an over task


@app.task(bind=True, name='cct_life.queues_and_fails')
def queues_and_fails(self, pool, jobs, seconds, kept):
    """Queue ``jobs`` jobs of ``seconds`` each on a two-worker ``pool``; fail once
    two of them have started (the pool starts its threads lazily: failing at once
    left only one running now and then), without waiting for the rest."""
    futures = [pool.submit(_sleep_and_look, seconds) for _ in range(jobs)]
    kept.extend(futures)
    deadline = time.time() + WAIT
    while sum(f.running() or f.done() for f in futures) < min(jobs, 2):
        assert time.time() < deadline, 'two jobs did not start within %d s' % WAIT
        time.sleep(0.005)
    raise RuntimeError('failing with jobs queued')


@app.task(bind=True, name='cct_life.one_job')
def one_job(self, pool):
    """Submit one job; return how long it waited to start."""
    submitted = time.time()
    return pool.submit(time.time).result(WAIT) - submitted


def _sleep_and_look(seconds):
    time.sleep(seconds)
    return cct.cancelled()


def test_queued_jobs_of_a_failed_task_never_run():
    """Six queued 1-s jobs of a failed task on a two-worker pool: the next task's job
    starts within 1 s (3 s if they all ran); the two already running see cancelled()."""
    pool, kept = cct.TaskThreadPoolExecutor(max_workers=2), []
    try:
        traced(queues_and_fails, pool, 6, 1.0, kept)
        task_id = traced(one_job, pool)
        waited = app.backend.get_task_meta(task_id)['result']
        # The two jobs running when it failed take 1 s; the four queued never run (3 s if
        # they did). A little over 1 s is scheduling: 1.00025 s seen on 2.7.
        assert waited < 1.2, 'the next task waited %.2f s' % waited
        futures_wait(kept, WAIT)
        never_ran = [future for future in kept if future.cancelled()]
        assert len(never_ran) == 4, kept  # cancelled, as Future.cancel() leaves them
        with pytest.raises(CancelledError):
            never_ran[0].result(0)
        ran = [future.result(0) for future in kept if not future.cancelled()]
        assert ran == [True, True]  # ran; saw it over on waking
    finally:
        pool.shutdown(wait=True)


def test_jobs_outlive_their_task_when_asked():
    pool, kept = cct.TaskThreadPoolExecutor(max_workers=2, jobs_outlive_task=True), []
    try:
        traced(queues_and_fails, pool, 6, 0.1, kept)
        assert [future.result(WAIT) for future in kept] == [True] * 6  # ran, and saw it over
    finally:
        pool.shutdown(wait=True)


def test_a_job_submitted_after_its_task_is_over_is_cancelled():
    pool, kept = cct.TaskThreadPoolExecutor(max_workers=1), []
    try:
        traced(keeps_a_callback, kept)
        blocker = pool.submit(time.sleep, 0.3)  # outside any task: runs
        late = kept[1].run(pool.submit, time.time)  # submitted from the over task's context
        assert blocker.result(WAIT) is None
        futures_wait([late], WAIT)
        assert late.cancelled(), late
    finally:
        pool.shutdown(wait=True)


# ----------------------------------------------------------------- stragglers


class Looper(object):
    """A TaskThread with a cooperative loop (``cooperative``) or one that ignores its task."""

    def __init__(self, cooperative=True, last_update=False):
        self.name = 'looper-%s' % uuid.uuid4().hex[:8]
        self.cooperative, self.last_update = cooperative, last_update
        self.started, self.stopped = threading.Event(), threading.Event()

    def start(self, task):
        thread = cct.TaskThread(target=self._run, args=(task,), name=self.name)
        self.thread = weakref.ref(thread)
        thread.start()
        assert self.started.wait(WAIT)

    def _run(self, task):
        self.record = lifecycle._active_record()  # its task's, for the tests to look at
        self.started.set()
        if self.cooperative:
            while not cct.wait_cancelled(0.05):
                pass
        else:
            time.sleep(1.5)
        if self.last_update:
            task.update_state(state='LAST')
        self.stopped.set()


@app.task(bind=True, name='cct_life.loops')
def loops(self, loopers):
    for looper in loopers:
        looper.start(self)
    return 'returned'


@pytest.fixture
def settings():
    """app.conf, with this module's settings back to their defaults afterwards."""
    yield app.conf
    app.conf.update(ctxthread_join_timeout=None, ctxthread_warn_stragglers=True)


def lifecycle_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == 'celery_ctxthread.lifecycle']


no_stack_entries = pytest.mark.skipif(
    FAST_LOCALS, reason='USE_FAST_LOCALS: no task stack entry names the threads in a context'
)


@no_stack_entries
def test_one_warning_names_the_threads_still_alive(caplog, settings):
    caplog.set_level(logging.WARNING, logger='celery_ctxthread.lifecycle')
    stuck, stopping = Looper(cooperative=False), Looper()
    task_id = traced(loops, [stuck, stopping])
    warnings = lifecycle_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert task_id in warnings[0] and repr(stuck.name) in warnings[0]
    assert stuck.stopped.wait(WAIT) and stopping.stopped.wait(WAIT)

    settings.update(ctxthread_warn_stragglers=False)
    caplog.clear()
    stuck = Looper(cooperative=False)
    traced(loops, [stuck])
    assert lifecycle_warnings(caplog) == []
    assert stuck.stopped.wait(WAIT)


@no_stack_entries
def test_bounded_join_before_the_final_store(caplog, settings, states_at_store):
    """With ctxthread_join_timeout a cooperative thread's last update lands before
    the final state; a thread that ignores its task only delays the store that long."""
    caplog.set_level(logging.WARNING, logger='celery_ctxthread.lifecycle')
    settings.update(ctxthread_join_timeout=1.0)
    looper = Looper(last_update=True)
    task_id = traced(loops, [looper])
    assert looper.stopped.is_set()  # joined before the task returned
    states = [state for stored_id, state, _ in states_at_store if stored_id == task_id]
    assert states == ['LAST', 'SUCCESS']
    assert lifecycle_warnings(caplog) == []

    settings.update(ctxthread_join_timeout=0.3)
    stuck = Looper(cooperative=False)
    begun = time.time()
    task_id = traced(loops, [stuck])
    assert 0.25 <= time.time() - begun < 1.2  # waited for the join, not for the thread
    assert len(lifecycle_warnings(caplog)) == 1
    assert stuck.stopped.wait(WAIT)


def test_the_record_keeps_no_finished_thread_alive():
    looper = Looper()
    traced(loops, [looper])
    record = looper.record  # kept: nothing it holds may keep the thread
    assert looper.stopped.wait(WAIT)
    thread = looper.thread()
    if thread is not None:
        thread.join(WAIT)
    del thread
    gc.collect()
    assert looper.thread() is None
    assert record.running() == []
