"""``python -m celery_ctxthread demo``: watch update_state from threads fail, then work.

The demo starts a real ``celery worker`` subprocess and runs one task several
times.  The task starts threads that each report their progress with
``self.update_state``: first as plain ``threading.Thread`` (the client sees
nothing), then as ``cct.TaskThread`` and ``cct.TaskThreadPoolExecutor`` (every
bar fills).  The bars are drawn only from ``AsyncResult.state`` and ``.info``.

With no options it needs no server: kombu's filesystem transport is the broker
and Celery's ``file://`` backend stores the results, both in a temporary folder
and both writing each file under a temporary name and renaming it into place,
so that neither the worker nor the client ever reads a file half written (see
``_demo_tasks``).
"""

from __future__ import absolute_import, print_function

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

TASK_NAME = 'celery_ctxthread_demo.report_progress'
RUNS = ('plain', 'task_thread', 'executor')
READY_STATES = ('SUCCESS', 'FAILURE', 'REVOKED')
CHECK_TIMEOUT = 6.0  # seconds for the broker and backend checks
START_TIMEOUT = 45.0  # seconds for the worker to pick up a task
STOP_TIMEOUT = 8.0  # seconds for a warm shutdown before SIGKILL (polling transports take ~4)
QUICK_STOP_TIMEOUT = 2.0  # the same after Ctrl-C or an error
REFRESH = 0.1  # seconds between two polls / redraws
EXIT_INTERRUPTED = 130


class DemoError(Exception):
    """A failure to report as one line, without a traceback."""


def add_arguments(parser):
    """Add the demo's options to ``parser``."""
    parser.add_argument(
        '--broker',
        metavar='URL',
        help='broker URL, e.g. amqp://127.0.0.1// '
        "(default: kombu's filesystem transport in a temporary folder)",
    )
    parser.add_argument(
        '--backend',
        metavar='URL',
        help='result backend URL, e.g. rpc:// or redis://127.0.0.1/0 '
        '(default: rpc:// with --broker, else a file:// folder)',
    )
    parser.add_argument(
        '--threads',
        type=_positive_int,
        default=4,
        metavar='N',
        help='threads per task (default: 4)',
    )
    parser.add_argument(
        '--steps',
        type=_positive_int,
        default=10,
        metavar='N',
        help='progress steps per thread (default: 10)',
    )
    parser.add_argument(
        '--delay',
        type=float,
        default=0.15,
        metavar='SECONDS',
        help='seconds per step of the fastest thread (default: 0.15)',
    )
    parser.add_argument(
        '--no-color',
        action='store_true',
        help='plain lines, no colour or redraw (implied when stdout '
        'is not a terminal or NO_COLOR is set)',
    )
    return parser


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be at least 1')
    return value


def main(args):
    """Run the demo for parsed ``args``; return the exit code."""
    out = Output(fancy=_wants_fancy(args))
    _exit_on_sigterm()
    workdir = tempfile.mkdtemp(prefix='cct-demo-')
    try:
        return _run(args, out, workdir)
    except DemoError as exc:
        out.error(str(exc))
        return 2
    except KeyboardInterrupt:
        out.line('')  # off the line where the terminal echoed ^C
        out.error('interrupted: the worker was stopped')
        return EXIT_INTERRUPTED
    finally:
        out.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args, out, workdir):
    urls = Urls(args, workdir)
    app = urls.make_app()
    out.line('broker:  %s' % mask(urls.broker))
    out.line('backend: %s' % mask(urls.backend))
    check_connections(app, urls)
    worker = Worker(urls, workdir)
    worker.start()
    out.line('worker:  pid %d, pool %s (celery %s)' % (worker.pid, worker.pool, _celery_version()))
    try:
        runs = [run_task(app, worker, out, args, i, kind) for i, kind in enumerate(RUNS)]
        code = print_summary(out, runs, args)
    except BaseException:  # Ctrl-C, SIGTERM or an error: stop at once, but still in bounds
        worker.stop(QUICK_STOP_TIMEOUT)
        raise
    out.line('')
    out.line('stopping the worker (warm shutdown)...')
    out.line('worker stopped: %s' % worker.stop(STOP_TIMEOUT))
    return code


def _wants_fancy(args):
    return not args.no_color and sys.stdout.isatty() and not os.environ.get('NO_COLOR')


def _exit_on_sigterm():
    # SystemExit unwinds through the finally blocks that stop the worker.
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for name in ('SIGTERM', 'SIGHUP'):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def mask(url):
    """``url`` with its password replaced by ``**``."""
    return re.sub(r'(://[^:/@]*:)[^@/]*@', r'\1**@', url)


def _celery_version():
    import celery

    return celery.__version__


class Urls(object):
    """The broker and backend URLs, and the environment that carries them to the worker."""

    def __init__(self, args, workdir):
        from celery_ctxthread import _demo_tasks as tasks

        self.tasks = tasks
        self.queue_dir = None
        self.results_dir = None
        self.broker = args.broker or self._embedded_broker(workdir)
        self.backend = args.backend or self._default_backend(args, workdir)

    def _embedded_broker(self, workdir):
        self.queue_dir = _mkdir(workdir, 'queue')
        return 'filesystem://'

    def _default_backend(self, args, workdir):
        if args.broker:
            return 'rpc://'
        self.results_dir = _mkdir(workdir, 'results')
        return self.tasks.file_url(self.results_dir)

    def env(self):
        """The variables that make ``_demo_tasks.make_app()`` use these URLs."""
        env = {self.tasks.ENV_BROKER: self.broker, self.tasks.ENV_BACKEND: self.backend}
        if self.queue_dir:
            env[self.tasks.ENV_QUEUE_DIR] = self.queue_dir
        if self.results_dir:
            env[self.tasks.ENV_RESULTS_DIR] = self.results_dir
        return env

    def make_app(self):
        """The client's own app, configured like the worker's."""
        os.environ.update(self.env())
        try:
            return self.tasks.make_app()
        except Exception as exc:
            raise DemoError(
                'bad broker or backend URL (%s, %s): %s'
                % (mask(self.broker), mask(self.backend), _one_line(exc))
            )


def _mkdir(parent, name):
    path = os.path.join(parent, name)
    os.mkdir(path)
    return path


def _one_line(exc):
    text = ' '.join(str(exc).split()) or repr(exc)
    return '%s: %s' % (type(exc).__name__, text)


# Client libraries that kombu and Celery import only when a URL needs them.
LIBRARIES = {
    'redis': 'redis',
    'rediss': 'redis',
    'sentinel': 'redis',
    'sqla': 'sqlalchemy',
    'db': 'sqlalchemy',
    'mongodb': 'pymongo',
}


def check_connections(app, urls):
    """Fail fast, with the URL, if the broker or the backend is unusable."""
    checks = [('broker', urls.broker, _check_broker)]
    if _scheme(urls.backend) not in ('rpc', 'amqp'):  # those use the broker
        checks.append(('result backend', urls.backend, _check_backend))
    if urls.queue_dir:
        checks.append(('broker', urls.broker, _declare_task_queue))
    for what, url, check in checks:
        error = _missing_library(url) or _call_with_timeout(check, app, CHECK_TIMEOUT)
        if error:
            raise DemoError('cannot use %s %s: %s' % (what, mask(url), error))


def _scheme(url):
    return url.split(':', 1)[0].split('+', 1)[0].lower()


def _missing_library(url):
    library = LIBRARIES.get(_scheme(url))
    if library:
        try:
            __import__(library)
        except ImportError:
            return 'the %r package is not installed (pip install %s)' % (library, library)
    return None


def _check_broker(app):
    conn = app.connection_for_write()
    try:
        conn.connect()
        conn.default_channel  # noqa: B018  (opens a channel: some transports connect only here)
    finally:
        conn.release()


def _declare_task_queue(app):
    # kombu >= 5.3 keeps the filesystem transport's bindings in a file that the
    # first declaration creates empty and only then locks and fills: declared
    # here, before the worker starts, the worker and the client never race on it.
    conn = app.connection_for_write()
    try:
        app.amqp.queues[app.conf.task_default_queue](conn.default_channel).declare()
    finally:
        conn.release()


def _check_backend(app):
    app.AsyncResult('celery-ctxthread-demo-check').state  # noqa: B018  (a real backend round trip)


def _call_with_timeout(fn, arg, timeout):
    """Run ``fn(arg)`` in a thread; return None, or the error as one line."""
    outcome = []
    retries = _LastLoggedError()

    def target():
        try:
            fn(arg)
        except Exception as exc:
            outcome.append(_one_line(exc))
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, name='cct-demo-check')
    thread.daemon = True  # a hung connect must not keep the demo alive
    logging.getLogger().addHandler(retries)
    try:
        thread.start()
        thread.join(timeout)
    finally:
        logging.getLogger().removeHandler(retries)
    if outcome:
        return outcome[0]
    return 'no answer within %d seconds%s' % (timeout, retries.suffix())


class _LastLoggedError(logging.Handler):
    """Keeps the last exception logged: backends that retry log it, then retry."""

    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.error = None

    def emit(self, record):
        if record.exc_info and record.exc_info[1] is not None:
            self.error = _one_line(record.exc_info[1])

    def suffix(self):
        return ' (last error: %s)' % self.error if self.error else ''


class Worker(object):
    """A ``celery worker`` subprocess in its own process group."""

    def __init__(self, urls, workdir):
        self.urls = urls
        self.log_path = os.path.join(workdir, 'worker.log')
        # USE_FAST_LOCALS breaks the threads pool in Celery itself: the tracer
        # binds push() to the thread that built it, so no task has a context.
        threads_ok = _celery_at_least(4, 4) and not os.environ.get('USE_FAST_LOCALS')
        self.pool = 'threads' if threads_ok else 'solo'
        self.process = None

    @property
    def pid(self):
        return self.process.pid

    def command(self):
        return [
            sys.executable,
            '-m',
            'celery',
            '-A',
            'celery_ctxthread._demo_tasks',
            'worker',
            '-P',
            self.pool,
            '-c',
            '2',
            '-l',
            'warning',
            '-n',
            'cct-demo-%d@%%h' % os.getpid(),
            '--without-mingle',
            '--without-gossip',
        ] + self._heartbeat_option()

    def _heartbeat_option(self):
        # Measured: the heartbeat timer wakes the amqp event loop, which otherwise
        # sees a SIGTERM ~10 s late; the polling loop of the embedded queue
        # stops ~1 s sooner without it.
        return ['--without-heartbeat'] if self.urls.queue_dir else []

    def start(self):
        log = open(self.log_path, 'wb')
        try:
            options = dict(_new_process_group(), stdin=_devnull(), stdout=log)
            options.update(env=self._env(), stderr=subprocess.STDOUT)
            self.process = subprocess.Popen(self.command(), **options)
        finally:
            log.close()

    def _env(self):
        env = dict(os.environ)
        env.update(self.urls.env())
        env[self.urls.tasks.ENV_PARENT_PID] = str(os.getpid())
        # The worker must import this very copy of the package.
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env['PYTHONPATH'] = os.pathsep.join([here] + [p for p in [env.get('PYTHONPATH')] if p])
        return env

    def check_alive(self):
        """Raise DemoError, with the log's last line, if the worker has exited."""
        code = self.process.poll()
        if code is not None:
            raise DemoError('the worker exited with code %s: %s' % (code, self.last_log_line()))

    def last_log_line(self):
        try:
            with open(self.log_path, 'rb') as log:
                lines = log.read().decode('utf-8', 'replace').splitlines()
        except (IOError, OSError):
            return '(no log)'
        lines = [line.strip() for line in lines if line.strip()]
        return lines[-1] if lines else '(empty log)'

    def stop(self, timeout):
        """Stop the worker and its pool children: SIGTERM, bounded wait, SIGKILL."""
        if self.process is None:
            return 'not started'
        killed = False
        try:
            self._signal(signal.SIGTERM)
            killed = not _wait(self.process, timeout)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            killed = True
        finally:
            # Also clears pool children that outlived the main process.
            self._signal(getattr(signal, 'SIGKILL', signal.SIGTERM))
        _wait(self.process, QUICK_STOP_TIMEOUT)
        if killed:
            return 'killed after %d seconds' % timeout
        return 'warm shutdown, exit code %s' % self.process.returncode

    def _signal(self, signum):
        try:
            if hasattr(os, 'killpg'):
                os.killpg(self.process.pid, signum)
            elif self.process.poll() is None:
                self.process.terminate()
        except OSError:  # already gone
            pass


def _celery_at_least(*version):
    import celery

    return tuple(celery.VERSION[:2]) >= version


def _devnull():
    return open(os.devnull, 'rb')


def _new_process_group():
    # Ctrl-C in the terminal then reaches only the demo, which stops the worker itself.
    if os.name == 'posix':
        return {'preexec_fn': os.setsid}
    return {'creationflags': getattr(subprocess, 'CREATE_NEW_PROCESS_GROUP', 0)}


def _wait(process, timeout):
    """Wait up to ``timeout`` seconds (Python 2's Popen.wait has no timeout)."""
    deadline = time.time() + timeout
    while process.poll() is None:
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


class RunView(object):
    """What the client learned about one task, only from its state and info."""

    def __init__(self, number, kind, args):
        from celery_ctxthread._demo_tasks import THREAD_CLASSES

        self.number = number
        self.kind = kind
        self.thread_class = THREAD_CLASSES[kind]
        self.names = ['t%d' % (i + 1) for i in range(args.threads)]
        self.total = args.steps
        self.state = 'PENDING'
        self.steps = dict.fromkeys(self.names, 0)
        self.updates = 0
        self.result = None

    def observe(self, state, info):
        """Take one poll; return True if something changed."""
        changed = False
        if state == 'PENDING' and self.state != 'PENDING':
            return False  # a --backend file:// reader may see a result file being rewritten
        if state != self.state:
            self.state, changed = state, True
        if state == 'PROGRESS' and isinstance(info, dict) and 'steps' in info:
            steps = {name: int(info['steps'].get(name, 0)) for name in self.names}
            if steps != self.steps or self.updates == 0:
                self.steps, self.updates, changed = steps, self.updates + 1, True
        if state in READY_STATES:
            self.result = info
        return changed

    def shown_steps(self):
        return sum(self.steps.values())

    def errors(self):
        if isinstance(self.result, dict):
            return list(self.result.get('errors') or [])
        if self.state == 'FAILURE':
            return [_one_line(self.result)]
        return []

    def update_calls(self):
        """How many times the threads called update_state (None if unknown)."""
        if isinstance(self.result, dict):
            return self.result.get('update_calls')
        return None

    def seen_in_thread(self):
        if isinstance(self.result, dict):
            return self.result.get('seen_in_thread') or {}
        return {}

    def complete(self):
        return self.shown_steps() == self.total * len(self.names)


def run_task(app, worker, out, args, index, kind):
    """Send the task once and draw its progress until it is done."""
    view = RunView(index + 1, kind, args)
    out.line('')
    out.line(
        out.bold(
            'Run %d/%d: %s, %d threads x %d steps'
            % (view.number, len(RUNS), view.thread_class, args.threads, args.steps)
        )
    )
    result = app.send_task(TASK_NAME, args=(kind, args.threads, args.steps, args.delay))
    started, live = time.time(), LiveDisplay(out, view)
    while view.state not in READY_STATES:
        if view.observe(*_poll(result)):
            live.changed()
        live.tick()
        _check_progress(worker, view, started)
        time.sleep(REFRESH)
    live.finish()
    _forget(result)
    return view


def _poll(result):
    state = result.state
    info = result.info if state != 'PENDING' else None
    return state, info


def _check_progress(worker, view, started):
    worker.check_alive()
    if view.state == 'PENDING' and time.time() - started > START_TIMEOUT:
        raise DemoError(
            'the worker did not start the task within %d seconds: %s'
            % (START_TIMEOUT, worker.last_log_line())
        )


def _forget(result):
    try:
        result.forget()
    except Exception:  # rpc:// cannot forget; nothing to clean up then
        pass


class LiveDisplay(object):
    """Bars redrawn in place on a terminal; a few plain lines otherwise."""

    PLAIN_INTERVAL = 0.5  # seconds between two plain progress lines

    def __init__(self, out, view):
        self.out = out
        self.view = view
        self.drawn = 0
        self.last_plain = 0.0
        self.pending_plain = False
        self.last_state = None
        self.last_updates = 0

    def changed(self):
        if self.out.fancy:
            return
        if self.view.state != self.last_state:
            self.last_state = self.view.state
            self.out.line('  state %s' % self.view.state)
        if self.view.updates != self.last_updates:
            self.last_updates, self.pending_plain = self.view.updates, True

    def tick(self):
        if self.out.fancy:
            self._redraw(self._status_line())
        elif self.pending_plain and time.time() - self.last_plain >= self.PLAIN_INTERVAL:
            self._plain_progress()

    def finish(self):
        if self.out.fancy:
            self._redraw(self._status_line())
        else:
            if self.pending_plain:
                self._plain_progress()
            for line in self._bar_lines():
                self.out.line(line)
        for line in self._outcome_lines():
            self.out.line(line)

    def _plain_progress(self):
        steps = '  '.join(
            '%s %d/%d' % (name, self.view.steps[name], self.view.total) for name in self.view.names
        )
        self.out.line('  progress  %s' % steps)
        self.last_plain, self.pending_plain = time.time(), False

    def _redraw(self, status):
        lines = self._bar_lines() + [status]
        self.out.redraw(lines, self.drawn)
        self.drawn = len(lines)

    def _status_line(self):
        state = self.out.colour('%-8s' % self.view.state, _state_colour(self.view.state))
        return '  state %s  updates seen by the client: %d' % (state, self.view.updates)

    def _bar_lines(self):
        width = 30
        lines = []
        for name in self.view.names:
            done = self.view.steps[name]
            filled = int(round(width * done / float(self.view.total)))
            bar = self.out.colour('#' * filled, 'green') + '.' * (width - filled)
            lines.append('  %-3s [%s] %2d/%d' % (name, bar, done, self.view.total))
        return lines

    def _outcome_lines(self):
        seen = self.view.seen_in_thread()
        lines = []
        if seen:
            lines.append(
                '  inside the threads: current_task=%s, self.request.id=%s'
                % (seen.get('current_task'), seen.get('request_id'))
            )
        errors = self.view.errors()
        for error in errors:
            lines.append('  ' + self.out.colour('error in the threads: ' + error, 'red'))
        if not errors and self.view.updates == 0:
            lines.append(
                '  ' + self.out.colour('no error raised: every update was dropped silently', 'red')
            )
        return lines


def _state_colour(state):
    return {'SUCCESS': 'green', 'PROGRESS': 'cyan', 'FAILURE': 'red'}.get(state, 'yellow')


class Output(object):
    """stdout, with colour and in-place redraw only on a terminal."""

    CODES = {'green': '32', 'red': '31', 'yellow': '33', 'cyan': '36', 'bold': '1'}

    def __init__(self, fancy):
        self.fancy = fancy
        if fancy:
            self._write('\x1b[?25l')  # hide the cursor while redrawing

    def line(self, text):
        self._write(text + '\n')

    def error(self, text):
        sys.stdout.flush()
        sys.stderr.write('error: %s\n' % text)
        sys.stderr.flush()

    def redraw(self, lines, previous):
        up = '\x1b[%dA' % previous if previous else ''
        self._write(up + ''.join('\r\x1b[K%s\n' % line for line in lines))

    def colour(self, text, name):
        if not self.fancy or not text:
            return text
        return '\x1b[%sm%s\x1b[0m' % (self.CODES[name], text)

    def bold(self, text):
        return self.colour(text, 'bold')

    def close(self):
        if self.fancy:
            self._write('\x1b[?25h')

    def _write(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()


def print_summary(out, runs, args):
    """Print the table; return 0 if every cct run filled every bar."""
    total = args.threads * args.steps
    rows = [('run', 'thread class', 'steps shown', 'updates seen', 'final state', 'error')]
    for view in runs:
        error = (
            view.errors()[0]
            if view.errors()
            else ('(dropped silently)' if view.updates == 0 else '-')
        )
        calls = view.update_calls()
        rows.append(
            (
                str(view.number),
                view.thread_class,
                '%d/%d' % (view.shown_steps(), total),
                '%d of %s' % (view.updates, '?' if calls is None else calls),
                view.state,
                _shorten(error, 60),
            )
        )
    out.line('')
    out.line(out.bold('Summary'))
    for row in _table(rows):
        out.line('  ' + row)
    out.line('')
    for line in _legend(args):
        out.line('  ' + line)
    fixed_ok = all(view.complete() for view in runs if view.kind != 'plain')
    out.line('')
    out.line(
        'threading.Thread: the client saw %d of %d steps; cct threads: %s.'
        % (
            runs[0].shown_steps(),
            total,
            'every step' if fixed_ok else 'NOT every step (unexpected)',
        )
    )
    return 0 if fixed_ok else 1


def _legend(args):
    return [
        "steps shown:  steps the client's bars show, of %d threads x %d steps"
        % (args.threads, args.steps),
        'updates seen: progress states the client read, of the update_state calls the threads',
        '              made: it polls every %.1f s and sees the latest state, not every update'
        % REFRESH,
        '              (each update carries every bar, so the bars still fill)',
    ]


def _table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        '  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]


def _shorten(text, width):
    return text if len(text) <= width else text[: width - 3] + '...'
