"""asyncio in a task: a TaskThreadPoolExecutor as the event loop's default executor."""

import asyncio

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


def blocking_io(part):
    # Runs on a thread of the loop's default executor, inside the task.
    return part, current_task.request.id if current_task else None


@app.task
def crunch(parts):
    with cct.TaskThreadPoolExecutor(max_workers=4) as executor:
        loop = asyncio.new_event_loop()  # the loop runs on the task's own thread
        loop.set_default_executor(executor)  # before anything runs in it
        try:
            jobs = [loop.run_in_executor(None, blocking_io, part) for part in parts]
            return loop.run_until_complete(asyncio.gather(*jobs))
        finally:
            loop.close()
