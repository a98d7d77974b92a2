"""Start and stop real servers (Redis, RabbitMQ) and Celery workers for tests.

Everything listens on 127.0.0.1 on free ports and keeps its files in a
temporary directory.  Every wait is bounded.  Python 2.7 compatible.  The
process control (:class:`ManagedProcess`, :class:`CeleryWorker`, ``wait_until``)
is the demo's, imported on purpose: ``celery_ctxthread._demo._process`` is the
one module the demo and the tests share (its docstring says why).
"""

from __future__ import absolute_import, print_function

import glob
import os
import socket

from celery_ctxthread._demo import _process
from celery_ctxthread._demo._process import ManagedProcess

# What the fixtures and the tests take from here.
CeleryWorker = _process.CeleryWorker
ServerError = _process.StartError
wait_until = _process.wait_until

LOOPBACK = '127.0.0.1'


def pid_alive(pid):
    """Whether process ``pid`` runs: a zombie (exited, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (IOError, OSError):  # no /proc: kill() said it exists
        return True


# Looked at after $PATH.  Debian puts the real RabbitMQ start script in
# /usr/lib/rabbitmq/bin; /usr/sbin/rabbitmq-server is a wrapper that switches
# to the ``rabbitmq`` user when run as root, so the real script comes first.
PREFERRED_DIRS = {'rabbitmq-server': ('/usr/lib/rabbitmq/bin',)}
FALLBACK_DIRS = (
    '/usr/local/sbin',
    '/usr/local/bin',
    '/usr/sbin',
    '/usr/bin',
    '/sbin',
    '/opt/homebrew/bin',
    '/opt/homebrew/sbin',
)
FALLBACK_GLOBS = {
    'epmd': (
        '/usr/lib/erlang/erts-*/bin/epmd',
        '/usr/lib/erlang/bin/epmd',
        '/usr/local/lib/erlang/erts-*/bin/epmd',
    )
}


def _is_executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _path_dirs():
    return [d for d in os.environ.get('PATH', '').split(os.pathsep) if d]


def find_binary(name):
    """Absolute path of the executable ``name``, or None."""
    dirs = list(PREFERRED_DIRS.get(name, ())) + _path_dirs()
    dirs += list(FALLBACK_DIRS)
    for directory in dirs:
        candidate = os.path.join(directory, name)
        if _is_executable(candidate):
            return candidate
    for pattern in FALLBACK_GLOBS.get(name, ()):
        for candidate in sorted(glob.glob(pattern), reverse=True):
            if _is_executable(candidate):
                return candidate
    return None


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _makedirs(path):
    if not os.path.isdir(path):
        os.makedirs(path)
    return path


def _start_with_retries(start, attempts=3):
    """Run ``start()``; a free port may be taken meanwhile, so retry."""
    for attempt in range(attempts):
        try:
            return start()
        except ServerError:
            if attempt == attempts - 1:
                raise


# --------------------------------------------------------------- Redis


def redis_ping(port):
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=1.0)
    except (socket.error, OSError):
        return False
    try:
        sock.sendall(b'PING\r\n')
        return sock.recv(64).startswith(b'+PONG')
    except (socket.error, OSError):
        return False
    finally:
        sock.close()


class RedisServer(object):
    def __init__(self, binary, base_dir, timeout=30.0):
        self.port = free_port()
        self.dir = _makedirs(os.path.join(base_dir, 'redis-%d' % self.port))
        argv = [
            binary,
            '--port',
            str(self.port),
            '--bind',
            LOOPBACK,
            '--dir',
            self.dir,
            '--save',
            '',
            '--appendonly',
            'no',
            '--daemonize',
            'no',
            '--logfile',
            '',
        ]
        self.process = ManagedProcess(
            'redis-server', argv, os.path.join(self.dir, 'redis.log'), cwd=self.dir
        )
        self.process.wait_ready(
            lambda: redis_ping(self.port), timeout, 'PING on port %d' % self.port
        )

    def url(self, db=0):
        return 'redis://%s:%d/%d' % (LOOPBACK, self.port, db)

    def stop(self):
        self.process.stop()


def start_redis(binary, base_dir):
    return _start_with_retries(lambda: RedisServer(binary, base_dir))


# ------------------------------------------------------------ RabbitMQ


# Erlang distribution (node-to-node) listener on loopback only.
DIST_ON_LOOPBACK = '-kernel inet_dist_use_interface {127,0,0,1}'


def amqp_ready(url):
    """True when an AMQP connection to ``url`` can be opened."""
    from kombu import Connection

    conn = Connection(url, connect_timeout=2)
    try:
        conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # any failure means "not yet"
        return False
    finally:
        conn.release()


def _write(path, text):
    with open(path, 'w') as handle:
        handle.write(text)
    return path


class RabbitServer(object):
    """A private RabbitMQ node with its own epmd, no plugins, no config."""

    def __init__(self, binary, epmd_binary, base_dir, timeout=90.0):
        self.port = free_port()
        self.dir = _makedirs(os.path.join(base_dir, 'rabbit-%d' % self.port))
        self.epmd_port = free_port()
        # Our own epmd in the foreground, so it dies with the fixture.
        self.epmd = ManagedProcess(
            'epmd',
            [epmd_binary, '-port', str(self.epmd_port), '-address', LOOPBACK],
            os.path.join(self.dir, 'epmd.log'),
            cwd=self.dir,
        )
        self.process = ManagedProcess(
            'rabbitmq-server',
            [binary],
            os.path.join(self.dir, 'stdout.log'),
            env=self._env(),
            cwd=self.dir,
        )
        try:
            self.process.wait_ready(
                lambda: amqp_ready(self.url()), timeout, 'AMQP on port %d' % self.port
            )
        except ServerError:
            self.epmd.stop()
            raise

    def _env(self):
        env = dict(os.environ)
        for key in list(env):
            if key.startswith('RABBITMQ_'):
                del env[key]
        join = os.path.join
        env.update(
            {
                'HOME': self.dir,  # the Erlang cookie is written here
                'ERL_EPMD_PORT': str(self.epmd_port),
                'ERL_EPMD_ADDRESS': LOOPBACK,
                'RABBITMQ_NODENAME': 'cct-%d-%d@localhost' % (os.getpid(), self.port),
                'RABBITMQ_NODE_IP_ADDRESS': LOOPBACK,
                'RABBITMQ_NODE_PORT': str(self.port),
                'RABBITMQ_DIST_PORT': str(free_port()),
                'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS': DIST_ON_LOOPBACK,
                'RABBITMQ_MNESIA_BASE': _makedirs(join(self.dir, 'mnesia')),
                'RABBITMQ_LOG_BASE': _makedirs(join(self.dir, 'log')),
                'RABBITMQ_PLUGINS_EXPAND_DIR': join(self.dir, 'plugins-expand'),
                'RABBITMQ_PID_FILE': join(self.dir, 'rabbit.pid'),
                # Files that do not exist / are empty: no site configuration.
                'RABBITMQ_CONFIG_FILE': join(self.dir, 'no-config'),
                'RABBITMQ_ADVANCED_CONFIG_FILE': join(self.dir, 'no-advanced'),
                'RABBITMQ_CONF_ENV_FILE': _write(join(self.dir, 'env.conf'), ''),
                'RABBITMQ_ENABLED_PLUGINS_FILE': _write(join(self.dir, 'enabled_plugins'), '[].\n'),
            }
        )
        return env

    def url(self):
        return 'amqp://guest:guest@%s:%d//' % (LOOPBACK, self.port)

    def stop(self):
        self.process.stop(grace=20.0)
        self.epmd.stop()


def start_rabbitmq(binary, epmd_binary, base_dir):
    return _start_with_retries(lambda: RabbitServer(binary, epmd_binary, base_dir))
