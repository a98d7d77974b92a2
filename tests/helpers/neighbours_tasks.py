"""The worker side of the neighbour tests (tests/integration/test_neighbours_worker.py).

Registered on the integration app: ``tests.helpers.integration_tasks`` imports this
module at its bottom.  A worker started with ``CCT_WORKER_NEIGHBOURS`` (e.g.
``sentry,install,otel``) sets up Sentry, OpenTelemetry (threading, and Celery
in each pool process) and ``install()`` here, in that order; without it
nothing is set up.  Python 2.7 compatible.
"""

from __future__ import absolute_import

from tests.helpers import neighbours
from tests.helpers.integration_tasks import app

neighbours.apply_from_env()


@app.task(bind=True, name='cct_itest.neighbours')
def observe_entry_points(self):
    """Every entry point from this task: what each target saw (tests.helpers.neighbours)."""
    return neighbours.observe_entry_points(self)
