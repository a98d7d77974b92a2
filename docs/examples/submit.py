"""cct.submit(): one job on a new TaskThread, as a Future."""

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


def fetch(url):
    return url, current_task.request.id


@app.task
def compare(first_url, second_url):
    first = cct.submit(fetch, first_url)  # both run at the same time,
    second = cct.submit(fetch, second_url)  # each in a new TaskThread
    return [first.result(timeout=10), second.result(timeout=10)]
