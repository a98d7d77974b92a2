"""Turn :func:`~celery_ctxthread.install` on for a whole worker, from configuration.

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

from celery.signals import worker_init, worker_process_init

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


def connect():
    """Check the environment variable, and connect the switch to the worker's
    signals; idempotent (``celery_ctxthread`` calls it when imported)."""
    _from_environment()  # a typo stops the worker here, with this error
    worker_init.connect(_install_if_requested, weak=False, dispatch_uid=__name__ + '.worker_init')
    worker_process_init.connect(
        _install_if_requested, weak=False, dispatch_uid=__name__ + '.process'
    )
