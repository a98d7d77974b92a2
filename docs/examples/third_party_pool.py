"""wrap(): capture now, run later, for callbacks and third-party pools."""

from multiprocessing.pool import ThreadPool

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


def report_progress(step):
    current_task.update_state(state='PROGRESS', meta={'step': step})


@app.task
def crunch(steps):
    pool = ThreadPool(4)  # any pool that takes a callable
    try:
        for step in range(1, steps + 1):
            pool.apply_async(cct.wrap(report_progress), (step,)).get(timeout=10)
    finally:
        pool.close()
        pool.join()
    return steps
