"""Kept for Python 2.7's pip and setuptools; the metadata lives in setup.cfg.

The version is read from the source text: setuptools 44 (the last for 2.7)
would import the package for ``attr:``, and that needs Celery installed first.
"""

import io
import os
import re

from setuptools import setup


def read_version():
    path = os.path.join(os.path.dirname(__file__), 'celery_ctxthread', '__init__.py')
    with io.open(path, encoding='utf-8') as handle:
        return re.search(r"^__version__ = '([^']+)'", handle.read(), re.M).group(1)


setup(version=read_version())
