"""Turn :func:`~celery_ctxthread.install` on for a whole worker, from configuration;
and tell a task's threads when the worker ends the task (soft time limit,
revocation, shutdown: :ref:`how-lifecycle`).

Set either of these, and have the worker import ``celery_ctxthread`` (your
task modules importing it is enough; else add it to the ``imports`` setting)::

    app.conf.ctxthread_install = True        # the setting
    CELERY_CTXTHREAD_INSTALL=1 celery -A proj worker   # or the environment

The worker then installs the patch in its main process (``worker_init``,
before the pool starts: forked prefork children inherit it) and again in each
pool process (``worker_process_init``: idempotent).  The environment variable
wins over the setting, so ``CELERY_CTXTHREAD_INSTALL=0`` turns it off.  A
value it cannot read raises ``ValueError`` when ``celery_ctxthread`` is
imported, so a worker with a typo refuses to start instead of running without
propagation (Celery's signal dispatch would only log an error raised later).
"""

import os
import signal

from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutting_down

from celery_ctxthread import _celery, lifecycle
from celery_ctxthread.patch import install

#: The app setting that turns the switch on.
SETTING = 'ctxthread_install'
#: The environment variable that turns it on or off; it wins over the setting.
ENVIRONMENT_VARIABLE = 'CELERY_CTXTHREAD_INSTALL'
_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('', '0', 'false', 'no', 'off')


def _from_environment():
    """True or False when the environment variable is set, None when it is not."""
    value = os.environ.get(ENVIRONMENT_VARIABLE)
    if value is None:
        return None
    if value.strip().lower() not in _TRUE + _FALSE:
        raise ValueError(
            '%s=%r: expected one of %s'
            % (ENVIRONMENT_VARIABLE, value, ', '.join(_TRUE + _FALSE[1:]))
        )
    return value.strip().lower() in _TRUE


def install_requested(app):
    """Return True when the environment or ``app.conf`` asks for the switch."""
    value = _from_environment()
    if value is not None:
        return value
    return bool(app is not None and app.conf.get(SETTING, False))


def _install_if_requested(sender=None, **kwargs):
    app = getattr(sender, 'app', None)
    if app is None:  # worker_process_init has no sender
        from celery import current_app as app
    if install_requested(app):
        install()


def _revoke_tells_threads(**kwargs):
    _celery.wrap_revoke_command(_revoked)


def _revoked(task_ids):
    for task_id in task_ids:
        lifecycle.cancel(task_id, lifecycle.REVOKED)


def _shutdown_tells_threads(**kwargs):
    lifecycle.end_all(lifecycle.WORKER_SHUTDOWN)


#: The signals that begin a warm or cold shutdown of a worker.
SHUTDOWN_SIGNALS = ('SIGTERM', 'SIGINT', 'SIGQUIT')


def _chain_shutdown_signals(**kwargs):
    """At ``worker_ready``, once Celery's handlers are in place: each shutdown
    signal tells the process's tasks' threads first, then runs Celery's handler.
    ``worker_shutting_down`` alone comes too late on a cold shutdown: Celery
    sends it after its cold-shutdown callback, which waits for the tasks."""
    for name in SHUTDOWN_SIGNALS:
        signum = getattr(signal, name, None)
        original = signal.getsignal(signum) if signum is not None else None
        if callable(original) and not getattr(original, '_ctxthread_chained', False):
            signal.signal(signum, _telling_threads_first(original))


def _telling_threads_first(original):
    def on_shutdown_signal(signum, frame):
        _shutdown_tells_threads()
        return original(signum, frame)

    on_shutdown_signal._ctxthread_chained = True
    return on_shutdown_signal


def connect():
    """Check the environment variable, and connect the switch to the worker's
    signals; idempotent (``celery_ctxthread`` calls it when imported)."""
    _from_environment()  # a typo stops the worker here, with this error
    worker_init.connect(_install_if_requested, weak=False, dispatch_uid=__name__ + '.worker_init')
    worker_process_init.connect(
        _install_if_requested, weak=False, dispatch_uid=__name__ + '.process'
    )
    # The lifecycle's worker events: each in the process that learns of it.
    worker_init.connect(_revoke_tells_threads, weak=False, dispatch_uid=__name__ + '.revoke')
    worker_ready.connect(_chain_shutdown_signals, weak=False, dispatch_uid=__name__ + '.signals')
    worker_shutting_down.connect(
        _shutdown_tells_threads, weak=False, dispatch_uid=__name__ + '.shutdown'
    )
