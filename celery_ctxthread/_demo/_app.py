"""The Celery app and task that ``python -m celery_ctxthread demo`` runs in its worker.

The demo process and the worker it starts both import this module; they agree
on the broker and the result backend through the environment (see ``ENV_*``).

The embedded default is kombu's filesystem transport and Celery's ``file://``
backend, each with one method replaced so that a file is never read half
written: both write in place, so a reader can find a message empty (kombu's
JSONDecodeError "Expecting value", celery/kombu#1551) and, with several
threads calling ``update_state`` at once, a result file with the tail of an
older state ("Extra data").  Here each file is written under a temporary name
and renamed into place, which is atomic within one folder.
"""

from __future__ import absolute_import, print_function

import os
import signal
import threading
import time
import uuid

from celery import Celery, current_task
from celery.backends.filesystem import FilesystemBackend
from celery.signals import worker_init
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import ensure_bytes, str_to_bytes
from kombu.utils.json import dumps

import celery_ctxthread as cct

try:
    from time import monotonic
except ImportError:  # Python 2.7
    from kombu.five import monotonic

ENV_BROKER = 'CCT_DEMO_BROKER'
ENV_BACKEND = 'CCT_DEMO_BACKEND'
ENV_QUEUE_DIR = 'CCT_DEMO_QUEUE_DIR'  # the embedded broker's folder
ENV_RESULTS_DIR = 'CCT_DEMO_RESULTS_DIR'  # the embedded backend's folder
ENV_PARENT_PID = 'CCT_DEMO_PARENT_PID'  # set in the worker's environment only
# Python 2.7: os.rename replaces the target atomically on POSIX too.
_replace = getattr(os, 'replace', os.rename)

THREAD_CLASSES = {
    'plain': 'threading.Thread',
    'task_thread': 'cct.TaskThread',
    'executor': 'cct.TaskThreadPoolExecutor',
}


def write_whole(path, data, opener=None):
    """Write ``data`` to ``path`` so that no reader ever sees part of it."""
    name = '.tmp-' + uuid.uuid4().hex  # matches no message and no result key
    if not isinstance(path, type(name)):
        name = name.encode('ascii')  # Celery's result paths are bytes
    temporary = os.path.join(os.path.dirname(path), name)
    with (opener or open)(temporary, 'wb') as handle:
        handle.write(data)
    _replace(temporary, path)


class AtomicFilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel; a message file appears only once complete."""

    def _put(self, queue, payload, **kwargs):
        # kombu's own file name: the consumer orders and matches messages by it.
        name = '%d_%s.%s.msg' % (int(round(monotonic() * 1000)), uuid.uuid4(), queue)
        path = os.path.join(self.data_folder_out, name)
        try:
            write_whole(path, str_to_bytes(dumps(payload)))
        except (IOError, OSError):
            raise ChannelError('Cannot add file %r to directory' % path)


class AtomicFilesystemTransport(filesystem.Transport):
    """kombu's filesystem transport with :class:`AtomicFilesystemChannel`."""

    Channel = AtomicFilesystemChannel


class AtomicFilesystemBackend(FilesystemBackend):
    """Celery's ``file://`` backend; a result file is replaced, never rewritten."""

    def set(self, key, value):
        write_whole(self._filename(key), ensure_bytes(value), self.open)


def file_url(folder):
    """The ``file://`` URL of ``folder``."""
    return 'file://' + folder.replace(os.sep, '/')


def make_app():
    """The demo app, configured from the environment."""
    backend = os.environ.get(ENV_BACKEND, 'cache+memory://')
    results_dir = os.environ.get(ENV_RESULTS_DIR)
    if results_dir:
        backend = 'celery_ctxthread._demo_tasks:AtomicFilesystemBackend+' + file_url(results_dir)
    app = Celery(
        'celery_ctxthread_demo',
        broker=os.environ.get(ENV_BROKER, 'memory://'),
        backend=backend,
    )
    app.conf.update(
        task_track_started=True,  # STARTED shows the task runs while no PROGRESS arrives
        worker_enable_remote_control=False,  # no fanout needed from the broker
        worker_hijack_root_logger=False,
        broker_connection_timeout=3,
        broker_connection_max_retries=1,
        redis_socket_connect_timeout=3,
        redis_socket_timeout=5,
    )
    queue_dir = os.environ.get(ENV_QUEUE_DIR)
    if queue_dir:
        app.conf.broker_transport = AtomicFilesystemTransport
        # One folder for in and out: publisher and worker share the queue files.
        app.conf.broker_transport_options = {
            'data_folder_in': queue_dir,
            'data_folder_out': queue_dir,
            # kombu >= 5.3 keeps exchange tables here; its default is ./control
            'control_folder': os.path.join(queue_dir, 'control'),
            'polling_interval': 0.05,
        }
    return app


app = make_app()


@app.task(bind=True, name='celery_ctxthread_demo.report_progress')
def report_progress(self, thread_class, threads, steps, delay, linger=0.5):
    """Run ``threads`` threads of ``thread_class`` that each report ``steps`` steps.

    Every update sends the whole ``{thread name: step}`` dict, so the client can
    draw every bar from the latest state alone.  Errors raised by
    ``update_state`` inside the threads are returned, as the user would see them.
    """
    progress = Progress(self, ['t%d' % (i + 1) for i in range(threads)])
    jobs = [(name, steps, delay * (1 + 0.2 * i)) for i, name in enumerate(progress.names)]
    if thread_class == 'executor':
        with cct.TaskThreadPoolExecutor(max_workers=threads) as pool:
            for future in [pool.submit(progress.run, *job) for job in jobs]:
                future.result()
    else:
        cls = cct.TaskThread if thread_class == 'task_thread' else threading.Thread
        started = [cls(target=progress.run, args=job) for job in jobs]
        for thread in started:
            thread.start()
        for thread in started:
            thread.join()
    # A polling client sees only states that last longer than its poll interval:
    # keep the last PROGRESS up a moment before SUCCESS replaces it.
    time.sleep(linger)
    return progress.result()


class Progress(object):
    """Per-thread steps, shared by the task's threads under one lock."""

    def __init__(self, task, names):
        self.task = task
        self.names = names
        self.steps = dict.fromkeys(names, 0)
        self.errors = []
        self.update_calls = 0
        self.seen_in_thread = None
        self.lock = threading.Lock()

    def run(self, name, steps, delay):
        """One thread's job: ``steps`` steps, each reported with update_state."""
        self._note_context()
        for step in range(1, steps + 1):
            time.sleep(delay)
            with self.lock:  # also orders the updates: a newer dict is never overwritten
                self.steps[name] = step
                self._send()

    def _send(self):
        self.update_calls += 1
        try:
            self.task.update_state(state='PROGRESS', meta={'steps': dict(self.steps)})
        except Exception as exc:  # the point of the demo: show what the user would get
            text = '%s: %s' % (type(exc).__name__, exc)
            if text not in self.errors:
                self.errors.append(text)

    def _note_context(self):
        with self.lock:
            if self.seen_in_thread is None:
                task = current_task._get_current_object()
                self.seen_in_thread = {
                    'current_task': getattr(task, 'name', None),
                    'request_id': self.task.request.id,
                }

    def result(self):
        """What the task returns: the worker's own view of the run."""
        return {
            'worker_steps': self.steps,
            'errors': self.errors,
            'update_calls': self.update_calls,
            'seen_in_thread': self.seen_in_thread,
        }


@worker_init.connect
def _watch_parent(**kwargs):
    """Stop this worker if the demo that started it dies, even by SIGKILL."""
    parent = os.environ.get(ENV_PARENT_PID)
    if parent and os.name == 'posix':  # os.kill(pid, 0) would end the process on Windows
        watchdog = threading.Thread(target=_exit_when_gone, args=(int(parent),))
        watchdog.daemon = True
        watchdog.start()


def _exit_when_gone(pid):
    while _alive(pid):
        time.sleep(0.5)
    # Our process group holds the worker and any pool children.
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == 1  # EPERM: alive, owned by someone else
    return True
