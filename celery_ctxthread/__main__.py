"""``python -m celery_ctxthread``: command-line entry point (``demo``)."""

from __future__ import absolute_import, print_function

import argparse
import sys


def build_parser():
    """The argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog='python -m celery_ctxthread',
        description="Propagate Celery's task context into the threads a task starts.",
    )
    commands = parser.add_subparsers(dest='command', metavar='COMMAND')
    demo = commands.add_parser(
        'demo',
        help='show update_state from threads failing, then working (no server needed)',
        description='Start a celery worker and run one task whose threads report progress '
        'with update_state: first with threading.Thread (the client sees '
        'nothing), then with cct.TaskThread and cct.TaskThreadPoolExecutor.',
    )
    from celery_ctxthread._demo._cli import add_arguments

    add_arguments(demo)
    return parser


def main(argv=None):
    """Parse ``argv`` and run the command; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != 'demo':  # Python 3 subparsers are optional: say what to run
        parser.print_help()
        return 2
    from celery_ctxthread._demo._cli import main as run_demo

    return run_demo(args)


if __name__ == '__main__':
    sys.exit(main())
