"""Sentry: sentry_sdk.init() and cct.install() in either order."""

from concurrent.futures import ThreadPoolExecutor

import sentry_sdk
from celery import Celery, current_task

import celery_ctxthread as cct

app = Celery('proj')
sentry_sdk.init()  # with your DSN; its ThreadingIntegration is on by default
cct.install()  # before or after sentry_sdk.init(): either order works


def work(part):
    sentry_sdk.set_tag('part', part)  # Sentry forked this job's scope: the tag stays here
    return part, current_task.request.id


@app.task
def crunch(parts):
    sentry_sdk.set_tag('stage', 'crunch')  # the jobs' events carry it too
    with ThreadPoolExecutor(max_workers=4) as pool:  # say, inside a library
        return list(pool.map(work, parts))
