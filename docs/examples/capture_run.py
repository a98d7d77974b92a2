"""capture() and TaskContext.run(): the mechanism under every entry point."""

import logging
import threading

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')
logger = logging.getLogger(__name__)


def current_task_id():
    return current_task.request.id


@app.task
def fan_out(count):
    context = cct.capture()  # in the task
    seen = []

    def work():  # in any thread, any number of times, concurrently
        logger.info('working for task %s', context.task_id)
        seen.append(context.run(current_task_id))

    threads = [threading.Thread(target=work) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen
