"""Tasks for tests/integration/test_final_word.py: the final state is the last word, and a
task's threads leave no result backend and no connection behind.

Registered on the integration app (``tests.helpers.integration_tasks`` imports this
module at its bottom).  Every wait is bounded.  Python 2.7 compatible.

A worker started with ``CCT_WORKER_HEAP_OBJECTS=N`` keeps N objects alive
(an application-sized heap: the cyclic collector's full passes grow rare),
and with ``CCT_WORKER_NOFILE=N`` runs with that many file descriptors at most.
"""

from __future__ import absolute_import, print_function

import gc
import os
import threading
import time

from celery.backends.base import Backend  # every backend's base (BaseBackend is one branch)

import celery_ctxthread as cct
from tests.helpers.integration_tasks import JOIN_TIMEOUT, app

_HEAP = [object() for _ in range(int(os.environ.get('CCT_WORKER_HEAP_OBJECTS') or 0))]

if os.environ.get('CCT_WORKER_NOFILE'):
    import resource

    _limit = int(os.environ['CCT_WORKER_NOFILE'])
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (_limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    )


def _update_every(task, period, duration):
    deadline = time.time() + duration
    step = 0
    while time.time() < deadline:
        step += 1
        task.update_state(state='PROGRESS', meta={'step': step})
        time.sleep(period)


@app.task(bind=True, name='cct_ftest.unjoined_updaters')
def unjoined_updaters(self, threads, period, duration):
    """Start ``threads`` TaskThreads that update PROGRESS every ``period``
    seconds for ``duration`` seconds, and return without joining them."""
    for _ in range(threads):
        cct.TaskThread(target=_update_every, args=(self, period, duration)).start()
    return 'returned'


def _make_updates(task, updates, report, lock):
    made, errors = 0, []
    for step in range(updates):
        try:
            task.update_state(state='PROGRESS', meta={'step': step})
            made += 1
        except Exception as exc:  # counted: the test fails on any
            errors.append('%s: %s' % (type(exc).__name__, exc))
    with lock:
        report['made'] += made
        report['errors'].extend(errors[:3])


@app.task(bind=True, name='cct_ftest.joined_updaters')
def joined_updaters(self, threads, updates):
    """``threads`` TaskThreads make ``updates`` updates each; joined.  Returns
    how many were made and the first errors."""
    report, lock = {'made': 0, 'errors': []}, threading.Lock()
    workers = []
    for _ in range(threads):
        try:
            workers.append(cct.TaskThread(target=_make_updates, args=(self, updates, report, lock)))
            workers[-1].start()
        except Exception as exc:  # e.g. no file descriptor left for a new thread
            report['errors'].append('start: %s: %s' % (type(exc).__name__, exc))
    for worker in workers:
        worker.join(JOIN_TIMEOUT)
    return report


def _tcp_peer_ports():
    """The remote port of each TCP connection, by socket inode (Linux)."""
    ports = {}
    for name in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(name) as table:
                next(table)
                for line in table:
                    fields = line.split()
                    ports[fields[9]] = int(fields[2].rsplit(':', 1)[1], 16)
        except IOError:
            pass
    return ports


def _open_files():
    targets = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            targets.append(os.readlink('/proc/self/fd/' + fd))
        except OSError:  # closed meanwhile
            pass
    return targets


@app.task(name='cct_ftest.resources')
def resources(port, collect=False):
    """What this worker process holds now: result backends alive, connections
    to ``port`` and open SQLite files; after a full collection only when ``collect``."""
    if collect:
        gc.collect()
    backends = sum(1 for obj in gc.get_objects() if isinstance(obj, Backend))
    ports, files = _tcp_peer_ports(), _open_files()
    sockets = [f for f in files if f.startswith('socket:[') and ports.get(f[8:-1]) == port]
    databases = [f for f in files if f.endswith('.sqlite')]
    return {
        'pid': os.getpid(),
        'backends': backends,
        'sockets': len(sockets),
        'databases': len(databases),
        # gen 2: the full passes, which alone free a dead thread's backend cycle
        'full_collections': gc.get_stats()[2]['collections'] if hasattr(gc, 'get_stats') else -1,
    }
