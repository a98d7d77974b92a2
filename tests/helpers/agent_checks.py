"""Elastic APM, New Relic and Django beside ``install()``, each in a fresh interpreter.

An agent is set up once per process and keeps its threads for the life of the
process, so ``tests/integration/test_docs_examples.py`` runs this module once per check
and reads the one JSON line it prints::

    python -m tests.helpers.agent_checks elasticapm recipe    # the docs' example as it is
    python -m tests.helpers.agent_checks elasticapm without   # the same, less the recipe

Nothing leaves the machine: each agent's server is a loopback port bound here
and never listened on (a connection to it is refused), Elastic APM looks for no
cloud provider, and New Relic runs in developer mode (a collector of its own
that sends nothing) with every cloud and container detection off.  New Relic
would learn the host's address by ``connect()``-ing a UDP socket to a public
address (no packet, but not loopback): it is handed the loopback address
instead, and any connect to an address off this machine raises here.
"""

from __future__ import absolute_import, print_function

import gc
import io
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from celery.signals import worker_process_init

from celery_ctxthread.context import _CallInContext
from tests.integration.test_docs_examples import load

TIMEOUT = 10.0
_DEAD = []
_connect = socket.socket.connect


def _loopback_only(sock, address):
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and not (host.startswith('127.') or host in ('::1', 'localhost')):
        raise OSError('agent_checks: refusing to connect to %r: loopback only' % (address,))
    return _connect(sock, address)


socket.socket.connect = _loopback_only


def dead_port():
    """A loopback port bound here and never listened on."""
    dead = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dead.bind(('127.0.0.1', 0))
    _DEAD.append(dead)
    return dead.getsockname()[1]


def carried_task(thread):
    """The id of the task whose context ``thread`` runs in, or None.

    A thread that runs in a captured context has ``_CallInContext.__call__`` on its
    stack for as long as its target runs.
    """
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code is _CallInContext.__call__.__code__:
            return frame.f_locals['context'].task_id
        frame = frame.f_back
    return None


def threads_named(prefix, wait_for=()):
    """``{name: carried task id}`` of the live threads whose name starts with ``prefix``,
    once those named in ``wait_for`` are alive (at most ``TIMEOUT`` seconds)."""
    deadline = time.time() + TIMEOUT
    while True:
        found = [thread for thread in threading.enumerate() if thread.name.startswith(prefix)]
        names = {thread.name for thread in found}
        if set(wait_for) <= names or time.time() > deadline:
            return {thread.name: carried_task(thread) for thread in found}
        time.sleep(0.05)


# ------------------------------------------------------------ Elastic APM


ELASTIC_THREADS = ('eapm event processor thread',)


def elasticapm(variant):
    """A prefork pool process: the client made in the parent, the tasks in a fork."""
    os.environ.update(
        ELASTIC_APM_SERVER_URL='http://127.0.0.1:%d' % dead_port(),
        ELASTIC_APM_CLOUD_PROVIDER='none',  # else it asks cloud metadata servers
        ELASTIC_APM_SERVER_TIMEOUT='1s',
    )
    # The client's thread in the parent encodes the server's host: import that codec
    # now, not in that thread while this one forks.
    import encodings.idna  # noqa: F401

    example = load('elastic_apm_setup')
    if variant == 'without':
        worker_process_init.disconnect(example.start_apm_threads)
    report = {'parent': sorted(threads_named('eapm', ELASTIC_THREADS))}
    report['child'] = in_a_fork(lambda: _elastic_pool_process(example))
    return report


def _elastic_pool_process(example):
    worker_process_init.send(sender=None)  # as a prefork pool process does, first
    first = example.place_order.delay(1)
    second = example.place_order.delay(2)
    return {'tasks': [first.id, second.id], 'threads': threads_named('eapm', ELASTIC_THREADS)}


def in_a_fork(work):
    """``work()``'s JSON-able result, run in a forked child process (bounded)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running anything of the parent's
        try:
            os.close(read)
            with io.open(write, 'wb') as out:
                out.write(json.dumps(work()).encode('utf-8'))
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.time() + 3 * TIMEOUT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    with io.open(read, 'rb') as result:
        text = result.read().decode('utf-8')
    return json.loads(text) if text else 'the child reported nothing'


# -------------------------------------------------------------- New Relic

NEWRELIC_INI = """[newrelic]
license_key = 0000000000000000000000000000000000000000
app_name = celery-ctxthread tests
developer_mode = true
host = 127.0.0.1
port = %d
utilization.detect_aws = false
utilization.detect_azure = false
utilization.detect_azurefunction = false
utilization.detect_azureappservice = false
utilization.detect_docker = false
utilization.detect_kubernetes = false
utilization.detect_gcp = false
utilization.detect_pcf = false
"""


def newrelic(variant):
    """A worker on the threads pool: each task runs in a thread of the pool."""
    config = os.path.join(tempfile.mkdtemp(), 'newrelic.ini')
    with io.open(config, 'wb') as handle:
        handle.write((NEWRELIC_INI % dead_port()).encode('ascii'))
    os.environ['NEW_RELIC_CONFIG_FILE'] = config
    from newrelic.common import system_info

    system_info._nr_cached_ip_address = ['127.0.0.1']  # see the module's docstring
    example = load('newrelic_setup')
    if variant == 'recipe':
        # A worker's __init__ sends worker_init; it is not started.
        example.app.WorkController(pool_cls='threads', hostname='cct-checks@localhost')
    report = {'before': sorted(threads_named('NR-'))}
    with ThreadPoolExecutor(2) as pool:  # the threads pool's
        first = pool.submit(example.place_order.delay, 1).result(TIMEOUT)
        second = pool.submit(example.place_order.delay, 2).result(TIMEOUT)
    report['tasks'] = [first.id, second.id]
    report['threads'] = threads_named('NR-', ['NR-Harvest-Thread'])
    return report


# ----------------------------------------------------------------- Django


def django(variant):
    """Threads that query sqlite: what stays open once they are done."""
    import django as django_package
    from django.conf import settings

    database = os.path.join(tempfile.mkdtemp(), 'db.sqlite3')
    settings.configure(
        DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': database}}
    )
    django_package.setup()
    from django.db import connection

    example = load('django_threads')
    tables = ['a', 'b', 'c']
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute('CREATE TABLE %s (n INTEGER)' % table)
            cursor.execute('INSERT INTO %s VALUES (1)' % table)
    connection.close()
    if variant == 'without':
        example.closing_db = lambda fn: fn
        example.count_rows_in_pool = example.count_rows
    gc.collect()
    gc.disable()  # as between two of the collector's runs
    try:
        report = {'counts': example.count_all.delay(tables).get()}
        report['open after the threads'] = open_handles(database)
        report['pool counts'] = example.count_all_in_pool.delay(tables).get()
        report['open after the pool jobs'] = open_handles(database)
        gc.enable()
        gc.collect()
        report['open after the collector'] = open_handles(database)
    finally:
        gc.enable()
    return report


def open_handles(path):
    """How many of this process's file descriptors are open on ``path``."""
    fds = '/proc/self/fd'
    count = 0
    for fd in os.listdir(fds):
        try:
            count += os.readlink(os.path.join(fds, fd)) == path
        except OSError:  # closed since listed
            pass
    return count


if __name__ == '__main__':
    check, variant = sys.argv[1:]
    print(json.dumps({'check': check, 'variant': variant, 'report': globals()[check](variant)}))
