"""One module-level TaskThreadPoolExecutor shared by every task."""

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')
pool = cct.TaskThreadPoolExecutor(max_workers=8)  # one pool for the whole process


def fetch(url):
    # Runs on a pool thread, inside the task that submitted this job.
    return url, current_task.request.id


@app.task
def fetch_all(urls):
    return list(pool.map(fetch, urls))  # each job sees current_task == fetch_all
