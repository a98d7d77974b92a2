from celery import Celery

SETTING: str
ENVIRONMENT_VARIABLE: str

def wanted(app: Celery | None) -> bool: ...
