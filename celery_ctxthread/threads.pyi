import threading
from typing import TypeVar

_T = TypeVar('_T', bound=threading.Thread)

def opt_out(thread: _T) -> _T: ...

class TaskThread(threading.Thread):
    def start(self) -> None: ...

class TaskTimer(threading.Timer):
    def start(self) -> None: ...
