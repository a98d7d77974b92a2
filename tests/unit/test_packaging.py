"""What a user meets at install and import time: the tested Celery range."""

from __future__ import absolute_import

import io
import os
import re
import sys

import celery
import pytest

from celery_ctxthread import _compat
from tests.conftest import REPO_DIR
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
    # Attributed to the line that imports the package (line 5 of the -c code), not to
    # whichever of its modules happened to import the check.
    line = next(line for line in output.splitlines() if 'RuntimeWarning' in line)
    assert line.startswith(('<string>:5: RuntimeWarning', '-c:5: RuntimeWarning')), output


USER_MODULE = '''"""A user's module."""

import os  # noqa

%s  # line 5
'''


@pytest.mark.parametrize(
    'statement',
    [
        'import celery_ctxthread as cct',
        'from celery_ctxthread import TaskThread',
        'import celery_ctxthread.worker',
    ],
)
def test_the_newer_celery_warning_points_at_the_users_import(tmpdir, statement):
    tmpdir.join('proj_tasks.py').write(USER_MODULE % statement)
    code = IMPORT_UNDER_CELERY.replace('import celery_ctxthread\n', 'import proj_tasks\n') % (
        99,
        1,
        99,
        1,
    )
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(tmpdir)] + [p for p in [env.get('PYTHONPATH')] if p])
    status, output = run_bounded([sys.executable, '-c', code], 60, env=env)
    assert status == 0, output
    assert output.count('RuntimeWarning') == 1, output
    where = output.split(': RuntimeWarning')[0]
    assert os.path.basename(where) == 'proj_tasks.py:5', output


def test_the_tested_range_imports_silently():
    newest = _compat.TESTED_CELERY[1]
    status, output = import_with_celery_version(*newest)
    assert status == 0 and 'RuntimeWarning' not in output, output
    assert celery.VERSION[:2] <= newest, 'the grid runs a Celery newer than TESTED_CELERY'


# ------------------------------------- what the grid runs is what is claimed

ROOT = REPO_DIR


def _read(name):
    with io.open(os.path.join(ROOT, name), encoding='utf-8') as handle:
        return handle.read()


def _expand(pattern):
    """tox's brace expansion: 'py3{10,11}-celery570{,-gevent}' -> its four names."""
    match = re.search(r'\{([^{}]*)\}', pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for alt in match.group(1).split(',') for name in _expand(head + alt + tail)]


def grid_cells():
    envlist = re.search(r'^envlist\s*=\s*\n((?:[ \t]+.*\n)+)', _read('tox.ini'), re.M).group(1)
    lines = [line.split('#')[0].strip() for line in envlist.splitlines()]
    return [name for line in lines if line for name in _expand(line)]


def grid_pythons():
    return {'%s.%s' % re.match(r'py(\d)(\d+)-', cell).groups() for cell in grid_cells()}


def test_the_classifiers_name_exactly_the_grids_pythons():
    classifiers = re.findall(
        r'Programming Language :: Python :: (\d\.\d+)\s*$', _read('setup.cfg'), re.M
    )
    assert sorted(classifiers) == sorted(grid_pythons())


def test_the_readme_and_python_requires_claim_the_grids_pythons():
    minors = sorted(int(v.split('.')[1]) for v in grid_pythons() if v.startswith('3.'))
    assert minors == list(range(minors[0], minors[-1] + 1)), 'a gap in the 3.x range'
    claim = re.search(r'CPython 2\.7 and 3\.(\d+)(.)3\.(\d+)', _read('README.md'))
    assert claim and claim.group(2) == b'\xe2\x80\x93'.decode('utf-8'), 'an en dash'
    assert (int(claim.group(1)), int(claim.group(3))) == (minors[0], minors[-1])
    requires = re.search(r'^python_requires = (.*)$', _read('setup.cfg'), re.M).group(1)
    excluded = ['!=3.%d.*' % minor for minor in range(minors[0])]
    assert requires == ', '.join(['>=2.7'] + excluded)


def test_the_readme_grid_table_lists_every_cell():
    table = _read('README.md').split('<!-- grid:start -->')[1].split('<!-- grid:end -->')[0]
    rows = re.findall(r'^\| (py\S+) \|', table, re.M)
    assert sorted(rows) == sorted(grid_cells())


def test_the_sdist_ships_the_scripts_make_and_tox_run():
    manifest = _read('MANIFEST.in').splitlines()
    assert 'graft .ci' in manifest
    used = set(re.findall(r'\.ci/[\w-]+', _read('Makefile') + _read('tox.ini') + _read('.ci/run')))
    assert used and all(os.path.isfile(os.path.join(ROOT, path)) for path in used), used
