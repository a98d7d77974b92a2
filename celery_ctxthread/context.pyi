from collections.abc import Callable
from contextvars import Context
from typing import Any, Generic, TypeVar

from celery import Task
from celery.app.task import Context as Request
from typing_extensions import ParamSpec  # typing has it from 3.10 only: users may target 3.8

_P = ParamSpec('_P')
_R = TypeVar('_R')

JOB: str
EVERY_JOB: str

class TaskContext:
    # Private: a TaskContext comes from capture().
    def __init__(self, tasks: Any, contextvars: Context | None) -> None: ...
    @property
    def task(self) -> Task[Any, Any] | None: ...
    @property
    def request(self) -> Request | None: ...
    @property
    def task_id(self) -> str | None: ...
    def run(self, fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R: ...

class _ContextWrapped(Generic[_P, _R]):
    task_context: TaskContext
    __wrapped__: Callable[_P, _R]
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R: ...

def capture() -> TaskContext: ...
def wrap(fn: Callable[_P, _R]) -> _ContextWrapped[_P, _R]: ...
def refused(job: object) -> bool: ...
