"""TaskThread: a drop-in threading.Thread that runs inside the task."""

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')


@app.task(bind=True)
def crunch(self, parts):
    threads = [cct.TaskThread(target=work, args=(self, part)) for part in parts]
    for thread in threads:
        thread.start()  # the task context is captured here
    for thread in threads:
        thread.join()
    return self.request.id


def work(task, part):
    assert current_task.request.id == task.request.id  # the thread sees its task
    task.update_state(state='PROGRESS', meta={'part': part})  # reaches the client
