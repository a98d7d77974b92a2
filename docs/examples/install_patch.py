"""install(): propagation for threads started by code you do not control."""

import threading
from concurrent.futures import ThreadPoolExecutor

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')
cct.install()  # plain Thread, Timer, ThreadPoolExecutor and ThreadPool jobs propagate from now on


def current_task_id():
    return current_task.request.id if current_task else None


def library_call():
    """Stands for a library that starts its own thread and pool."""
    box = []
    thread = threading.Thread(target=lambda: box.append(current_task_id()))
    thread.start()
    thread.join()
    with ThreadPoolExecutor(max_workers=2) as executor:
        box.append(executor.submit(current_task_id).result())
    return box


watchdog_saw = []


def watchdog():
    watchdog_saw.append(current_task_id())  # None: it was opted out


@app.task
def uses_a_library():
    cct.opt_out(threading.Thread(target=watchdog)).start()  # must not hold the task
    return library_call()  # [task id, task id]
