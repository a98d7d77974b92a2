"""Celery app and tasks for the integration tests.

The test fixtures run ``celery -A tests.helpers.integration_tasks worker`` with the
configuration in environment variables (``CCT_WORKER_*``, see
``configure_from_env``); the eager-mode tests import this module in-process
and configure ``app`` themselves.  Task names are explicit (``cct_itest.*``)
so they do not depend on how the module was imported.  Python 2.7 compatible.
"""

from __future__ import absolute_import, print_function

import concurrent.futures
import contextlib
import functools
import io
import json
import os
import threading
import time

from celery import Celery, current_task
from celery._state import _task_stack, get_current_worker_task
from celery.utils.log import get_task_logger

import celery_ctxthread as cct
from tests.helpers.servers import wait_until

logger = get_task_logger(__name__)

JOIN_TIMEOUT = 20.0

app = Celery('cct_itest', set_as_current=False)


def configure_from_env(environ=os.environ):
    app.conf.update(
        broker_url=environ.get('CCT_WORKER_BROKER_URL', 'memory://'),
        result_backend=environ.get('CCT_WORKER_RESULT_BACKEND') or None,
        result_extended=bool(environ.get('CCT_WORKER_RESULT_EXTENDED')),
        task_default_queue=environ.get('CCT_WORKER_QUEUE', 'celery'),
        task_serializer='json',
        result_serializer='json',
        accept_content=['json'],
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        # Celery 5.3+: one backend for every thread of the process.
        result_backend_thread_safe=bool(environ.get('CCT_WORKER_RESULT_BACKEND_THREAD_SAFE')),
    )
    if environ.get('CCT_WORKER_CONFIRM_PUBLISH'):  # each publish returns once RabbitMQ routed it
        app.conf.broker_transport_options = {'confirm_publish': True}


configure_from_env()

# ONE executor shared by every task of the process, created at import.
EXECUTOR = cct.TaskThreadPoolExecutor(max_workers=2)


# ------------------------------------------------------------- helpers


def seen_ids(task):
    """The task id as the calling thread sees it, three ways."""
    try:
        current = current_task.request.id
    except AttributeError:  # current_task is None
        current = None
    worker_task = get_current_worker_task()
    return {
        'current_task': current,
        'self_request': task.request.id,
        'worker_task': worker_task.request.id if worker_task else None,
        'thread': threading.current_thread().name,
    }


def wait_for_file(path, timeout):
    return wait_until(lambda: os.path.exists(path), timeout)


def wait_for_file_count(directory, prefix, count, timeout):
    def arrived():
        names = os.listdir(directory)
        return len([n for n in names if n.startswith(prefix)]) >= count

    return wait_until(arrived, timeout)


def write_json(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w') as handle:
        json.dump(data, handle)
    os.rename(tmp, path)


def read_json(path, timeout):
    """What write_json() wrote to ``path``, once it is there (``timeout`` seconds at most)."""
    assert wait_for_file(path, timeout), 'no file %s after %s s' % (path, timeout)
    with io.open(path, encoding='utf-8') as handle:
        return json.load(handle)


def touch(path):
    io.open(path, 'wb').close()


@contextlib.contextmanager
def installed():
    """cct.install() for the duration of the block (restores the old state)."""
    was_installed = cct.installed()
    cct.install()
    try:
        yield
    finally:
        if not was_installed:
            cct.uninstall()


# -------------------------------------------- ways to run a child thread


def _in_thread(make_thread, fn):
    box = {}

    def target():
        box['report'] = fn()

    thread = make_thread(target)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    return box.get('report', {'error': 'child thread gave no report'})


def _in_plain_pool(fn):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn).result(JOIN_TIMEOUT)
    finally:
        pool.shutdown(wait=False)


def _call(fn):
    return fn()


def _installed(run):
    """``run`` with cct.install() in force: plain threading classes."""

    def run_installed(fn):
        with installed():
            return run(fn)

    return run_installed


def _thread_runner(make_thread):
    return functools.partial(_in_thread, make_thread)


PLAIN_THREAD = _thread_runner(lambda t: threading.Thread(target=t))
PLAIN_TIMER = _thread_runner(lambda t: threading.Timer(0.01, t))

RUNNERS = {
    'TaskThread': _thread_runner(lambda t: cct.TaskThread(target=t)),
    'TaskTimer': _thread_runner(lambda t: cct.TaskTimer(0.01, t)),
    'executor': lambda fn: EXECUTOR.submit(fn).result(JOIN_TIMEOUT),
    'executor_map': lambda fn: next(iter(EXECUTOR.map(_call, [fn], timeout=JOIN_TIMEOUT))),
    'submit': lambda fn: cct.submit(fn).result(JOIN_TIMEOUT),
    'wrap': _thread_runner(lambda t: threading.Thread(target=cct.wrap(t))),
    'install_thread': _installed(PLAIN_THREAD),
    'install_timer': _installed(PLAIN_TIMER),
    'install_executor': _installed(_in_plain_pool),
    'plain': PLAIN_THREAD,  # the baseline: no propagation at all
}
ENTRY_POINTS = sorted(name for name in RUNNERS if name != 'plain')


# ---------------------------------------------------------------- tasks


@app.task(name='cct_itest.add')
def add(x, y):
    return x + y


def child_work(task, token, options):
    """Runs in the child thread: report ids, log, update state, subtask."""
    report = {'ids': seen_ids(task), 'error': None}
    logger.info('child log line %s', token)
    try:
        if options.get('progress'):
            by_hand = {'task_id': options['parent_id']} if options.get('by_hand') else {}
            task.update_state(state='PROGRESS', meta={'token': token, 'step': 1}, **by_hand)
        if options.get('subtask'):
            report['subtask_id'] = add.delay(2, 3).id
    except Exception as exc:  # reported back to the test
        logger.exception('child failed %s', token)
        report['error'] = '%s: %s' % (type(exc).__name__, exc)
    return report


@app.task(bind=True, name='cct_itest.probe')
def probe(self, entry, token, ack_dir, options):
    """Run child_work through the entry point ``entry``.

    Then wait (bounded by ``options['ack_timeout']``) for the file
    ``ack_dir/token``, which the test writes once it has seen PROGRESS.
    """
    options = dict(options, parent_id=self.request.id)
    report = RUNNERS[entry](functools.partial(child_work, self, token, options))
    report['parent'] = seen_ids(self)
    report['stack_flavour'] = type(_task_stack).__name__
    report['acked'] = wait_for_file(os.path.join(ack_dir, token), options.get('ack_timeout', 0))
    return report


def job_ids(task, pause):
    """An executor job: ids seen before and after a short sleep."""
    first = seen_ids(task)
    time.sleep(pause)
    return [first, seen_ids(task)]


def _later_job_without_task(task, go_file, out_file):
    """From a plain thread (no task context) submit to the shared executor."""
    if wait_for_file(go_file, JOIN_TIMEOUT):
        ids = EXECUTOR.submit(job_ids, task, 0).result(JOIN_TIMEOUT)
        write_json(out_file, ids)


@app.task(bind=True, name='cct_itest.concurrent_probe')
def concurrent_probe(self, work_dir, parties, jobs):
    """Meet the other tasks, then run ``jobs`` jobs on the shared EXECUTOR.

    Afterwards a plain thread waits for ``work_dir/go`` and submits one more
    job from outside any task, writing what it saw to
    ``work_dir/notask-<task id>.json``.
    """
    write_json(os.path.join(work_dir, 'arrived-%s' % self.request.id), {})
    met = wait_for_file_count(work_dir, 'arrived-', parties, JOIN_TIMEOUT)
    futures = [EXECUTOR.submit(job_ids, self, 0.02) for _ in range(jobs)]
    seen = [ids for f in futures for ids in f.result(JOIN_TIMEOUT)]
    later = threading.Thread(
        target=_later_job_without_task,
        args=(
            self,
            os.path.join(work_dir, 'go'),
            os.path.join(work_dir, 'notask-%s.json' % self.request.id),
        ),
    )
    later.daemon = True
    later.start()
    return {'met': met, 'seen': seen}


from tests.helpers import (  # noqa: E402,F401
    final_word_tasks,
    guard_tasks,
    lifecycle_tasks,
    neighbours_tasks,
    reliability_tasks,
)
