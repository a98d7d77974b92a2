"""The unit tests of the stack flavour again, under ``USE_FAST_LOCALS``.

Celery reads ``USE_FAST_LOCALS`` when it is imported, so each re-run is a
fresh interpreter; slow for the inner loop, hence here.  The fastlocals cells
of the grid run everything under it as well.
"""

from __future__ import absolute_import

import os
import sys

import pytest

from tests.conftest import REPO_DIR
from tests.helpers.tasks_inprocess import run_bounded

UNIT_DIR = os.path.join(REPO_DIR, 'tests', 'unit')

pytestmark = pytest.mark.skipif(
    bool(os.environ.get('USE_FAST_LOCALS')), reason='already under USE_FAST_LOCALS'
)


def _rerun(names, timeout):
    files = [os.path.join(UNIT_DIR, name) for name in names]
    command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider'] + files
    env = dict(os.environ, USE_FAST_LOCALS='1')
    return run_bounded(command, timeout=timeout, cwd=REPO_DIR, env=env)


def test_the_same_tests_pass_with_use_fast_locals():
    returncode, output = _rerun(['test_context.py', 'test_entry_points.py'], 300)
    assert returncode == 0, output
    assert ' passed' in output


def test_the_property_holds_with_use_fast_locals():
    returncode, output = _rerun(['test_restore_property.py'], 120)
    assert returncode == 0, output
    assert ' passed' in output and 'xfailed' in output
