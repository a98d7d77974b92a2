"""asyncio inside a task: what the event loop's executor jobs see, and the recipe.

An event loop run by a task runs on the task's thread, so its coroutines see
the task.  ``loop.run_in_executor(None, fn)`` and ``asyncio.to_thread(fn)``
run ``fn`` on the loop's default executor, a plain ``ThreadPoolExecutor``
whose threads see no task, unless the loop's default executor is a
:class:`~celery_ctxthread.TaskThreadPoolExecutor` or :func:`install` is in
effect.

The ``async def`` forms live in strings, compiled only where asyncio exists:
this file compiles on Python 2.7 too.
"""

from __future__ import absolute_import

import sys

import pytest

import celery_ctxthread as cct
from tests.helpers.tasks_inprocess import current_id, probe, running

try:
    import asyncio
except ImportError:  # Python 2.7
    asyncio = None

try:
    import contextvars
except ImportError:
    contextvars = None

needs_asyncio = pytest.mark.skipif(asyncio is None, reason='asyncio: Python 3')
needs_asyncio_run = pytest.mark.skipif(
    sys.version_info < (3, 7), reason='asyncio.run, get_running_loop: Python 3.7+'
)
needs_to_thread = pytest.mark.skipif(
    sys.version_info < (3, 9), reason='asyncio.to_thread: Python 3.9+'
)

TIMEOUT = 10


def close(loop):
    """Close ``loop``, waiting for its default executor's threads where Python can."""
    try:
        if hasattr(loop, 'shutdown_default_executor'):  # Python 3.9+
            loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def run_in_default_executor(fn, executor=None):
    """``await loop.run_in_executor(None, fn)`` on a new loop, on this thread."""
    loop = asyncio.new_event_loop()
    try:
        if executor is not None:
            loop.set_default_executor(executor)
        job = loop.run_in_executor(None, fn)
        return loop.run_until_complete(asyncio.wait_for(job, TIMEOUT))
    finally:
        close(loop)


@needs_asyncio
def test_run_in_executor_sees_no_task_by_default():
    with running(probe, 'abc'):
        assert current_id() == 'abc'  # the loop itself runs on the task's thread
        assert run_in_default_executor(current_id) is None


@needs_asyncio
def test_task_executor_as_the_default_executor_propagates():
    executor = cct.TaskThreadPoolExecutor(max_workers=1)
    loop = asyncio.new_event_loop()
    try:
        loop.set_default_executor(executor)
        with running(probe, 'abc'):
            in_task = loop.run_until_complete(loop.run_in_executor(None, current_id))
        # The same loop and executor thread, outside the task: nothing is left over.
        after = loop.run_until_complete(loop.run_in_executor(None, current_id))
    finally:
        close(loop)
        executor.shutdown(wait=True)
    assert (in_task, after) == ('abc', None)


@needs_asyncio
def test_install_makes_the_lazily_made_default_executor_propagate(installed):
    loop = asyncio.new_event_loop()
    try:
        with running(probe, 'abc'):  # the loop makes its executor here, inside the task
            in_task = loop.run_until_complete(loop.run_in_executor(None, current_id))
        after = loop.run_until_complete(loop.run_in_executor(None, current_id))
    finally:
        close(loop)
    assert (in_task, after) == ('abc', None)


@needs_to_thread
def test_to_thread_sees_no_task_by_default():
    with running(probe, 'abc'):
        assert asyncio.run(asyncio.to_thread(current_id)) is None


@needs_to_thread
def test_to_thread_with_the_task_executor_as_default_propagates():
    with running(probe, 'abc'):
        assert run_coroutine(asyncio.to_thread, current_id) == 'abc'


def run_coroutine(make_coroutine, *args):
    loop = asyncio.new_event_loop()
    try:
        loop.set_default_executor(cct.TaskThreadPoolExecutor())
        return loop.run_until_complete(asyncio.wait_for(make_coroutine(*args), TIMEOUT))
    finally:
        close(loop)


@needs_to_thread
def test_install_makes_to_thread_propagate(installed):
    with running(probe, 'abc'):
        assert asyncio.run(asyncio.to_thread(current_id)) == 'abc'
    assert asyncio.run(asyncio.to_thread(current_id)) is None


# The recipe as the docs put it for code that runs under asyncio.run():
# the first thing the main coroutine does is set the default executor.
MAIN = """
async def main(use_to_thread):
    loop = asyncio.get_running_loop()
    loop.set_default_executor(cct.TaskThreadPoolExecutor())
    tenant.set('set in the coroutine')
    if use_to_thread:
        return await asyncio.to_thread(seen)
    return await loop.run_in_executor(None, seen)
"""


def compiled_main():
    tenant = contextvars.ContextVar('tenant', default=None)

    def seen():
        return current_id(), tenant.get()

    namespace = {'asyncio': asyncio, 'cct': cct, 'tenant': tenant, 'seen': seen}
    exec(compile(MAIN, '<recipe>', 'exec'), namespace)
    return namespace['main']


@needs_asyncio_run
@pytest.mark.parametrize(
    'use_to_thread',
    [
        False,
        pytest.param(True, marks=needs_to_thread),
    ],
    ids=['run_in_executor', 'to_thread'],
)
def test_recipe_under_asyncio_run(use_to_thread):
    main = compiled_main()
    with running(probe, 'abc'):
        assert asyncio.run(main(use_to_thread)) == ('abc', 'set in the coroutine')
