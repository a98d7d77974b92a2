import threading
import weakref
from typing import Any, Final

from celery.app.task import Context as Request

RETURNED: Final = 'returned'
FAILED: Final = 'failed'
SOFT_TIME_LIMIT: Final = 'soft_time_limit'
REVOKED: Final = 'revoked'
WORKER_SHUTDOWN: Final = 'worker_shutdown'
CANCELLED_BY_HAND: Final = 'cancelled_by_hand'
REASONS: tuple[str, ...]
FINAL_STORE_REASONS: dict[str, str]
JOIN_TIMEOUT_SETTING: Final = 'ctxthread_join_timeout'
WARN_STRAGGLERS_SETTING: Final = 'ctxthread_warn_stragglers'

class TaskOver(Exception):
    reason: str
    task_id: str | None
    def __init__(self, reason: str, task_id: str | None) -> None: ...

class _TaskLife:
    task_id: str | None
    over: bool
    reason: str | None
    event: threading.Event
    lock: threading.RLock
    joined: bool
    owner: weakref.ref[threading.Thread]
    ended: bool
    def __init__(self, task_id: str | None) -> None: ...
    def end(self, reason: str) -> bool: ...
    def running(self) -> list[str]: ...

def record_for(request: Request) -> _TaskLife: ...
def found_record(request: Request | None) -> _TaskLife | None: ...
def cancelled() -> bool: ...
def checkpoint() -> None: ...
def wait_cancelled(timeout: float | None = None) -> bool: ...
def cancel(task_id: str | None = None, reason: str = 'cancelled_by_hand') -> bool: ...
def end_all(reason: str) -> int: ...
def before_final_store(request: Request, reason: str, app: Any) -> None: ...
def at_postrun(request: Request, state: str | None, app: Any) -> None: ...
