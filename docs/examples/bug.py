"""The bug: a plain thread started by a task does not see the task."""

import threading

from celery import Celery, current_task

app = Celery('proj')


@app.task(bind=True)
def crunch(self):
    seen = {}

    def work():
        seen['current_task'] = current_task.name if current_task else None  # None
        seen['request_id'] = self.request.id  # None: the task's default request
        try:
            self.update_state(state='PROGRESS', meta={'step': 1})
        except Exception as exc:  # which error depends on the backend
            seen['error'] = repr(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return seen
