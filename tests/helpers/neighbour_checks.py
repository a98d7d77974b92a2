"""Sentry's and OpenTelemetry's threading patches beside install(), in one process.

Both patch process-wide and Sentry cannot be undone, so
``tests/integration/test_docs_examples.py`` runs this module in a fresh interpreter for
each order of setup, and reads the one JSON line it prints::

    python -m tests.helpers.neighbour_checks sentry init-first
    python -m tests.helpers.neighbour_checks otel install-first
"""

from __future__ import absolute_import, print_function

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.pool import ThreadPool

import celery_ctxthread as cct
from tests.helpers.tasks_inprocess import observe, probe, running
from tests.integration.test_docs_examples import load

TIMEOUT = 10


def _in_thread(make_thread):
    def start(fn):
        box = []
        thread = make_thread(lambda: box.append(fn()))
        thread.start()
        thread.join(TIMEOUT)
        return box[0] if box else 'did not run'

    return start


def _in_executor(fn):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result(TIMEOUT)


def _wrapped_in_thread(fn):
    wrapped = cct.wrap(fn)  # captured here, in the task
    return _in_thread(lambda target: threading.Thread(target=target))(wrapped)


def _run_in_thread(fn):
    context = cct.capture()  # here, in the task
    return _in_thread(lambda target: threading.Thread(target=target))(lambda: context.run(fn))


def _in_thread_pool(fn):
    pool = ThreadPool(1)
    try:
        return pool.apply_async(fn).get(TIMEOUT)
    finally:
        pool.terminate()
        pool.join()


def sentry(order):
    import sentry_sdk

    if order == 'install-first':
        cct.install()
    example = load('sentry_setup')  # sentry_sdk.init(), then cct.install()
    result = example.crunch.delay([1, 2])
    report = {'example': [result.get(), result.id]}

    def job():
        scope = sentry_sdk.get_isolation_scope()
        seen = [observe()['current_id'], scope._tags.get('where'), scope is not task_scope[0]]
        sentry_sdk.set_tag('where', 'job')  # lands in the task's scope unless forked
        return seen

    def job_in_own_scope():
        with sentry_sdk.isolation_scope():
            return job()

    # Sentry forks its scopes in Thread.start and ThreadPoolExecutor.submit only:
    # a ThreadPool job, or a callable from wrap(), runs in a copy of its caller's
    # context, with the caller's scope, unless it opens a scope of its own.
    starters = [
        ('ThreadPoolExecutor', _in_executor),
        ('ThreadPool', _in_thread_pool),
        ('wrap', _wrapped_in_thread),
        ('TaskContext.run', _run_in_thread),
        ('ThreadPool, isolation_scope', lambda fn: _in_thread_pool(job_in_own_scope)),
        ('wrap, isolation_scope', lambda fn: _wrapped_in_thread(job_in_own_scope)),
    ]
    task_scope = []
    with running(probe, 'abc'):
        sentry_sdk.set_tag('where', 'task')
        task_scope.append(sentry_sdk.get_isolation_scope())
        for name, start in starters:
            seen = start(job)
            report[name] = seen + [task_scope[0]._tags.get('where')]  # + the task's tag after
            sentry_sdk.set_tag('where', 'task')
    return report


def otel(order):
    from opentelemetry import trace
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    if order == 'instrument-first':
        ThreadingInstrumentor().instrument()
    example = load('otel_setup')  # cct.install(), then ThreadingInstrumentor().instrument()
    from celery.signals import worker_process_init

    worker_process_init.send(sender=None)  # the example instruments Celery there
    result = example.crunch.delay([1, 2])
    ids = result.get()
    report = {'example ids': [ids, result.id]}
    spans = exporter.get_finished_spans()
    task_spans = [span for span in spans if span.name.startswith('run/')]
    report['example task spans'] = len(task_spans)
    if task_spans:
        parent = task_spans[0].context.span_id
        report['example children'] = sorted(
            span.name for span in spans if span.parent is not None and span.parent.span_id == parent
        )

    tracer = trace.get_tracer(__name__)

    def job():
        with tracer.start_as_current_span('job') as span:
            return [observe()['current_id'], span.parent is not None and span.parent.span_id]

    with running(probe, 'abc'), tracer.start_as_current_span('task') as task_span:
        expected = task_span.get_span_context().span_id
        for name, start in [
            ('Timer', _in_thread(lambda target: threading.Timer(0.01, target))),
            ('ThreadPoolExecutor', _in_executor),
            ('ThreadPool', _in_thread_pool),  # OpenTelemetry does not patch it
        ]:
            seen = start(job)
            report[name] = seen if isinstance(seen, str) else [seen[0], seen[1] == expected]
    return report


if __name__ == '__main__':
    check, order = sys.argv[1:]
    print(json.dumps({'check': check, 'order': order, 'report': globals()[check](order)}))
