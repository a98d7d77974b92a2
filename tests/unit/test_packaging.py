"""What a user meets at install and import time: the tested Celery range."""

from __future__ import absolute_import

import sys

import celery

from celery_ctxthread import _compat
from tests.helpers.tasks_inprocess import run_bounded

IMPORT_UNDER_CELERY = (
    'import warnings, celery\n'
    'celery.VERSION = celery.VERSION._replace(major=%d, minor=%d)\n'
    "celery.__version__ = '%d.%d.0'\n"
    "warnings.simplefilter('always')\n"
    'import celery_ctxthread\n'
)


def import_with_celery_version(major, minor):
    code = IMPORT_UNDER_CELERY % (major, minor, major, minor)
    return run_bounded([sys.executable, '-c', code], 60)


def test_a_newer_celery_than_the_tested_range_warns_once_at_import():
    status, output = import_with_celery_version(99, 1)
    assert status == 0, output
    assert output.count('RuntimeWarning') == 1, output
    assert 'tested with Celery 4.3 to 5.7' in output and 'Celery 99.1.0 is newer' in output


def test_the_tested_range_imports_silently():
    newest = _compat.TESTED_CELERY[1]
    status, output = import_with_celery_version(*newest)
    assert status == 0 and 'RuntimeWarning' not in output, output
    assert celery.VERSION[:2] <= newest, 'the grid runs a Celery newer than TESTED_CELERY'
