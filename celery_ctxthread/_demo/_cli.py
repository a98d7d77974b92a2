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
``_app``).

Here: the options, the checks of the broker and the backend, the worker (its
process control is shared with the tests: ``_process``) and the run loop; the
drawing is in ``_display``.  Nothing happens at import.
"""

from __future__ import absolute_import, print_function

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

import celery

from celery_ctxthread._compat import NEWER_CELERY_WARNING
from celery_ctxthread._demo import _app as demo_app
from celery_ctxthread._demo._display import (
    READY_STATES,
    REFRESH,
    LiveDisplay,
    Output,
    RunView,
    one_line,
    print_summary,
)
from celery_ctxthread._demo._process import CeleryWorker

RUNS = ('plain', 'task_thread', 'executor')
CHECK_TIMEOUT = 6.0  # seconds for the broker and backend checks
START_TIMEOUT = 45.0  # seconds for the worker to pick up a task
STOP_TIMEOUT = 8.0  # seconds for a warm shutdown before SIGKILL (polling transports take ~4)
QUICK_STOP_TIMEOUT = 2.0  # the same after Ctrl-C or an error
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
        type=_non_negative_seconds,
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


# argparse names the option in its message ("argument --delay: ..."); these say the rest.
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected a whole number, got %r' % text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be at least 1, got %d' % value)
    return value


def _non_negative_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected a number of seconds, got %r' % text)
    if not 0 <= value < float('inf'):  # also false for nan
        raise argparse.ArgumentTypeError('must be a finite number >= 0, got %r' % text)
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
    out.line('worker:  pid %d, pool %s (celery %s)' % (worker.pid, worker.pool, celery.__version__))
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


class Urls(object):
    """The broker and backend URLs, and the environment that carries them to the worker."""

    def __init__(self, args, workdir):
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
        return demo_app.file_url(self.results_dir)

    def config(self):
        """What makes ``app.make_app()`` use these URLs: the worker gets it in its environment."""
        config = {demo_app.KEY_BROKER: self.broker, demo_app.KEY_BACKEND: self.backend}
        if self.queue_dir:
            config[demo_app.KEY_QUEUE_DIR] = self.queue_dir
        if self.results_dir:
            config[demo_app.KEY_RESULTS_DIR] = self.results_dir
        return config

    def make_app(self):
        """The client's own app, configured like the worker's (not made the current app)."""
        try:
            return demo_app.make_app(self.config())
        except Exception as exc:
            raise DemoError(
                'bad broker or backend URL (%s, %s): %s'
                % (mask(self.broker), mask(self.backend), one_line(exc))
            )


def _mkdir(parent, name):
    path = os.path.join(parent, name)
    os.mkdir(path)
    return path


# Client libraries that kombu and Celery import only when a URL needs them.
# URL scheme -> (module its transport or backend imports, Celery's extra that installs it
# with what the transport needs besides: kombu's Redis transport needs ``packaging`` too).
LIBRARIES = {
    'redis': ('redis', 'redis'),
    'rediss': ('redis', 'redis'),
    'sentinel': ('redis', 'redis'),
    'sqla': ('sqlalchemy', 'sqlalchemy'),
    'db': ('sqlalchemy', 'sqlalchemy'),
    'mongodb': ('pymongo', 'mongodb'),
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
    library, extra = LIBRARIES.get(_scheme(url), (None, None))
    if library:
        try:
            __import__(library)
        except ImportError:
            return 'the %r package is not installed (pip install "celery[%s]")' % (library, extra)
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
            outcome.append(one_line(exc))
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
            self.error = one_line(record.exc_info[1])

    def suffix(self):
        return ' (last error: %s)' % self.error if self.error else ''


class Worker(object):
    """The demo's ``celery worker``: a :class:`~_process.CeleryWorker` on ``urls``."""

    def __init__(self, urls, workdir):
        self.urls = urls
        self.workdir = workdir
        # USE_FAST_LOCALS breaks the threads pool in Celery itself: the tracer
        # binds push() to the thread that built it, so no task has a context.
        threads_ok = _celery_at_least(4, 4) and not os.environ.get('USE_FAST_LOCALS')
        self.pool = 'threads' if threads_ok else 'solo'
        self.process = None

    @property
    def pid(self):
        return self.process.pid

    def start(self):
        """Start the worker; do not wait for it (a task sent meanwhile waits in the queue)."""
        self.process = CeleryWorker(
            'celery_ctxthread._demo._tasks',
            None,
            'cct-demo',
            self.pool,
            self._env(),
            self.workdir,
            concurrency=2,
            timeout=None,
            loglevel='warning',
            # Measured: the heartbeat timer wakes the amqp event loop, which otherwise
            # sees a SIGTERM ~10 s late; the polling loop of the embedded queue
            # stops ~1 s sooner without it.
            heartbeat=not self.urls.queue_dir,
        )

    def _env(self):
        env = dict(os.environ)
        env.update(self.urls.config())
        env[demo_app.KEY_PARENT_PID] = str(os.getpid())
        # This process has already warned about a Celery newer than the tested range, if
        # it is one: the worker, which imports the package again, says nothing of it.
        ignore = 'ignore:%s:RuntimeWarning' % NEWER_CELERY_WARNING
        env['PYTHONWARNINGS'] = ','.join(w for w in (env.get('PYTHONWARNINGS'), ignore) if w)
        # The worker must import this very copy of the package.
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env['PYTHONPATH'] = os.pathsep.join([here] + [p for p in [env.get('PYTHONPATH')] if p])
        return env

    def check_alive(self):
        """Raise DemoError, with the log's last line, if the worker has exited."""
        code = self.process.poll()
        if code is not None:
            raise DemoError('the worker exited with code %s: %s' % (code, self.last_log_line()))

    def last_log_line(self):
        lines = [line.strip() for line in self.process.log_text().splitlines() if line.strip()]
        return lines[-1] if lines else '(empty log)'

    def stop(self, timeout):
        """Stop the worker and its pool children: SIGTERM, bounded wait, SIGKILL."""
        if self.process is None:
            return 'not started'
        return self.process.stop(timeout)


def _celery_at_least(*version):
    return tuple(celery.VERSION[:2]) >= version


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
    result = app.send_task(demo_app.TASK_NAME, args=(kind, args.threads, args.steps, args.delay))
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
