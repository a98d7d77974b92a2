import logging

logger: logging.Logger

def ensure_guard() -> None: ...
