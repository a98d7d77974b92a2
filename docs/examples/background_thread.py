"""A library's background thread, started on first use: start it before any task."""

import threading

from celery import Celery, current_task
from celery.signals import worker_process_init

import celery_ctxthread as cct

try:
    import queue
except ImportError:  # Python 2.7
    import Queue as queue

app = Celery('proj')
cct.install()


class MetricsClient(object):
    """Stands for a library that starts its flusher thread on first use."""

    def __init__(self):
        self.pending = queue.Queue()
        self.flusher = None
        self.sent = []  # (metric, the task its flusher sees): what its log lines would name

    def start(self):
        if self.flusher is None:
            self.flusher = threading.Thread(target=self.flush, name='metrics-flusher')
            self.flusher.daemon = True
            self.flusher.start()  # under install(), inside a task: it keeps that task

    def increment(self, metric):
        self.start()  # the first call starts the flusher
        self.pending.put(metric)

    def flush(self):
        for metric in iter(self.pending.get, None):
            self.sent.append((metric, current_task.request.id if current_task else None))

    def stop(self):
        if self.flusher is not None:
            self.pending.put(None)
            self.flusher.join(10)


metrics = MetricsClient()


@worker_process_init.connect
def start_metrics(**kwargs):
    metrics.start()  # in each worker process, before it runs any task


@app.task
def place_order(order):
    metrics.increment('orders')
    return order
