import logging

from celery.app.task import Context as Request

logger: logging.Logger

def watch(request: Request | None) -> None: ...
def set_up() -> None: ...
