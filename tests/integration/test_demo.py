"""``python -m celery_ctxthread demo``, run as a user would: a subprocess, on the
embedded broker and backend (no server needed).  Every wait is bounded.

Importing the package, its ``__main__`` or the demo's client does nothing: no
app, no signal receiver, no change to ``os.environ`` (checked in a fresh
interpreter); only the module the demo's worker imports builds an app.

The embedded default must never fail: the worker path (the demo's own broker,
backend and worker) also runs many tasks in a row here, with a publisher that
stalls between creating a message file and filling it, the way a loaded machine
can stall it, and kombu's own filesystem transport fails that same run.
"""

from __future__ import absolute_import, print_function

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import celery
import pytest
from celery import Celery, _state
from kombu.transport import filesystem

from celery_ctxthread.__main__ import build_parser
from celery_ctxthread._demo import _app as demo_app
from celery_ctxthread._demo import _cli as cli
from tests.helpers.servers import pid_alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = [sys.executable, '-m', 'celery_ctxthread', 'demo']
FAST = ['--threads', '3', '--steps', '4', '--delay', '0.05']
SUMMARY_ROW = re.compile(
    r'^\s+(\d)\s+(\S+)\s+(\d+)/(\d+)\s+(\d+) of (\d+)\s+([A-Z]+)\s*(.*)$', re.MULTILINE
)
posix_only = pytest.mark.skipif(os.name != 'posix', reason='signals and process groups')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    env.pop('NO_COLOR', None)
    return env


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _popen(args, sigint=False):
    """The demo; with ``sigint``, started with Ctrl-C's default action even where the
    test runner's own SIGINT is ignored (a background job), so Python turns it into
    KeyboardInterrupt."""
    return subprocess.Popen(
        DEMO + args,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint if sigint else None,
    )


def run_demo(args, timeout):
    """Run the demo; return (exit code, stdout, stderr, seconds). Killed after ``timeout``."""
    process = _popen(args)
    killer = threading.Timer(timeout, process.kill)  # Python 2.7: no communicate(timeout=)
    started = time.time()
    killer.start()
    try:
        out, err = process.communicate()
    finally:
        killer.cancel()
    elapsed = time.time() - started
    assert elapsed < timeout, 'the demo did not finish in %ds:\n%s' % (timeout, out.decode())
    return process.returncode, out.decode('utf-8'), err.decode('utf-8'), elapsed


def summary(out):
    """{run: (thread class, steps shown, total, updates seen, update calls, state, error)}."""
    return {int(m[0]): m[1:] for m in SUMMARY_ROW.findall(out)}


def closed_port():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_plain_threads_lose_progress_cct_threads_deliver_it():
    code, out, err, _ = run_demo(FAST, timeout=150)
    assert code == 0, out + err
    assert 'Traceback' not in out + err
    rows = summary(out)
    assert sorted(rows) == [1, 2, 3], out
    thread_class, shown, total, seen, calls, state, _ = rows[1]
    assert (thread_class, shown, total, seen, calls) == ('threading.Thread', '0', '12', '0', '12')
    assert state == 'SUCCESS'
    for run in (2, 3):
        thread_class, shown, total, seen, calls, state, error = rows[run]
        assert thread_class.startswith('cct.')
        assert 1 <= int(seen) <= int(calls) == 12
        assert (shown, total, state, error.strip()) == ('12', '12', 'SUCCESS', '-')
    assert 'updates seen: progress states the client read, of the update_state calls' in out
    assert '\x1b[' not in out  # not a terminal: no colour, no redraw
    assert 'worker stopped: warm shutdown' in out


def test_plain_output_shows_the_error_from_the_threads():
    _, out, _, _ = run_demo(FAST, timeout=150)
    run1 = out.split('Run 2/3')[0]
    assert 'current_task=None, self.request.id=None' in run1
    assert 'error in the threads:' in run1 or 'dropped silently' in run1


@pytest.mark.parametrize(
    'args',
    [
        ['--broker', 'amqp://demo:s3cret@127.0.0.1:%d//' % closed_port()],
        ['--broker', 'nosuchtransport://demo:s3cret@localhost//'],
        ['--backend', 'nosuchbackend://demo:s3cret@localhost/'],
    ],
)
def test_bad_url_is_one_line_and_fast(args):
    code, out, err, elapsed = run_demo(args, timeout=30)
    assert code != 0
    assert elapsed < 15
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'localhost' in lines[0] or '127.0.0.1' in lines[0]
    assert 's3cret' not in out + err
    assert 'worker:' not in out  # failed before any worker was started


@posix_only
def test_ctrl_c_stops_the_worker():
    process = _popen(FAST[:4] + ['--delay', '0.5'], sigint=True)
    killer = threading.Timer(120, process.kill)
    killer.start()
    try:
        worker_pid = _read_until_run(process, 2)
        os.kill(process.pid, signal.SIGINT)  # what Ctrl-C sends to the demo
        started = time.time()
        out, err = process.communicate()
    finally:
        killer.cancel()
    assert process.returncode == 130, out + err
    assert time.time() - started < 10
    assert 'interrupted' in err.decode() and 'Traceback' not in err.decode()
    assert not pid_alive(worker_pid), 'orphaned worker %d' % worker_pid


def _read_until_run(process, number):
    """Read the demo's stdout until run ``number`` starts; return the worker's pid."""
    worker_pid = None
    for raw in iter(process.stdout.readline, b''):
        line = raw.decode('utf-8')
        match = re.search(r'worker:\s+pid (\d+)', line)
        if match:
            worker_pid = int(match.group(1))
        if line.startswith('Run %d/' % number):
            assert worker_pid is not None
            return worker_pid
    raise AssertionError('the demo ended before run %d' % number)


# ------------------------------------------ the embedded default, many times

RUNS_IN_A_ROW = 25
# A stalled publisher waits this long between creating a file and filling it:
# longer than the worker's poll of the queue folder (0.05 s), so a reader that
# can see a file before it is complete does see it.
STALL = 0.1


class _StalledFile(object):
    """A file opened for writing whose writes come late, as if descheduled."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        time.sleep(STALL)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


def stalling_open(folder):
    """``open`` that stalls every write to a file in ``folder``."""
    folder = os.path.abspath(folder)

    def open_(path, mode='r', *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        name = path.decode() if isinstance(path, bytes) else path
        if 'w' in mode and os.path.dirname(os.path.abspath(name)) == folder:
            return _StalledFile(handle)
        return handle

    return open_


class DemoPath(object):
    """The demo's own client app, embedded broker and backend, and worker."""

    def __init__(self, workdir):
        self.urls = cli.Urls(build_parser().parse_args(['demo']), workdir)
        self.app = self.urls.make_app()
        self.worker = cli.Worker(self.urls, workdir)

    def start(self):
        cli.check_connections(self.app, self.urls)
        self.worker.start()

    def run_task(self, timeout=60.0):
        """Send one short task as the demo does; return (state, info). DemoError if
        the worker dies."""
        result = self.app.send_task(
            demo_app.TASK_NAME, args=('task_thread', 2, 1, 0.0), kwargs={'linger': 0.0}
        )
        deadline = time.time() + timeout
        while result.state not in cli.READY_STATES:
            self.worker.check_alive()
            assert time.time() < deadline, 'no result in %ds: %s' % (
                timeout,
                self.worker.last_log_line(),
            )
            time.sleep(0.02)
        state, info = result.state, result.info
        result.forget()
        return state, info

    def run_tasks(self, count):
        """Run ``count`` tasks in a row; return (successes, the first failure or None)."""
        for done in range(count):
            try:
                state, info = self.run_task()
            except cli.DemoError as exc:
                return done, str(exc)
            complete = state == 'SUCCESS' and info['worker_steps'] == {'t1': 1, 't2': 1}
            if not complete or info['errors']:
                return done, '%s %r' % (state, info)
        return count, None


def _environ():
    return {k: v for k, v in os.environ.items() if k != 'PYTEST_CURRENT_TEST'}


@pytest.fixture
def demo_path():
    saved_environ, previous_app = _environ(), _state._tls.current_app
    workdir = tempfile.mkdtemp(prefix='cct-demo-test-')
    path = None
    try:
        path = DemoPath(workdir)
        yield path
    finally:
        if path is not None:
            path.worker.stop(cli.QUICK_STOP_TIMEOUT)
        shutil.rmtree(workdir, ignore_errors=True)
    # The worker gets its configuration in its own environment, not in ours.
    assert _environ() == saved_environ
    assert _state._tls.current_app is previous_app


def _stall_message_writes(monkeypatch, path):
    # Both the demo's channel and kombu's own write through their module's open().
    stalled = stalling_open(path.urls.queue_dir)
    monkeypatch.setattr(demo_app, 'open', stalled, raising=False)
    monkeypatch.setattr(filesystem, 'open', stalled, raising=False)


def test_embedded_default_runs_many_tasks_in_a_row_with_a_stalled_publisher(demo_path, monkeypatch):
    _stall_message_writes(monkeypatch, demo_path)
    demo_path.start()
    done, failure = demo_path.run_tasks(RUNS_IN_A_ROW)
    assert (done, failure) == (RUNS_IN_A_ROW, None)
    assert demo_path.worker.stop(cli.STOP_TIMEOUT) == 'warm shutdown, exit code 0'


def test_kombu_filesystem_transport_fails_that_run(demo_path, monkeypatch):
    """The check above can fail: kombu's own transport writes a message in place,
    and the worker reads it empty (celery/kombu#1551)."""
    _stall_message_writes(monkeypatch, demo_path)
    demo_path.app.conf.broker_transport = filesystem.Transport  # the client publishes
    demo_path.start()
    _, failure = demo_path.run_tasks(RUNS_IN_A_ROW)
    assert failure is not None, (
        'kombu filesystem transport no longer races: the demo may drop its own channel'
    )
    assert 'the worker exited' in failure, failure
    # The decode error is in the log; its last line may be a later one (Python 2.7).
    assert 'JSON' in demo_path.worker.process.log_text(), failure


def _store_from_four_threads(backend, seconds):
    """Four threads store PROGRESS states while this one reads them back.

    Return the reads that saw no state (PENDING) or raised.
    """
    task_id = 'cct-demo-backend-check'
    backend.store_result(task_id, {'steps': {}}, 'PROGRESS')
    stop, errors, bad_reads = threading.Event(), [], []

    def store(number):
        step = 0
        while not stop.is_set():
            step += 1
            meta = {'steps': {'t%d' % number: step}, 'pad': 'x' * ((step * 37) % 200)}
            try:
                backend.store_result(task_id, meta, 'PROGRESS')
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=store, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.daemon = True
        thread.start()
    deadline = time.time() + seconds
    try:
        while time.time() < deadline:
            try:
                if backend.get_task_meta(task_id)['status'] != 'PROGRESS':
                    bad_reads.append('PENDING')
            except Exception as exc:
                bad_reads.append('%s: %s' % (type(exc).__name__, exc))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    return bad_reads + ['writer: %r' % exc for exc in errors]


def _file_backend(cls, folder, stall):
    url = demo_app.file_url(folder)
    app = Celery('cct-demo-backend-check', backend=url, set_as_current=False)
    opener = stalling_open(folder) if stall else open
    return cls(app=app, url=url, open=opener)


@pytest.mark.parametrize('stall', [False, True], ids=['full-speed', 'stalled-writes'])
def test_embedded_backend_keeps_results_whole_under_four_writers(tmpdir, stall):
    backend = _file_backend(demo_app.AtomicFilesystemBackend, str(tmpdir), stall)
    assert _store_from_four_threads(backend, seconds=1.5) == []
    assert [name for name in os.listdir(str(tmpdir)) if name.startswith('.tmp-')] == []


def test_celery_file_backend_loses_results_under_the_same_writers(tmpdir):
    """The check above can fail: Celery's own file:// backend rewrites in place."""
    from celery.backends.filesystem import FilesystemBackend

    backend = _file_backend(FilesystemBackend, str(tmpdir), stall=True)
    assert _store_from_four_threads(backend, seconds=1.5) != []


def test_the_worker_does_not_repeat_the_newer_celery_warning(tmpdir):
    """The demo's own process has warned already; its worker's environment filters it."""
    env = cli.Worker(cli.Urls(build_parser().parse_args(['demo']), str(tmpdir)), str(tmpdir))._env()
    code = 'import warnings; warnings.warn(%r, RuntimeWarning); print("ran")' % (
        cli.NEWER_CELERY_WARNING + ' 4.3 to 5.7 and ...; Celery 99.1.0 is newer'
    )
    output = subprocess.check_output(
        [sys.executable, '-c', code], env=env, stderr=subprocess.STDOUT
    )
    assert output.decode().strip() == 'ran'


# A sitecustomize that makes Celery say it is 99.1 just before celery_ctxthread checks it,
# never earlier: importing celery at start-up breaks ``python -m celery`` on Celery 5.0.
NEWER_CELERY = """
import sys


class NewerCelery(object):
    done = False  # stays in sys.meta_path: Python 2.7 fails if it leaves during a lookup

    def fake(self, name):
        if name == 'celery_ctxthread._compat' and not self.done:
            self.done = True
            import celery
            celery.VERSION = celery.VERSION._replace(major=99, minor=1)
            celery.__version__ = '99.1.0'

    def find_spec(self, name, path=None, target=None):
        self.fake(name)

    def find_module(self, name, path=None):  # Python 2.7
        self.fake(name)


sys.meta_path.insert(0, NewerCelery())
"""


@pytest.mark.skipif(celery.VERSION[:2] < (4, 4), reason='a faked 99.1 would pick the threads pool')
def test_the_demo_shows_the_newer_celery_warning_once(tmpdir):
    """A ``sitecustomize`` makes the demo and its worker both see a Celery 99.1."""
    tmpdir.join('sitecustomize.py').write(NEWER_CELERY)
    env = _env()
    env['PYTHONPATH'] = os.pathsep.join([str(tmpdir), env['PYTHONPATH']])
    process = subprocess.Popen(
        DEMO + FAST + ['--no-color'],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    killer = threading.Timer(150, process.kill)
    killer.start()
    try:
        out, err = process.communicate()
    finally:
        killer.cancel()
    out, err = out.decode('utf-8'), err.decode('utf-8')
    assert process.returncode == 0, out + err
    assert (out + err).count('Celery 99.1.0 is newer') == 1, out + err


@pytest.mark.parametrize(
    'option, value',
    [
        ('--delay', '-1'),
        ('--delay', 'nan'),
        ('--delay', 'inf'),
        ('--delay', 'soon'),
        ('--threads', '0'),
        ('--threads', '2.5'),
        ('--steps', '-3'),
        ('--steps', 'ten'),
    ],
)
def test_a_bad_number_is_an_error_naming_its_option(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(['demo', option, value])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'error: argument %s: ' % option in error and value in error, error


def test_good_numbers_are_taken_as_they_are():
    args = build_parser().parse_args(['demo', '--delay', '0', '--threads', '1', '--steps', '3'])
    assert (args.delay, args.threads, args.steps) == (0.0, 1, 3)


def test_a_missing_redis_client_names_the_celery_extra_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'redis', None)  # import redis raises ImportError
    error = cli._missing_library('redis://127.0.0.1:6379/0')
    assert error == 'the \'redis\' package is not installed (pip install "celery[redis]")'


@pytest.mark.parametrize('args', [['--help'], ['demo', '--help']])
def test_help(args):
    output = subprocess.check_output(
        [sys.executable, '-m', 'celery_ctxthread'] + args, cwd=ROOT, env=_env()
    )
    assert b'usage:' in output


# ------------------------------------------------- nothing happens at import

# Run in a fresh interpreter: imports the modules named in argv, prints what changed.
IMPORT_EFFECTS = r"""
import json, os, signal, sys, threading, weakref
import celery.signals
from celery import _state
from celery.utils.dispatch import Signal

def receivers():
    found = set()
    for name in sorted(dir(celery.signals)):
        sig = getattr(celery.signals, name)
        if not isinstance(sig, Signal):
            continue
        for _, receiver in sig.receivers:
            if isinstance(receiver, weakref.ReferenceType):
                receiver = receiver()
            where = getattr(receiver, '__module__', '?'), getattr(receiver, '__name__', '?')
            found.add('%s: %s.%s' % ((name,) + where))
    return found

def state():
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    return (dict(os.environ), list(_state._apps), _state._tls.current_app,
            _state.default_app, handlers, threading.active_count(), receivers())

environ, apps, current, default, handlers, threads, connected = state()
for name in sys.argv[1:]:
    __import__(name)
environ2, apps2, current2, default2, handlers2, threads2, connected2 = state()
print(json.dumps({
    'environ': sorted(k for k in set(environ) | set(environ2) if environ.get(k) != environ2.get(k)),
    'new_apps': sorted(app.main for app in apps2 if app not in apps),
    'current_app_changed': current2 is not current or default2 is not default,
    'signal_handlers_changed': handlers2 != handlers,
    'new_threads': threads2 - threads,
    'new_receivers': sorted(connected2 - connected),
}))
"""
# The library's own receivers: the worker-wide switch, the late-update guard, and
# the lifecycle's worker events (revoke, shutdown), which act only in a worker.
LIBRARY_RECEIVERS = {
    'worker_init: celery_ctxthread.worker._install_if_requested',
    'worker_process_init: celery_ctxthread.worker._install_if_requested',
    'task_postrun: celery_ctxthread.guard._mark_ended',
    'worker_init: celery_ctxthread.worker._revoke_tells_threads',
    'worker_ready: celery_ctxthread.worker._chain_shutdown_signals',
    'worker_shutting_down: celery_ctxthread.worker._shutdown_tells_threads',
}


def import_effects(*modules):
    """What importing ``modules`` changed, in a fresh interpreter."""
    env = _env()
    for name in [name for name in env if name.startswith(('CCT_', 'CELERY_'))]:
        del env[name]
    command = [sys.executable, '-c', IMPORT_EFFECTS] + list(modules)
    output = subprocess.check_output(command, cwd=ROOT, env=env)
    return json.loads(output.decode('utf-8').strip().splitlines()[-1])


@pytest.mark.parametrize(
    'modules',
    [
        ['celery_ctxthread', 'celery_ctxthread.__main__'],
        ['celery_ctxthread._demo', 'celery_ctxthread._demo._cli'],  # all the demo's client uses
    ],
)
def test_importing_the_package_or_the_demo_does_nothing(modules):
    effects = import_effects(*modules)
    new_receivers = effects.pop('new_receivers')
    assert effects == {
        'environ': [],
        'new_apps': [],
        'current_app_changed': False,
        'signal_handlers_changed': False,
        'new_threads': 0,
    }
    assert set(new_receivers) <= LIBRARY_RECEIVERS, new_receivers
    assert 'worker_init: celery_ctxthread.worker._install_if_requested' in new_receivers


def test_the_import_check_sees_the_demo_workers_module_build_its_app():
    """The control: the module the demo's worker imports (``-A``) does build an app."""
    effects = import_effects('celery_ctxthread._demo._tasks')
    assert effects['new_apps'] == ['celery_ctxthread_demo']
    assert effects['current_app_changed'] is True
    assert 'worker_init: celery_ctxthread._demo._tasks._watch_parent' in effects['new_receivers']
