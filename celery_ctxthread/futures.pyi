import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from typing_extensions import ParamSpec  # typing has it from 3.10 only: users may target 3.8

_P = ParamSpec('_P')
_R = TypeVar('_R')

class TaskThreadPoolExecutor(ThreadPoolExecutor):
    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = '',
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        jobs_outlive_task: bool = False,
    ) -> None: ...
    if sys.version_info >= (3, 9):  # as the stdlib's: fn is positional-only from 3.9
        def submit(
            self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs
        ) -> Future[_R]: ...
    else:
        def submit(
            self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
        ) -> Future[_R]: ...

    def map(  # the stdlib's keywords differ by version: passed through as they are
        self, fn: Callable[..., _R], *iterables: Iterable[Any], **kwargs: Any
    ) -> Iterator[_R]: ...

def submit(fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_R]: ...
