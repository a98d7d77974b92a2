"""``python -m celery_ctxthread demo``, run as a user would: a subprocess, on the
embedded broker and backend (no server needed).  Every wait is bounded.
"""

from __future__ import absolute_import, print_function

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = [sys.executable, '-m', 'celery_ctxthread', 'demo']
FAST = ['--threads', '3', '--steps', '4', '--delay', '0.05']
SUMMARY_ROW = re.compile(r'^\s+(\d)\s+(\S+)\s+(\d+)\s+(\d+)/(\d+)\s+([A-Z]+)\s*(.*)$', re.MULTILINE)
posix_only = pytest.mark.skipif(os.name != 'posix', reason='signals and process groups')


def _env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    env.pop('NO_COLOR', None)
    return env


def _popen(args):
    return subprocess.Popen(
        DEMO + args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
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
    """{run number: (thread class, updates, steps shown, total, state, error)}."""
    return {int(m[0]): m[1:] for m in SUMMARY_ROW.findall(out)}


def closed_port():
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid):
    try:
        with open('/proc/%d/stat' % pid) as stat:
            return stat.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except (IOError, OSError):
        return False


def test_plain_threads_lose_progress_cct_threads_deliver_it():
    code, out, err, _ = run_demo(FAST, timeout=150)
    assert code == 0, out + err
    assert 'Traceback' not in out + err
    rows = summary(out)
    assert sorted(rows) == [1, 2, 3], out
    thread_class, updates, shown, total, state, _ = rows[1]
    assert (thread_class, updates, shown, total) == ('threading.Thread', '0', '0', '12')
    assert state == 'SUCCESS'
    for run in (2, 3):
        thread_class, updates, shown, total, state, error = rows[run]
        assert thread_class.startswith('cct.')
        assert int(updates) >= 1
        assert (shown, total, state, error.strip()) == ('12', '12', 'SUCCESS', '-')
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
    process = _popen(FAST[:4] + ['--delay', '0.5'])
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
    assert not alive(worker_pid), 'orphaned worker %d' % worker_pid


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


@pytest.mark.parametrize('args', [['--help'], ['demo', '--help']])
def test_help(args):
    output = subprocess.check_output(
        [sys.executable, '-m', 'celery_ctxthread'] + args, cwd=ROOT, env=_env()
    )
    assert b'usage:' in output
