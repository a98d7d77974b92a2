"""The worker-wide switch: install() in every worker process of this app."""

from celery import Celery

import celery_ctxthread  # noqa: F401  (the worker must import it)

app = Celery('proj')
app.conf.ctxthread_install = True  # the setting
