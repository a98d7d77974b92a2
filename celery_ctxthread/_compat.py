"""The few names that differ between Python 2.7 and 3.x, and the tested Celery range."""

import os
import sys
import warnings

import celery

try:  # Python 3.7+, or the backport on 3.6
    from contextvars import copy_context
except ImportError:  # Python 2.7: nothing to propagate (callers check for None)
    copy_context = None


def split_fn(args, name):
    """``(args[0], args[1:])`` for a ``name(fn, /, *args, **kwargs)`` call.

    The first argument is positional-only, as in the stdlib's ``Context.run``
    and ``Executor.submit``, so the target may take a keyword argument of any
    name (``fn`` too).  Python 2.7 has no syntax for it, hence ``*args``.
    """
    if not args:
        raise TypeError('%s() missing its first positional argument' % name)
    return args[0], args[1:]


def set_exception(future, exc, traceback):
    """``future.set_exception``, keeping the traceback on Python 2.7's ``futures``."""
    if hasattr(future, 'set_exception_info'):
        future.set_exception_info(exc, traceback)
    else:
        future.set_exception(exc)


#: The Celery releases the test grid runs: newer ones may move what we read.
TESTED_CELERY = ((4, 3), (5, 7))
NEWER_CELERY_WARNING = 'celery_ctxthread is tested with Celery'

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _internal(filename):
    """A frame of this package, of the import system, or of ``runpy`` (``python -m``)."""
    if 'importlib' in filename and '_bootstrap' in filename:
        return True  # warnings.warn skips these itself when it counts stacklevel
    if filename == '<frozen runpy>':  # Python 3.11+
        return True
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep) or os.path.basename(path) in (
        'runpy.py',
        'runpy.pyc',
    )


def importer_stacklevel():
    """The ``stacklevel`` that points a warning at the line importing this package.

    Counted from the caller of this function, over the frames that
    ``warnings.warn`` counts (it skips the import system's own), past every
    frame of this package: the user's ``import celery_ctxthread`` line, wherever
    in the package the import chain reached the warning.  1 (the caller) when
    there is no such line (``python -m celery_ctxthread``).
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _internal(filename):
            return level
        if not ('importlib' in filename and '_bootstrap' in filename):
            level += 1
        frame = frame.f_back
    return 1


if tuple(celery.VERSION[:2]) > TESTED_CELERY[1]:
    warnings.warn(
        NEWER_CELERY_WARNING + ' %d.%d to %d.%d and reads Celery internals '
        '(celery._state, LocalStack); Celery %s is newer: check that threads still see '
        'their task, and report what breaks'
        % (TESTED_CELERY[0] + TESTED_CELERY[1] + (celery.__version__,)),
        RuntimeWarning,
        stacklevel=importer_stacklevel(),
    )
