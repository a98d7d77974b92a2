"""eventlet: raw green threads need wrap(); TaskThread and the executor just work."""

import eventlet
from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


def work(part):
    return part, current_task.request.id if current_task else None


@app.task
def crunch(parts):
    jobs = [eventlet.spawn(cct.wrap(work), part) for part in parts]
    return [job.wait() for job in jobs]
