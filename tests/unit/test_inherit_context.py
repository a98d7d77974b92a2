"""Python 3.14's ``thread_inherit_context`` flag, and what it does not replace.

With ``-X thread_inherit_context=1`` (or ``PYTHON_THREAD_INHERIT_CONTEXT=1``) a
plain thread starts in a copy of the ``contextvars`` context of whoever called
its ``start()``.  Celery's task and request stacks are thread-locals, not
context variables, so the thread still sees no task; and a pool's worker thread,
started lazily inside the first ``submit()``, keeps that submitter's context for
every later job.  Each test runs a fresh interpreter with the flag on, so it
holds on every cell of 3.14 and up whatever the environment says.
"""

from __future__ import absolute_import

import sys

import pytest

from tests.helpers.tasks_inprocess import run_bounded

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 14), reason='thread_inherit_context is new in Python 3.14'
)

PROBE = """
import contextvars, sys, threading
from concurrent.futures import ThreadPoolExecutor
from celery import Celery, current_task
import celery_ctxthread as cct

assert sys.flags.thread_inherit_context == 1
tenant = contextvars.ContextVar('tenant', default='unset')
app = Celery('proj', set_as_current=False)
app.conf.task_always_eager = True
seen = {}

def look(label):
    seen[label] = (tenant.get(), current_task.name if current_task else None)

@app.task(name='proj.report')
def report(name):
    tenant.set(name)
    thread = threading.Thread(target=look, args=('thread ' + name,))
    thread.start()
    thread.join()
    pool.submit(look, 'job ' + name).result(timeout=10)

if %(install)r:
    cct.install()
pool = ThreadPoolExecutor(max_workers=1)   # one worker, started by the first submit()
report.apply(args=('a',))
report.apply(args=('b',))
for label in sorted(seen):
    print('%%s: %%s %%s' %% ((label,) + seen[label]))
"""


def probe(install):
    command = [sys.executable, '-X', 'thread_inherit_context=1', '-c', PROBE % {'install': install}]
    status, output = run_bounded(command, 60)
    assert status == 0, output
    return output.splitlines()


def test_inherit_context_gives_a_plain_thread_the_contextvars_but_no_task():
    lines = probe(install=False)
    assert 'thread a: a None' in lines and 'thread b: b None' in lines, lines


def test_inherit_context_leaves_a_lazily_started_pool_worker_in_its_first_submitters_context():
    lines = probe(install=False)
    assert 'job a: a None' in lines and 'job b: a None' in lines, lines


def test_inherit_context_with_install_gives_each_thread_and_job_its_own_task_and_context():
    lines = probe(install=True)
    expected = ['job a: a proj.report', 'job b: b proj.report']
    assert lines == expected + ['thread a: a proj.report', 'thread b: b proj.report'], lines
