"""Apply neighbours in an order, then run every entry point inside a simulated task.

::

    python -m tests.helpers.neighbour_probe sentry,otel,install

A fresh interpreter per order, because Sentry's patches cannot be undone.
The task is pushed exactly as Celery's tracer does (tests.helpers.tasks_inprocess),
inside a span standing for the one a Celery instrumentation would start.
Prints each part of the report as soon as it is known, one line each,
``NEIGHBOUR-REPORT <json [path, value]>``: a probe killed for hanging still
tells what it saw (:func:`tests.helpers.neighbours.assemble` puts them together).
Python 2.7 compatible.
"""

from __future__ import absolute_import, print_function

import contextlib
import json
import sys

from tests.helpers import neighbours

PREFIX = 'NEIGHBOUR-REPORT '
TASK_ID = 'neighbour-task'


@contextlib.contextmanager
def task_span():
    """The spans a Celery instrumentation would make current for the task's body."""
    with otel_task_span(), ddtrace_task_span():
        yield


@contextlib.contextmanager
def otel_task_span():
    if 'otel' not in neighbours.APPLIED:
        yield
        return
    from opentelemetry import trace

    with trace.get_tracer(neighbours.TRACER_NAME).start_as_current_span('simulated task'):
        yield


@contextlib.contextmanager
def ddtrace_task_span():
    if 'ddtrace' not in neighbours.APPLIED:
        yield
        return
    from ddtrace import tracer

    with tracer.trace('simulated task'):
        yield


def main(argv):
    neighbours.record_thread_errors()
    # Before Celery and celery_ctxthread are imported, as an app that sets up
    # Sentry first would do; the install step imports celery_ctxthread.
    neighbours.apply(neighbours.parse(argv[1]))
    from tests.helpers.tasks_inprocess import probe, running

    with running(probe, TASK_ID), task_span():
        neighbours.observe_entry_points(probe, emit)


def emit(path, value):
    print(PREFIX + json.dumps([path, value], sort_keys=True))
    sys.stdout.flush()


if __name__ == '__main__':
    main(sys.argv)
