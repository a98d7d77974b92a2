"""The demo's Celery app, for the demo's client and for its worker (see ``_tasks``).

:func:`make_app` builds it from a mapping of the ``KEY_*`` variables: the
client passes its own mapping, and the worker reads the same keys from the
environment the client started it with.  Nothing happens at import.

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
import uuid

from celery import Celery
from celery.backends.filesystem import FilesystemBackend
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import ensure_bytes, str_to_bytes
from kombu.utils.json import dumps

try:
    from time import monotonic
except ImportError:  # Python 2.7
    from kombu.five import monotonic

TASK_NAME = 'celery_ctxthread_demo.report_progress'
# The configuration make_app() reads: the worker finds it in its environment.
KEY_BROKER = 'CCT_DEMO_BROKER'
KEY_BACKEND = 'CCT_DEMO_BACKEND'
KEY_QUEUE_DIR = 'CCT_DEMO_QUEUE_DIR'  # the embedded broker's folder
KEY_RESULTS_DIR = 'CCT_DEMO_RESULTS_DIR'  # the embedded backend's folder
KEY_PARENT_PID = 'CCT_DEMO_PARENT_PID'  # the worker's only: the demo's pid
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


def make_app(config, set_as_current=False):
    """The demo app, configured from the ``KEY_*`` entries of the mapping ``config``."""
    backend = config.get(KEY_BACKEND, 'cache+memory://')
    results_dir = config.get(KEY_RESULTS_DIR)
    if results_dir:
        backend = '%s:%s+%s' % (__name__, AtomicFilesystemBackend.__name__, file_url(results_dir))
    app = Celery(
        'celery_ctxthread_demo',
        broker=config.get(KEY_BROKER, 'memory://'),
        backend=backend,
        set_as_current=set_as_current,
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
    queue_dir = config.get(KEY_QUEUE_DIR)
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
