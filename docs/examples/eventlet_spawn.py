"""eventlet: a GreenPool's jobs need wrap(); TaskThread and the executor just work."""

import eventlet
from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


@app.task
def crunch(parts):
    def work(part):  # a green thread of the pool, in crunch's context through wrap()
        return part, current_task.request.id if current_task else None

    return list(eventlet.GreenPool(size=10).imap(cct.wrap(work), parts))
