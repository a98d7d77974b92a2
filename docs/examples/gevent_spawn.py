"""gevent: raw greenlets need wrap(); TaskThread and the executor just work."""

import gevent
from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


def work(part):
    return part, current_task.request.id if current_task else None


@app.task
def crunch(parts):
    jobs = [gevent.spawn(cct.wrap(work), part) for part in parts]
    gevent.joinall(jobs, timeout=10)
    return [job.value for job in jobs]
