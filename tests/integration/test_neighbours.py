"""Every entry point beside Sentry, OpenTelemetry and ddtrace, in every order of setting them up.

For each order of ``sentry_sdk.init()``, ``ThreadingInstrumentor().instrument()``
and ``cct.install()`` (and orders without some of them, and orders with
``ddtrace.patch(futures=True)``, ``uninstall()`` and ``install()`` again), a fresh interpreter
(tests/helpers/neighbour_probe.py) runs each entry point inside a simulated task and
reports what the target saw.  Each must see the task (``current_task``,
``self.request.id``, a working ``self.update_state``), Sentry's forked scope
(the task's tags, and its own tag kept out of the task's scope) and
OpenTelemetry's and ddtrace's parent span (the task's).  Plain threading propagates the
task only under ``install()``; without it nothing of ours runs there, and only
the task's absence is checked.  Where Sentry does not fork a scope itself
(Timers when OpenTelemetry came first, executor jobs on Sentry 1.x,
``asyncio.to_thread``, ``wrap()``), the job shares the task's Sentry scope:
see ``tests.helpers.neighbours.sentry_forks``.

A neighbour missing from the interpreter skips its orders, unless the cell
names it in ``CCT_EXPECT_NEIGHBOURS`` (tox.ini): then CI fails.
"""

from __future__ import absolute_import

import itertools
import json
import os
import sys

import pytest

from tests.conftest import REPO_DIR, _python_path, unavailable
from tests.helpers import neighbours
from tests.helpers.neighbour_probe import PREFIX
from tests.helpers.tasks_inprocess import run_bounded

PROBE_TIMEOUT = 120.0  # imports, then every entry point (a second when all is well)

# The three in every order, then fewer.
ORDERS = list(itertools.permutations(('sentry', 'otel', 'install'))) + [
    # Without install(): the neighbours' propagation with our own entry points.
    ('sentry', 'otel'),
    ('otel', 'sentry'),
    ('sentry',),
    ('otel',),
    # One neighbour (cells that have only one of them).
    ('sentry', 'install'),
    ('install', 'sentry'),
    ('otel', 'install'),
    ('install', 'otel'),
    # uninstall() under their wrappers: ours stays below, passing everything through.
    ('install', 'sentry', 'otel', 'uninstall'),
    ('install', 'sentry', 'uninstall'),
]

# ddtrace wraps ThreadPoolExecutor.submit by rewriting the function's code in
# place: after install() the attribute is still our function, with ddtrace's
# code in it.
DDTRACE_ORDERS = [
    ('ddtrace',),
    ('ddtrace', 'install'),
    ('install', 'ddtrace'),
    ('install', 'ddtrace', 'uninstall'),
    ('install', 'ddtrace', 'uninstall', 'install'),
    ('ddtrace', 'install', 'uninstall'),
    ('ddtrace', 'install', 'uninstall', 'install'),
    ('sentry', 'install', 'ddtrace', 'otel'),
    ('install', 'sentry', 'ddtrace', 'otel', 'uninstall'),
]
ORDERS += DDTRACE_ORDERS

_reports = {}


def order_id(order):
    return '-'.join(order)


def missing_neighbours(order):
    """The neighbours in ``order`` that this interpreter lacks; under CI, a failure
    for one that the cell names in ``CCT_EXPECT_NEIGHBOURS``."""
    missing = [step for step in order if step in neighbours.MODULES]
    missing = [step for step in missing if not neighbours.available(step)]
    for step in set(missing) & neighbours.expected():
        unavailable(
            '%s (%s) is not installed, but %s names it'
            % (step, neighbours.MODULES[step], neighbours.EXPECT_VARIABLE)
        )
    return missing


def probe_report(order):
    """The probe's report for ``order``, from one fresh interpreter per order.

    ``exit`` and ``output`` (its tail) are added, for the failure messages.
    """
    missing = missing_neighbours(order)
    if missing:
        pytest.skip('not installed here: %s' % ', '.join(missing))
    if order not in _reports:
        command = [sys.executable, '-m', 'tests.helpers.neighbour_probe', ','.join(order)]
        env = dict(os.environ, PYTHONPATH=_python_path())
        env.pop(neighbours.ORDER_VARIABLE, None)
        code, output = run_bounded(command, PROBE_TIMEOUT, cwd=REPO_DIR, env=env)
        lines = output.splitlines()
        parts = [json.loads(line[len(PREFIX) :]) for line in lines if line.startswith(PREFIX)]
        report = neighbours.assemble(parts)
        report['exit'], report['output'] = code, '\n'.join(lines[-80:])
        _reports[order] = report
    return _reports[order]


def complete(report):
    """``report``, after checking that the probe got through every part."""
    missing = set(neighbours.entry_points()) - set(report['entries'])
    missing |= {'reproductions'} - set(report)
    assert report['exit'] == 0 and not missing, (
        'the probe exited with %s (killed after %s s?) with no report from %s; its output:\n%s'
        % (report['exit'], PROBE_TIMEOUT, ', '.join(sorted(missing)), report['output'])
    )
    return report


def explain(report, found):
    return '%s\nthe probe exited with %s; its output:\n%s' % (
        neighbours.describe(report, found),
        report['exit'],
        report['output'],
    )


def assert_entry_right(report, entry):
    assert entry in report['entries'], explain(report, {entry: ['no report']})
    wrong = neighbours.problems(report, entry)
    assert not wrong, explain(report, {entry: wrong})


@pytest.mark.parametrize('order', ORDERS, ids=order_id)
def test_every_entry_point_sees_the_task_and_the_neighbours(order):
    report = probe_report(order)
    found = neighbours.all_problems(report)
    assert not found, explain(report, found)
    complete(report)
    assert report['applied'] == list(order)


@pytest.mark.parametrize(
    'order', [('sentry',), ('sentry', 'install'), ('install', 'sentry')], ids=order_id
)
def test_sentry_thread_whose_target_is_update_state(order):
    """The issue: with Sentry, ``TaskThread(target=self.update_state)`` failed in
    ``run`` with ``TypeError: __call__() takes 1 positional argument but 2 were given``."""
    found = complete(probe_report(order))['reproductions']
    assert found['update_state_target'] == {
        'status': 'PROGRESS',
        'result': {'reproduction': 'update_state as the target'},
    }


@pytest.mark.parametrize('order', [('sentry',), ('install', 'sentry')], ids=order_id)
def test_sentry_submit_returns_the_jobs_result(order):
    """The issue: with Sentry, ``cct.submit(lambda: 1).result(timeout=5)`` timed out."""
    assert complete(probe_report(order))['reproductions']['submit_result'] == 1


@pytest.mark.parametrize(
    'entry', ['ThreadPoolExecutor.submit', 'Timer', 'TaskThreadPoolExecutor.submit']
)
def test_otel_instrumented_before_install(entry):
    """The issue: after OpenTelemetry, install() made ``ThreadPoolExecutor().submit``
    raise ``AttributeError: ... '_shutdown_lock'``, and plain Timers did not propagate
    (OpenTelemetry gives Timer a ``start`` of its own)."""
    assert_entry_right(probe_report(('otel', 'install')), entry)


@pytest.mark.skipif(sys.version_info < (3, 9), reason='asyncio.to_thread is new in 3.9')
@pytest.mark.parametrize(
    'order', [('otel', 'install'), ('sentry', 'otel', 'install')], ids=order_id
)
def test_asyncio_to_thread_under_install(order):
    assert_entry_right(probe_report(order), 'asyncio.to_thread')


@pytest.mark.parametrize(
    'order, without_us',
    [
        (('install', 'sentry', 'otel', 'uninstall'), ('sentry', 'otel')),
        (('install', 'sentry', 'uninstall'), ('sentry',)),
        (('install', 'ddtrace', 'uninstall'), ('ddtrace',)),
        (('install', 'sentry', 'ddtrace', 'otel', 'uninstall'), ('sentry', 'ddtrace', 'otel')),
    ],
    ids=['sentry-otel', 'sentry', 'ddtrace', 'sentry-ddtrace-otel'],
)
def test_uninstall_under_their_wrappers_leaves_plain_threading_as_without_us(order, without_us):
    """After uninstall(), ours stays under Sentry's, OpenTelemetry's and ddtrace's wrappers and
    passes through: plain threading gets exactly what it gets where we never installed
    (between Sentry and OpenTelemetry themselves, that is not always their propagation)."""
    ours, theirs = complete(probe_report(order)), complete(probe_report(without_us))
    for entry, (_, _, plain) in sorted(neighbours.entry_points().items()):
        if plain:
            assert neighbours.outcome(ours, entry) == neighbours.outcome(theirs, entry), entry


def test_plain_threads_do_not_propagate_without_install():
    """The probe tells the two apart: without install() a plain Thread has no task."""
    report = complete(probe_report(('sentry', 'otel')))
    assert neighbours.outcome(report, 'Thread').get('task') is False
    assert neighbours.outcome(report, 'TaskThread').get('task') is True


@pytest.mark.parametrize(
    'order',
    [('install', 'ddtrace', 'uninstall'), ('install', 'ddtrace', 'uninstall', 'install')],
    ids=order_id,
)
def test_uninstall_keeps_ddtrace_executor_tracing(order):
    """The issue: ddtrace rewrites ``ThreadPoolExecutor.submit``'s code in place, so the
    attribute was still ours and uninstall() put the stdlib's back, silently taking
    ddtrace's executor tracing out: a job's span lost its parent."""
    report = complete(probe_report(order))
    assert neighbours.outcome(report, 'ThreadPoolExecutor.submit') == {
        'task': neighbours.installed_at_end(order),
        'task ddtrace span parent': True,
    }


@pytest.mark.parametrize(
    'order',
    [('install', 'ddtrace'), ('install', 'ddtrace', 'uninstall', 'install')],
    ids=order_id,
)
def test_ddtrace_rewriting_our_submit_counts_as_wrapping_it(order):
    """ddtrace's code in our ``submit`` runs its job wrapper around ours: what it sets
    for the job stays on top of the snapshot, as for any wrapper below ours."""
    assert complete(probe_report(order))['submit_wrapped_by_others'] is True
