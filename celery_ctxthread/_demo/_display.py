"""What ``python -m celery_ctxthread demo`` prints: live bars, then a summary table.

Everything drawn comes from what the client reads of a task, its
``AsyncResult.state`` and ``.info`` (:class:`RunView`).  On a terminal the bars
are redrawn in place, in colour; otherwise a few plain lines are printed.
"""

from __future__ import absolute_import, print_function

import sys
import time

from celery_ctxthread._demo._app import THREAD_CLASSES

READY_STATES = ('SUCCESS', 'FAILURE', 'REVOKED')
REFRESH = 0.1  # seconds between two polls / redraws


def one_line(exc):
    """``exc`` as ``Type: message`` on one line."""
    text = ' '.join(str(exc).split()) or repr(exc)
    return '%s: %s' % (type(exc).__name__, text)


class RunView(object):
    """What the client learned about one task, only from its state and info."""

    def __init__(self, number, kind, args):
        self.number = number
        self.kind = kind
        self.thread_class = THREAD_CLASSES[kind]
        self.names = ['t%d' % (i + 1) for i in range(args.threads)]
        self.total = args.steps
        self.state = 'PENDING'
        self.steps = dict.fromkeys(self.names, 0)
        self.updates = 0
        self.result = None

    def observe(self, state, info):
        """Take one poll; return True if something changed."""
        changed = False
        if state == 'PENDING' and self.state != 'PENDING':
            return False  # a --backend file:// reader may see a result file being rewritten
        if state != self.state:
            self.state, changed = state, True
        if state == 'PROGRESS' and isinstance(info, dict) and 'steps' in info:
            steps = {name: int(info['steps'].get(name, 0)) for name in self.names}
            if steps != self.steps or self.updates == 0:
                self.steps, self.updates, changed = steps, self.updates + 1, True
        if state in READY_STATES:
            self.result = info
        return changed

    def shown_steps(self):
        return sum(self.steps.values())

    def errors(self):
        if isinstance(self.result, dict):
            return list(self.result.get('errors') or [])
        if self.state == 'FAILURE':
            return [one_line(self.result)]
        return []

    def update_calls(self):
        """How many times the threads called update_state (None if unknown)."""
        if isinstance(self.result, dict):
            return self.result.get('update_calls')
        return None

    def seen_in_thread(self):
        if isinstance(self.result, dict):
            return self.result.get('seen_in_thread') or {}
        return {}

    def complete(self):
        return self.shown_steps() == self.total * len(self.names)


class LiveDisplay(object):
    """Bars redrawn in place on a terminal; a few plain lines otherwise."""

    PLAIN_INTERVAL = 0.5  # seconds between two plain progress lines

    def __init__(self, out, view):
        self.out = out
        self.view = view
        self.drawn = 0
        self.last_plain = 0.0
        self.pending_plain = False
        self.last_state = None
        self.last_updates = 0

    def changed(self):
        if self.out.fancy:
            return
        if self.view.state != self.last_state:
            self.last_state = self.view.state
            self.out.line('  state %s' % self.view.state)
        if self.view.updates != self.last_updates:
            self.last_updates, self.pending_plain = self.view.updates, True

    def tick(self):
        if self.out.fancy:
            self._redraw(self._status_line())
        elif self.pending_plain and time.time() - self.last_plain >= self.PLAIN_INTERVAL:
            self._plain_progress()

    def finish(self):
        if self.out.fancy:
            self._redraw(self._status_line())
        else:
            if self.pending_plain:
                self._plain_progress()
            for line in self._bar_lines():
                self.out.line(line)
        for line in self._outcome_lines():
            self.out.line(line)

    def _plain_progress(self):
        steps = '  '.join(
            '%s %d/%d' % (name, self.view.steps[name], self.view.total) for name in self.view.names
        )
        self.out.line('  progress  %s' % steps)
        self.last_plain, self.pending_plain = time.time(), False

    def _redraw(self, status):
        lines = self._bar_lines() + [status]
        self.out.redraw(lines, self.drawn)
        self.drawn = len(lines)

    def _status_line(self):
        state = self.out.colour('%-8s' % self.view.state, _state_colour(self.view.state))
        return '  state %s  updates seen by the client: %d' % (state, self.view.updates)

    def _bar_lines(self):
        width = 30
        lines = []
        for name in self.view.names:
            done = self.view.steps[name]
            filled = int(round(width * done / float(self.view.total)))
            bar = self.out.colour('#' * filled, 'green') + '.' * (width - filled)
            lines.append('  %-3s [%s] %2d/%d' % (name, bar, done, self.view.total))
        return lines

    def _outcome_lines(self):
        seen = self.view.seen_in_thread()
        lines = []
        if seen:
            lines.append(
                '  inside the threads: current_task=%s, self.request.id=%s'
                % (seen.get('current_task'), seen.get('request_id'))
            )
        errors = self.view.errors()
        for error in errors:
            lines.append('  ' + self.out.colour('error in the threads: ' + error, 'red'))
        if not errors and self.view.updates == 0:
            lines.append(
                '  ' + self.out.colour('no error raised: every update was dropped silently', 'red')
            )
        return lines


def _state_colour(state):
    return {'SUCCESS': 'green', 'PROGRESS': 'cyan', 'FAILURE': 'red'}.get(state, 'yellow')


class Output(object):
    """stdout, with colour and in-place redraw only on a terminal."""

    CODES = {'green': '32', 'red': '31', 'yellow': '33', 'cyan': '36', 'bold': '1'}

    def __init__(self, fancy):
        self.fancy = fancy
        if fancy:
            self._write('\x1b[?25l')  # hide the cursor while redrawing

    def line(self, text):
        self._write(text + '\n')

    def error(self, text):
        sys.stdout.flush()
        sys.stderr.write('error: %s\n' % text)
        sys.stderr.flush()

    def redraw(self, lines, previous):
        up = '\x1b[%dA' % previous if previous else ''
        self._write(up + ''.join('\r\x1b[K%s\n' % line for line in lines))

    def colour(self, text, name):
        if not self.fancy or not text:
            return text
        return '\x1b[%sm%s\x1b[0m' % (self.CODES[name], text)

    def bold(self, text):
        return self.colour(text, 'bold')

    def close(self):
        if self.fancy:
            self._write('\x1b[?25h')

    def _write(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()


def print_summary(out, runs, args):
    """Print the table; return 0 if every cct run filled every bar."""
    total = args.threads * args.steps
    rows = [('run', 'thread class', 'steps shown', 'updates seen', 'final state', 'error')]
    for view in runs:
        error = (
            view.errors()[0]
            if view.errors()
            else ('(dropped silently)' if view.updates == 0 else '-')
        )
        calls = view.update_calls()
        rows.append(
            (
                str(view.number),
                view.thread_class,
                '%d/%d' % (view.shown_steps(), total),
                '%d of %s' % (view.updates, '?' if calls is None else calls),
                view.state,
                _shorten(error, 60),
            )
        )
    out.line('')
    out.line(out.bold('Summary'))
    for row in _table(rows):
        out.line('  ' + row)
    out.line('')
    for line in _legend(args):
        out.line('  ' + line)
    fixed_ok = all(view.complete() for view in runs if view.kind != 'plain')
    out.line('')
    out.line(
        'threading.Thread: the client saw %d of %d steps; cct threads: %s.'
        % (
            runs[0].shown_steps(),
            total,
            'every step' if fixed_ok else 'NOT every step (unexpected)',
        )
    )
    return 0 if fixed_ok else 1


def _legend(args):
    return [
        "steps shown:  steps the client's bars show, of %d threads x %d steps"
        % (args.threads, args.steps),
        'updates seen: progress states the client read, of the update_state calls the threads',
        '              made: it polls every %.1f s and sees the latest state, not every update'
        % REFRESH,
        '              (each update carries every bar, so the bars still fill)',
    ]


def _table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        '  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]


def _shorten(text, width):
    return text if len(text) <= width else text[: width - 3] + '...'
