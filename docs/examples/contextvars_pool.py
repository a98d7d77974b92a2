"""Each job runs in a fresh copy of its submitter's contextvars context."""

import contextvars

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')
tenant = contextvars.ContextVar('tenant', default=None)
pool = cct.TaskThreadPoolExecutor(max_workers=1)  # one worker thread, shared


def whoami():
    seen = tenant.get(), current_task.request.id
    tenant.set('changed by the job')  # lands in this job's copy only
    return seen


@app.task
def report(name):
    tenant.set(name)
    seen = pool.submit(whoami).result(timeout=10)
    assert tenant.get() == name  # the job's change did not leak back
    return seen
