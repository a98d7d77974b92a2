"""Kept for Python 2.7's pip and setuptools; the metadata lives in setup.cfg."""

from setuptools import setup

setup()
