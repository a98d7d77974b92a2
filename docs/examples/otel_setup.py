"""OpenTelemetry: spans that threads start are children of the task's span."""

import threading

from celery import Celery
from celery.signals import worker_process_init
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.threading import ThreadingInstrumentor

import celery_ctxthread as cct

app = Celery('proj')
tracer = trace.get_tracer(__name__)
cct.install()
ThreadingInstrumentor().instrument()  # before or after cct.install(): either order works


@worker_process_init.connect(weak=False)
def instrument_celery(**kwargs):
    CeleryInstrumentor().instrument()  # the task's span is current while it runs


def work(part, seen):
    with tracer.start_as_current_span('work %s' % part):  # a child of the task's span
        seen.append(current_task_id())


def current_task_id():
    from celery import current_task

    return current_task.request.id


@app.task
def crunch(parts):
    seen = []
    threads = [threading.Thread(target=work, args=(part, seen)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen
