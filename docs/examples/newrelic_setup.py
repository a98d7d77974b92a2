"""New Relic: register the application, and so start its harvest thread, before any task."""

import newrelic.agent

newrelic.agent.initialize()  # newrelic.ini (NEW_RELIC_CONFIG_FILE); before Celery is imported

from celery import Celery  # noqa: E402
from celery.signals import worker_init, worker_process_init  # noqa: E402

import celery_ctxthread as cct  # noqa: E402

app = Celery('proj')
cct.install()


def register_new_relic():
    # Starts the agent's threads, and waits at most 10 s for New Relic's answer.
    newrelic.agent.register_application(timeout=10.0)


@worker_init.connect
def start_new_relic(sender=None, **kwargs):
    # The solo and threads pools run tasks in this process. A prefork pool's
    # processes register themselves (below): New Relic reports nothing from a
    # process forked after its parent registered.
    pool = sender.pool_cls  # a name such as 'threads', or a class
    if 'prefork' not in (pool.__module__ if isinstance(pool, type) else str(pool)):
        register_new_relic()


@worker_process_init.connect
def start_new_relic_in_pool_process(**kwargs):
    register_new_relic()


@app.task
def place_order(order):
    return order
