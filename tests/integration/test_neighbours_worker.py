"""Real workers (prefork and threads, Redis) that set up Sentry, OpenTelemetry and
``install()`` in a given order when they import their tasks (tests/helpers/neighbours_tasks.py).

With OpenTelemetry's Celery instrumentation the task runs in its ``run/<name>``
span: a span started in the task's threads must have it as parent.  Progress
from a TaskThread and a ``submit()`` job must reach the client.  A neighbour the
interpreter lacks is left out of the order (and fails under CI where the cell
names it in ``CCT_EXPECT_NEIGHBOURS``).
"""

from __future__ import absolute_import

import pytest

from tests.conftest import POOLS, _worker
from tests.helpers import neighbours
from tests.integration.test_integration import (
    ACK_TIMEOUT,
    RESULT_TIMEOUT,
    ProbeRun,
    assert_ids,
    assert_ran_in_other_thread,
)
from tests.integration.test_neighbours import missing_neighbours

TASK = 'cct_itest.neighbours'
# Sentry before install(), and install() before both; Sentry and OpenTelemetry both ways.
WORKER_ORDERS = [('sentry', 'install', 'otel'), ('install', 'otel', 'sentry')]
WORKER_POOLS = [pool for pool in ('prefork', 'threads') if pool in POOLS]


def order_here(order):
    """``order`` without the neighbours this interpreter lacks (failing under CI where
    the cell expects them)."""
    missing = missing_neighbours(order)
    kept = tuple(step for step in order if step not in missing)
    if not set(kept) & set(neighbours.MODULES):
        pytest.skip('neither Sentry nor OpenTelemetry is installed')
    return kept


def _params():
    return [
        pytest.param((order, pool), id='%s-%s' % ('-'.join(order), pool))
        for order in WORKER_ORDERS
        for pool in WORKER_POOLS
    ]


@pytest.fixture(scope='module', params=_params())
def neighbour_worker(request, worker_registry):
    """A Redis worker that applied an order of neighbours at import."""
    order, pool = request.param
    env = {neighbours.ORDER_VARIABLE: ','.join(order_here(order))}
    return _worker(request, worker_registry, 'redis', pool, env)


def applied_by(worker):
    return list(neighbours.parse(worker.extra_env[neighbours.ORDER_VARIABLE]))


def entry_points_report(worker):
    report = worker.client.send_task(TASK).get(timeout=RESULT_TIMEOUT)
    assert report['applied'] == applied_by(worker), report['applied']
    return report


@pytest.mark.parametrize('entry', ['TaskThread', 'submit'])
def test_progress_from_a_thread_reaches_the_client(neighbour_worker, entry):
    """``self.update_state(state='PROGRESS', meta=...)`` from a TaskThread or a
    ``cct.submit()`` job is seen by the client while the task runs, and the task
    returns what the job returned."""
    run = ProbeRun(neighbour_worker, entry, progress=True, ack_timeout=ACK_TIMEOUT)
    report = run.progress_then_report()
    assert_ids(report, run.result.id)
    assert_ran_in_other_thread(report)
    assert run.result.state == 'SUCCESS'


def test_every_entry_point_sees_the_task_and_the_neighbours(neighbour_worker):
    report = entry_points_report(neighbour_worker)
    found = neighbours.all_problems(report)
    assert not found, neighbours.describe(report, found)
    assert report['reproductions'] == {
        'update_state_target': {
            'status': 'PROGRESS',
            'result': {'reproduction': 'update_state as the target'},
        },
        'submit_result': 1,
    }


def test_span_in_a_task_thread_is_a_child_of_the_celery_task_span(neighbour_worker):
    """OpenTelemetry's Celery instrumentation makes ``run/<task>`` current for the task
    body; a span a TaskThread starts has it as parent, in the same trace."""
    if 'otel' not in applied_by(neighbour_worker):
        pytest.skip('OpenTelemetry is not installed')
    report = entry_points_report(neighbour_worker)
    task_span = report['span']
    assert task_span is not None and task_span['name'] == 'run/' + TASK, task_span
    thread = report['entries']['TaskThread']
    assert (thread['span_parent'], thread['span_trace']) == (
        task_span['span_id'],
        task_span['trace_id'],
    )
