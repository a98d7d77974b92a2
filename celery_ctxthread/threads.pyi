import threading
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar('_T', bound=threading.Thread)

class _InsidePool(threading.local):
    active: bool

inside_pool: _InsidePool

def opt_out(thread: _T) -> _T: ...
def start_in_context(thread: threading.Thread, start: Callable[[], None]) -> None: ...

class _StartsInTaskContext:
    def start(self) -> None: ...

class TaskThread(_StartsInTaskContext, threading.Thread): ...
class TaskTimer(_StartsInTaskContext, threading.Timer): ...
