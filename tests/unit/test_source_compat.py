"""Every source file compiles on the interpreter running the tests.

The grid runs this on Python 2.7 too, so 3-only syntax anywhere in the
package, the tests or the doc examples fails there, including in modules that
are imported lazily (the demo) or never imported by a test.
"""

import io
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# bench/ is not here: it runs on the newest Python only.
FOLDERS = ('celery_ctxthread', 'tests', os.path.join('docs', 'examples'))
# tests/typing/ is a user's module that only mypy reads (tox envs types, types-user):
# never imported or run by a test, and its annotations are the point, so 3-only.
SKIPPED = (os.path.join(ROOT, 'tests', 'typing'),)


def source_files():
    for folder in FOLDERS:
        for directory, subdirs, names in os.walk(os.path.join(ROOT, folder)):
            subdirs[:] = [d for d in subdirs if os.path.join(directory, d) not in SKIPPED]
            for name in sorted(names):
                if name.endswith('.py'):
                    yield os.path.relpath(os.path.join(directory, name), ROOT)


@pytest.mark.parametrize('path', sorted(source_files()))
def test_source_compiles_here(path):
    with io.open(os.path.join(ROOT, path), 'rb') as handle:
        source = handle.read()
    compile(source, path, 'exec')
    # Python 2.7 rejects non-ASCII bytes in a file without a coding line.
    assert all(byte < 128 for byte in bytearray(source)), '%s has non-ASCII bytes' % path
