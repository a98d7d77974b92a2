"""Threads that stop when their task is over: cancelled(), wait_cancelled(), checkpoint()."""

import collections
import logging
import time

from celery import Celery

import celery_ctxthread as cct

app = Celery('proj')
log = logging.getLogger(__name__)
# Jobs of this pool run even once their task is over (the default cancels them).
pool = cct.TaskThreadPoolExecutor(max_workers=4, jobs_outlive_task=True)
seen = collections.defaultdict(list)  # task id -> when its threads worked


def poll(task_id):
    def do_work():
        seen[task_id].append(time.time())

    while not cct.cancelled():
        do_work()
        cct.wait_cancelled(1.0)  # sleeps, but wakes as soon as the task is over


def heartbeats(task_id):
    def heartbeat():
        seen[task_id].append(time.time())

    while not cct.wait_cancelled(5.0):  # every 5 s until the task is over
        heartbeat()


def crunch(parts, done):
    try:
        for part in parts:
            cct.checkpoint()  # raises cct.TaskOver once the task is over
            done.append(part)
            time.sleep(0.01)
    except cct.TaskOver as over:
        log.info('stopping: task %s %s', over.task_id, over.reason)
        done.append(over.reason)


@app.task(bind=True)
def watch(self, seconds):
    cct.TaskThread(target=poll, args=(self.request.id,)).start()
    cct.TaskThread(target=heartbeats, args=(self.request.id,)).start()
    time.sleep(seconds)  # the real work; when it returns, both threads stop
    return seconds


@app.task(bind=True)
def give_up(self, parts):
    done = []
    thread = cct.TaskThread(target=crunch, args=(parts, done))
    thread.start()
    cct.cancel()  # in the task: its threads stop
    thread.join(10)
    return done


def stop(result):
    """Elsewhere in the same worker process, by task id."""
    return cct.cancel(result.id)
