"""A user's module, type-checked against the stubs; never run or imported.

tox runs mypy on it twice (see tox.ini): env ``types`` with the pinned mypy and its
default target, env ``types-user`` with mypy 1.14 (the last to accept a 3.8 target)
and ``--python-version 3.8``. The first half must check clean with exact types (a
stub that decays to ``Any`` fails ``assert_type``). Every line of the second half is
a mistake that carries the one error code mypy must report for it; with
``warn_unused_ignores`` (mypy.ini) a mistake that goes unreported, or is reported
with another code, fails the check.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Iterator, List, Optional

from typing_extensions import assert_type

import celery_ctxthread as cct


def add(x: int, y: int) -> int:
    return x + y


def greet(name: str, *, punctuation: str = '!') -> str:
    return name + punctuation


pool = cct.TaskThreadPoolExecutor(max_workers=2)
context = cct.capture()

# What the README shows: accepted, with the exact types.
assert_type(cct.submit(add, 1, 2), Future[int])
assert_type(cct.submit(greet, 'a', punctuation='?'), Future[str])
assert_type(context, cct.TaskContext)
assert_type(context.run(add, 1, 2), int)
assert_type(context.run(greet, 'a', punctuation='?'), str)
assert_type(context.task_id, Optional[str])
assert_type(cct.wrap(add)(1, 2), int)
assert_type(cct.wrap(add).task_context, cct.TaskContext)
assert_type(pool.submit(add, 1, 2), Future[int])
assert_type(pool.submit(greet, 'a', punctuation='?'), Future[str])
assert_type(pool.map(add, [1], [2]), Iterator[int])
assert_type(cct.opt_out(cct.TaskThread(target=add, args=(1, 2))), cct.TaskThread)
assert_type(cct.opt_out(threading.Thread(target=add, args=(1, 2))), threading.Thread)
assert_type(cct.TaskTimer(30.0, add, args=(1, 2)), cct.TaskTimer)
assert_type(cct.installed(), bool)

# Mistakes: each must be reported, with exactly this code.
cct.submit(add, 1, 'two')  # type: ignore[arg-type]
cct.submit(add, 1)  # type: ignore[call-arg]
cct.submit(greet, 'a', punctuation=1)  # type: ignore[arg-type]
context.run(add, 'one', 2)  # type: ignore[arg-type]
context.run(add, 1)  # type: ignore[call-arg]
cct.wrap(add)(1, 'two')  # type: ignore[arg-type]
cct.wrap(add)(1, 2, 3)  # type: ignore[call-arg]
pool.submit(add, 1, 'two')  # type: ignore[arg-type]
pool.submit(add)  # type: ignore[call-arg]
total: str = cct.submit(add, 1, 2).result()  # type: ignore[assignment]
ran: str = context.run(add, 1, 2)  # type: ignore[assignment]
wrapped: str = cct.wrap(add)(1, 2)  # type: ignore[assignment]
pooled: str = pool.submit(add, 1, 2).result()  # type: ignore[assignment]
names: List[str] = list(pool.map(add, [1], [2]))  # type: ignore[arg-type]
task_id: str = context.task_id  # type: ignore[assignment]
cct.opt_out(add)  # type: ignore[type-var]
cct.TaskTimer('30', add)  # type: ignore[arg-type]
