"""Eager mode in your test suite: threads see the task there too."""

from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')
app.conf.update(
    task_always_eager=True,  # delay() runs the task right here, on this thread
    task_eager_propagates=True,
    broker_url='memory://',
    result_backend='cache+memory://',
)


@app.task
def crunch(parts):
    seen = []
    threads = [
        cct.TaskThread(target=lambda: seen.append(current_task.request.id)) for _ in range(parts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def test_threads_see_the_eager_task():
    result = crunch.delay(3)
    assert result.get() == [result.id] * 3
