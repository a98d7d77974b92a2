"""Subprocesses that are always stopped, within bounds: the demo's worker and the tests'.

A :class:`ManagedProcess` runs in its own process group (a session on POSIX)
with its output in a log file, and :meth:`~ManagedProcess.stop` ends the whole
group: SIGTERM, a bounded wait, then SIGKILL.  :class:`CeleryWorker` is
``python -m celery -A <app> worker`` as one.  Every wait is bounded.  Used by
``python -m celery_ctxthread demo`` and by the test suite's fixtures; portable
to Python 2.7, and nothing happens at import.

The tests import this module on purpose (``tests/helpers/servers.py`` takes
``ManagedProcess``, ``CeleryWorker``, ``StartError`` and ``wait_until`` from
here): it is the one module the demo and the tests share.  The demo needs it
installed with the package and the tests are not part of it, so it lives here;
one copy means the process control the tests exercise on every cell is the
demo's own, with no second copy to drift from it.  Keep it free of demo-only
behaviour.
"""

from __future__ import absolute_import

import atexit
import io
import os
import signal
import subprocess
import sys
import time

# Processes started and not yet stopped: stopped at interpreter exit if their
# owner never did (a fixture whose teardown did not run, a demo killed by a
# signal Python handles).  Registered with atexit when the first one starts.
_LIVE = []
_AT_EXIT = []
_KILL = getattr(signal, 'SIGKILL', signal.SIGTERM)


class StartError(RuntimeError):
    """A process did not start, or did not become ready."""


def wait_until(predicate, timeout, interval=0.05):
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; return its value."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() >= deadline:
            return value
        time.sleep(interval)


def read_text(path):
    """The file's text ('' if there is none), undecodable bytes replaced."""
    if not os.path.exists(path):
        return ''
    with io.open(path, encoding='utf-8', errors='replace') as handle:
        return handle.read()


def _stop_leftovers():
    for process in list(_LIVE):
        process.stop(grace=5.0)


def _own_group():
    """Popen options that start the child in a group of its own.

    Its children (a worker's pool) join it, and a Ctrl-C in the terminal reaches
    only the parent, which stops the group itself.
    """
    if os.name != 'posix':
        return {'creationflags': getattr(subprocess, 'CREATE_NEW_PROCESS_GROUP', 0)}
    if sys.version_info >= (3, 2):
        return {'start_new_session': True}
    return {'preexec_fn': os.setsid}


class ManagedProcess(object):
    """A subprocess in its own process group, its stdout and stderr appended to a log file."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.log_path = log_path
        if not _AT_EXIT:
            atexit.register(_stop_leftovers)
            _AT_EXIT.append(_stop_leftovers)
        options = dict(_own_group(), stderr=subprocess.STDOUT, env=env, cwd=cwd)
        # The child keeps its own copies of these; ours are closed at once.
        with open(log_path, 'ab') as log, open(os.devnull, 'rb') as devnull:
            self.proc = subprocess.Popen(argv, stdin=devnull, stdout=log, **options)
        self.pgid = self.proc.pid
        _LIVE.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def poll(self):
        """The main process's exit code, None while it runs (the group may outlive it)."""
        return self.proc.poll()

    def alive(self):
        return self.poll() is None

    def log_text(self):
        return read_text(self.log_path)

    def log_tail(self, chars=4000):
        return self.log_text()[-chars:]

    def _gone(self):
        if self.alive():
            return False
        if not hasattr(os, 'killpg'):
            return True
        try:
            os.killpg(self.pgid, 0)
        except OSError:
            return True
        return False

    def _signal(self, signum):
        try:
            if hasattr(os, 'killpg'):
                os.killpg(self.pgid, signum)
            elif self.alive():
                self.proc.terminate()
        except OSError:  # already gone
            pass

    def terminate(self):
        """SIGTERM the whole group without waiting (see ``stop``)."""
        self._signal(signal.SIGTERM)

    def stop(self, grace=10.0, kill_wait=5.0):
        """SIGTERM the whole group, SIGKILL what is left after ``grace`` seconds.

        Return how it ended, as words.  A KeyboardInterrupt while waiting (a
        second Ctrl-C) kills at once.
        """
        killed = False
        try:
            self.terminate()
            killed = not wait_until(self._gone, grace)
        except KeyboardInterrupt:
            killed = True
        finally:
            if killed:
                self._signal(_KILL)
            wait_until(self._gone, kill_wait)
            if self in _LIVE:
                _LIVE.remove(self)
        if killed:
            return 'killed after %d seconds' % grace
        return 'warm shutdown, exit code %s' % self.proc.returncode

    def wait_ready(self, predicate, timeout, what):
        """Wait for ``predicate``; stop and raise StartError, with the log tail, on
        death or timeout."""
        wait_until(lambda: predicate() or not self.alive(), timeout, interval=0.1)
        if self.alive() and predicate():
            return
        if self.alive():
            state = 'not ready after %ss' % timeout
        else:
            state = 'exited with %r' % self.proc.poll()
        self.stop()
        raise StartError('%s %s (%s); log tail:\n%s' % (self.name, state, what, self.log_tail()))


class CeleryWorker(object):
    """``python -m celery -A <app_module> worker`` as a :class:`ManagedProcess`.

    ``env`` carries the worker app's configuration; everything the worker
    prints goes to ``<log_dir>/worker-<name>.log``.  With a ``timeout``, wait
    for its own "ready." log line (logged at INFO) and raise StartError if it
    does not come; with None, return as soon as it is started.
    """

    def __init__(
        self,
        app_module,
        app_dir,
        name,
        pool,
        env,
        log_dir,
        concurrency=4,
        timeout=60.0,
        loglevel='INFO',
        heartbeat=False,
    ):
        self.name = name
        self.pool = pool
        argv = [sys.executable, '-m', 'celery', '-A', app_module, 'worker', '-P', pool]
        argv += ['-c', str(concurrency), '-l', loglevel, '--without-gossip', '--without-mingle']
        argv += ['-n', '%s-%d@localhost' % (name, os.getpid())]
        argv += [] if heartbeat else ['--without-heartbeat']
        self.process = ManagedProcess(
            'celery worker %s' % name,
            argv,
            os.path.join(log_dir, 'worker-%s.log' % name),
            env=env,
            cwd=app_dir,
        )
        if timeout is not None:
            self.process.wait_ready(self._ready, timeout, 'log line "ready."')

    @property
    def pid(self):
        return self.process.pid

    def _ready(self):
        return ' ready.' in self.log_text()

    def log_text(self):
        return self.process.log_text()

    def poll(self):
        return self.process.poll()

    def alive(self):
        return self.process.alive()

    def terminate(self):
        self.process.terminate()

    def stop(self, grace=15.0):
        return self.process.stop(grace)
