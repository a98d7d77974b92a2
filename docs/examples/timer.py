"""TaskTimer: a drop-in threading.Timer that fires inside the task."""

import time

from celery import Celery

import celery_ctxthread as cct

app = Celery('proj')


@app.task(bind=True)
def convert(self, seconds, warn_after=5.0):
    timer = cct.TaskTimer(warn_after, self.update_state, kwargs={'state': 'SLOW'})
    timer.start()
    try:
        time.sleep(seconds)  # the real work
    finally:
        timer.cancel()  # finished in time: the timer never fires
    return seconds
