"""Fixtures for the integration suite: real Redis, RabbitMQ and Celery workers.

Servers are session-scoped and started on first use; workers are started
once per (backend, pool) and reused by every test that asks for them.  A
missing server binary or client library skips on a laptop but fails when
the ``CI`` environment variable is set.
"""

from __future__ import absolute_import, print_function

import os
import signal
import sys
import threading

import celery
import pytest

from tests.helpers import servers

try:
    import contextvars
except ImportError:  # Python 2.7
    contextvars = None

# For the tests that need contextvars; imported from here by their modules.
needs_contextvars = pytest.mark.skipif(
    contextvars is None, reason='contextvars: Python 3.7+, or the backport on 3.6'
)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TESTS_DIR)
WORKER_APP = 'tests.helpers.integration_tasks'


def _importable(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# prefork and solo on every Celery; the threads pool exists from 4.4 on; the
# greenlet pools wherever the cell installs them (the -gevent cells).
# With USE_FAST_LOCALS the threads pool loses the task in Celery itself: the
# tracer binds _task_stack.push to the thread that built it, so even the task's
# own thread has no current_task (test_fast_locals_threads_pool_limitation).
FAST_LOCALS = bool(os.environ.get('USE_FAST_LOCALS'))
THREADS_POOL_WORKS = celery.VERSION >= (4, 4) and not FAST_LOCALS
POOLS = ('prefork', 'solo')
POOLS += ('threads',) if THREADS_POOL_WORKS else ()
POOLS += tuple(pool for pool in ('gevent', 'eventlet') if _importable(pool))
# CCT_POOLS=gevent,eventlet (the -gevent cells, whose base cell runs the others): only those.
if os.environ.get('CCT_POOLS'):
    POOLS = tuple(pool for pool in POOLS if pool in os.environ['CCT_POOLS'].split(','))
# Pools that run two tasks at once (the shared-executor test needs that).
CONCURRENT_POOLS = tuple(pool for pool in POOLS if pool != 'solo')
BACKEND_KINDS = ('rabbitmq', 'redis', 'sqlite')


def unavailable(reason):
    """Skip, or fail when running under CI (where everything must run)."""
    if os.environ.get('CI'):
        pytest.fail('%s (CI is set: failing instead of skipping)' % reason)
    pytest.skip(reason)


def require_binary(name):
    path = servers.find_binary(name)
    if path is None:
        unavailable('%s not found on PATH or in the usual places' % name)
    return path


def require_module(name):
    try:
        __import__(name)
    except ImportError as exc:
        unavailable('Python module %s is not importable: %s' % (name, exc))


@pytest.fixture(scope='session')
def work_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('cct-integration'))


def _session_server(request, start):
    server = start()
    request.addfinalizer(server.stop)
    return server


@pytest.fixture(scope='session')
def redis_server(request, work_dir):
    binary = require_binary('redis-server')
    require_module('redis')
    return _session_server(request, lambda: servers.start_redis(binary, work_dir))


@pytest.fixture(scope='session')
def rabbitmq_server(request, work_dir):
    binary = require_binary('rabbitmq-server')
    epmd = require_binary('epmd')
    return _session_server(request, lambda: servers.start_rabbitmq(binary, epmd, work_dir))


def sqlite_results_url(work_dir):
    """One SQLite result database per session: Celery 4's SessionManager
    creates the tables only for the first database a process uses."""
    return 'db+sqlite:///' + os.path.join(work_dir, 'results.sqlite')


def _urls(kind, server, work_dir):
    """(broker URL, result backend URL, result_extended) for a worker."""
    if kind == 'rabbitmq':
        return server.url(), 'rpc://', False
    if kind == 'redis':
        return server.url(0), server.url(0), True
    return server.url(1), sqlite_results_url(work_dir), False


def _python_path():
    """The worker imports ``tests.*`` and the same celery_ctxthread as we do."""
    import celery_ctxthread

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(celery_ctxthread.__file__)))
    paths = [REPO_DIR, package_parent]
    if os.environ.get('PYTHONPATH'):
        paths.append(os.environ['PYTHONPATH'])
    return os.pathsep.join(paths)


class WorkerHandle(object):
    """A running worker plus a client app configured like it."""

    def __init__(self, kind, pool, server, work_dir, extra_env=None, name=None, concurrency=4):
        self.kind = kind
        self.pool = pool
        self.extra_env = dict(extra_env or {})
        if name is None:
            suffix = ''.join('-%s' % value for _, value in sorted(self.extra_env.items()))
            name = '%s-%s%s' % (kind, pool, suffix.lower())
        self.name = name
        self.ack_dir = os.path.join(work_dir, 'acks-' + self.name)
        os.makedirs(self.ack_dir)
        broker, backend, extended = _urls(kind, server, work_dir)
        queue = 'cct-itest-' + self.name
        self.client = celery.Celery(
            'cct-client-' + self.name, broker=broker, backend=backend, set_as_current=False
        )
        self.client.conf.update(task_default_queue=queue, result_extended=extended)
        if kind == 'sqlite':
            # Create the tables before the worker's processes race to.
            self.client.backend.get_task_meta('warm-up')
        env = dict(
            os.environ,
            PYTHONPATH=_python_path(),
            PYTHONUNBUFFERED='1',
            CCT_WORKER_BROKER_URL=broker,
            CCT_WORKER_RESULT_BACKEND=backend,
            CCT_WORKER_RESULT_EXTENDED='1' if extended else '',
            CCT_WORKER_QUEUE=queue,
        )
        env.update(self.extra_env)
        self.process = servers.CeleryWorker(
            WORKER_APP, REPO_DIR, self.name, pool, env, work_dir, concurrency=concurrency
        )

    def log_text(self):
        return self.process.log_text()

    def stop(self):
        self.process.stop()
        self.client.close()


class WorkerRegistry(object):
    """Starts each (kind, pool) worker once per session, stops all at end."""

    def __init__(self, work_dir):
        self.work_dir = work_dir
        self.started = {}

    def get(self, kind, pool, server, extra_env=None):
        key = (kind, pool, tuple(sorted((extra_env or {}).items())))
        if key not in self.started:
            self.started[key] = WorkerHandle(kind, pool, server, self.work_dir, extra_env)
        handle = self.started[key]
        assert handle.process.alive(), 'worker %s died; log tail:\n%s' % (
            handle.name,
            handle.log_text()[-4000:],
        )
        return handle

    def stop_all(self):
        stop_workers(list(self.started.values()))


def stop_workers(handles):
    """Shut ``handles`` down in parallel, then wait for each."""
    for handle in handles:
        handle.process.terminate()
    for handle in handles:
        handle.stop()


@pytest.fixture(scope='session')
def worker_registry(request, work_dir):
    registry = WorkerRegistry(work_dir)
    request.addfinalizer(registry.stop_all)
    return registry


def _server(request, kind):
    """The session's server for a worker of backend ``kind`` (SQLite: Redis as broker)."""
    if kind == 'sqlite':
        require_module('sqlalchemy')
    return request.getfixturevalue('rabbitmq_server' if kind == 'rabbitmq' else 'redis_server')


def _worker(request, registry, kind, pool, extra_env=None):
    return registry.get(kind, pool, _server(request, kind), extra_env)


def _combos(kinds, pools=POOLS):
    return [
        pytest.param((kind, pool), id='%s-%s' % (kind, pool)) for kind in kinds for pool in pools
    ]


@pytest.fixture(scope='module', params=_combos(BACKEND_KINDS))
def worker(request, worker_registry):
    """A worker on every backend (rpc, Redis, SQLite) and pool."""
    return _worker(request, worker_registry, *request.param)


@pytest.fixture(scope='module', params=_combos(('redis',)))
def redis_worker(request, worker_registry):
    """A worker with the Redis backend and ``result_extended=True``."""
    return _worker(request, worker_registry, *request.param)


@pytest.fixture(scope='module', params=_combos(BACKEND_KINDS, CONCURRENT_POOLS))
def concurrent_worker(request, worker_registry):
    """A worker on every backend whose pool runs several tasks at once."""
    return _worker(request, worker_registry, *request.param)


@pytest.fixture(scope='module', params=['prefork', 'solo'])
def switched_worker(request, worker_registry):
    """A Redis worker started with the worker-wide switch in its environment."""
    env = {'CELERY_CTXTHREAD_INSTALL': '1'}
    return _worker(request, worker_registry, 'redis', request.param, env)


@pytest.fixture(scope='module')
def eager_tasks(work_dir):
    """tests.helpers.integration_tasks with ``task_always_eager`` and a SQLite backend."""
    require_module('sqlalchemy')
    from tests.helpers import integration_tasks

    conf = integration_tasks.app.conf
    saved = {
        key: conf[key] for key in ('task_always_eager', 'task_eager_propagates', 'result_backend')
    }
    conf.update(result_backend=sqlite_results_url(work_dir))
    integration_tasks.app.backend.get_task_meta('warm-up')  # create tables
    conf.update(task_always_eager=True, task_eager_propagates=True)
    yield integration_tasks
    conf.update(saved)


@pytest.fixture
def installed():
    """``cct.install()`` for the test; undone after it unless it was installed before."""
    import celery_ctxthread as cct

    was_installed = cct.installed()
    cct.install()
    yield
    if not was_installed:
        cct.uninstall()


@pytest.fixture
def uninstalled():
    """For tests that call install(): uninstall() after the test, and check that it took."""
    import celery_ctxthread as cct

    yield
    cct.uninstall()
    assert not cct.installed()


def _interrupt(signum, frame):
    raise KeyboardInterrupt('signal %d' % signum)


def pytest_configure(config):
    """On SIGTERM (e.g. a time limit), unwind like Ctrl-C so that the
    fixtures' teardown stops every server and worker."""
    if (
        threading.current_thread().name == 'MainThread'
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_report_header(config):
    return 'celery %s, python %s' % (celery.__version__, sys.version.split()[0])


class DedicatedWorker(WorkerHandle):
    """A worker of its own for one test: its own queue, log and concurrency.

    Not shared through the registry, so a test may kill its processes or shut
    it down without disturbing the shared workers.  Configured like a shared
    worker of the same backend kind.
    """

    counter = [0]

    def __init__(self, kind, pool, server, work_dir, label, concurrency=4, extra_env=None):
        self.counter[0] += 1
        name = 'own-%s-%d-%s-%s' % (label, self.counter[0], kind, pool)
        self.server = server
        super(DedicatedWorker, self).__init__(
            kind, pool, server, work_dir, extra_env, name=name, concurrency=concurrency
        )

    @property
    def main_pid(self):
        return self.process.process.proc.pid


@pytest.fixture
def dedicated_worker(request, work_dir):
    """A factory: ``dedicated_worker(kind, pool, label, concurrency=4, extra_env=None)``
    starts a worker used by this test only; every one it started is stopped afterwards."""
    started = []

    def start(kind, pool, label, concurrency=4, extra_env=None):
        server = _server(request, kind)
        handle = DedicatedWorker(kind, pool, server, work_dir, label, concurrency, extra_env)
        started.append(handle)
        return handle

    yield start
    stop_workers(started)
