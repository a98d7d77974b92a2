from celery import Celery

SETTING: str
ENVIRONMENT_VARIABLE: str

def install_requested(app: Celery | None) -> bool: ...
def connect() -> None: ...

SHUTDOWN_SIGNALS: tuple[str, ...]
