"""A real Celery app and task for in-process tests, and the tracer's push/pop.

No worker here: :func:`running` pushes a task and its request exactly as
``celery.app.trace.build_tracer`` does, so the library sees what it sees in a
worker.  The integration suite proves the same things on real workers; its
task modules import :func:`retry_in_a_task_thread` from here.
"""

from __future__ import absolute_import

import contextlib
import subprocess
import threading

from celery import Celery, _state
from celery.app.task import Context

app = Celery('cct_inprocess', broker='memory://', backend='cache+memory://', set_as_current=False)


@app.task(bind=True, name='cct_inprocess.probe')
def probe(self):
    return self.request.id


@app.task(bind=True, name='cct_inprocess.other')
def other(self):
    return self.request.id


# The tracer pushes the task object itself, not the proxy the decorator returns.
probe, other = probe._get_current_object(), other._get_current_object()


@contextlib.contextmanager
def running(task, task_id='task-1', app_current=True):
    """Push ``task`` and a request for ``task_id`` as the worker's tracer does."""
    previous_app = _state._tls.current_app
    if app_current:
        _state._tls.current_app = task.app
    _state._task_stack.push(task)
    task.request_stack.push(Context({'id': task_id}, args=(), kwargs={}, called_directly=False))
    try:
        yield task
    finally:
        # Tolerant of a leaky body that emptied a stack: _FastLocalStack.pop
        # raises IndexError on an empty stack.
        for stack in (task.request_stack, _state._task_stack):
            if stack.stack:
                stack.pop()
        _state._tls.current_app = previous_app


def captured_on_top(task):
    """Push ``task`` alone (no request) onto the task stack, capture, pop it."""
    import celery_ctxthread as cct

    _state._task_stack.push(task)
    try:
        return cct.capture()
    finally:
        _state._task_stack.pop()


def current_id():
    """The id of the task current on this thread, or None."""
    task = _state.get_current_task()
    return task.request.id if task is not None else None


def observe():
    """What a thread sees of Celery's context, as a plain dict."""
    task = _state.get_current_task()
    worker_task = _state.get_current_worker_task()
    return {
        'current_task': getattr(task, 'name', None),
        'current_id': current_id(),
        'probe_request_id': probe.request.id,
        'worker_task_id': worker_task.request.id if worker_task is not None else None,
        'app': _state._tls.current_app,
    }


def thread_state():
    """Everything the library may touch on this thread, to compare before/after."""
    stacks = [_state._task_stack] + [t.request_stack for t in (probe, other)]
    return [list(s.stack) for s in stacks] + [_state._tls.current_app]


def states_around(fn, *args):
    """:func:`thread_state` before and after ``fn(*args)``, on this thread."""
    before = thread_state()
    fn(*args)
    return before, thread_state()


def in_thread(fn, *args):
    """Run ``fn(*args)`` on a fresh plain thread; return its result or raise its error."""
    box = {}

    def target():
        try:
            box['result'] = fn(*args)
        except BaseException as exc:  # re-raised in the caller
            box['error'] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), 'thread did not finish within 10 s'
    if 'error' in box:
        raise box['error']
    return box['result']


def retry_in_a_task_thread(task, countdown, timeout):
    """Call ``task.retry(countdown=...)`` from a TaskThread the task starts; return
    what it raised there, as ``['Type: message']``.  Used in-process and by workers."""
    import celery_ctxthread as cct

    raised = []

    def retry():
        try:
            task.retry(countdown=countdown)
        except Exception as exc:  # what the thread saw, returned by the task
            raised.append('%s: %s' % (type(exc).__name__, exc))

    thread = cct.TaskThread(target=retry, name='retrier-%s' % task.request.id[:8])
    thread.start()
    thread.join(timeout)
    return raised


def run_bounded(command, timeout, **popen_kwargs):
    """Run ``command``; kill it after ``timeout`` s (Python 2.7 has no communicate timeout)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen_kwargs
    )
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    try:
        output = process.communicate()[0].decode('utf-8', 'replace')
    finally:
        killer.cancel()
    return process.returncode, output
