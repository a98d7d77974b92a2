"""Elastic APM: its client's threads, started in each pool process before any task."""

import elasticapm
from celery import Celery
from celery.signals import worker_process_init
from elasticapm.contrib.celery import register_exception_tracking, register_instrumentation

import celery_ctxthread as cct

app = Celery('proj')
cct.install()

client = elasticapm.Client(service_name='proj')  # server URL etc.: ELASTIC_APM_* variables
register_instrumentation(client)
register_exception_tracking(client)


@worker_process_init.connect
def start_apm_threads(**kwargs):
    # A forked pool process has none of the client's threads. The client would start
    # them again when it first sends, in the task_postrun of the first task, while
    # that task is still current: start them here, before any task.
    client.start_threads()


@app.task
def place_order(order):
    return order
