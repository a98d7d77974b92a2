"""What one push/pop pair costs on Celery's default ``_LocalStack``.

    python bench/stack_pair.py

Its public ``push``/``pop`` raise and catch ``AttributeError`` on a thread that
has no entry yet, which is every thread a task starts: this times a pair there,
and a pair on a thread that has an entry, the minimum over 15 ``timeit`` runs
of 100,000 pairs each.  docs/how.rst quotes it.  Runs on Python 2.7 too.
"""

from __future__ import print_function

import sys
import timeit

import celery
from celery import _state

STACK = _state._task_stack
ITEM = object()
PAIRS = 100000


def pair():
    STACK.push(ITEM)
    STACK.pop()


def per_pair():
    return min(timeit.repeat(pair, number=PAIRS, repeat=15)) / PAIRS * 1e6


def main():
    if type(STACK).__name__ != '_LocalStack':
        print('not the default _LocalStack (USE_FAST_LOCALS is set?): %s' % type(STACK).__name__)
        return 1
    no_entry = per_pair()  # the pop of a one-item stack deletes the thread's entry
    STACK.push(ITEM)
    try:
        with_entry = per_pair()
    finally:
        STACK.pop()
    print(
        'Python %s, Celery %s: %.2f us a push/pop pair on a thread with no entry, '
        '%.2f us on one with an entry'
        % (sys.version.split()[0], celery.__version__, no_entry, with_entry)
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
