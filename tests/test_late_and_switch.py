"""The late-update guard and the worker-wide switch, in-process (real workers: integration)."""

from __future__ import absolute_import

import logging
import threading

import pytest
from celery import Celery
from celery.signals import task_success

import celery_ctxthread as cct
from celery_ctxthread import worker

app = Celery('cct_late', broker='memory://', backend='cache+memory://', set_as_current=False)
# apply() runs tasks in-process; task_always_eager stays off so that the
# backend can be read back (Celery 4 refuses to while it is on).
gates = {}


@app.task(bind=True, name='cct_late.outlived')
def outlived(self):
    """Starts a thread that updates once during the task and twice after it."""
    during, after, done = threading.Event(), threading.Event(), threading.Event()
    gates['after'], gates['done'] = after, done

    def straggler():
        self.update_state(state='PROGRESS', meta={'step': 1})
        during.set()
        after.wait(10)
        self.update_state(state='PROGRESS', meta={'step': 2})
        self.update_state(state='PROGRESS', meta={'step': 3})
        done.set()

    cct.TaskThread(target=straggler, name='straggler').start()
    assert during.wait(10)
    return self.request.id


def test_an_update_after_the_task_ended_is_ignored_with_one_warning(caplog):
    caplog.set_level(logging.WARNING, logger='celery_ctxthread.late')
    task_id = outlived.apply().get()
    gates['after'].set()
    assert gates['done'].wait(10)
    assert app.backend.get_task_meta(task_id)['result'] == {'step': 1}
    warnings = [r.getMessage() for r in caplog.records if r.name == 'celery_ctxthread.late']
    assert len(warnings) == 1
    assert task_id in warnings[0] and "'straggler'" in warnings[0]


def test_an_update_between_the_final_store_and_postrun_is_ignored_too():
    """The tracer stores the final state, then sends task_success, then task_postrun.

    A client can see the final state before task_postrun, so the straggler
    here updates in that window, held there by a task_success receiver.
    """

    def in_the_window(sender=None, **kwargs):
        if getattr(sender, 'name', None) == 'cct_late.outlived':
            gates['after'].set()
            assert gates['done'].wait(10)

    task_success.connect(in_the_window, weak=False)
    try:
        task_id = outlived.apply().get()
    finally:
        task_success.disconnect(in_the_window)
    assert gates['done'].is_set()
    assert app.backend.get_task_meta(task_id)['result'] == {'step': 1}


def test_an_explicit_other_task_id_still_goes_through():
    task_id = outlived.apply().get()
    outlived.update_state(task_id='someone-else', state='PROGRESS', meta={'x': 1})
    gates['after'].set()
    assert gates['done'].wait(10)
    assert app.backend.get_task_meta('someone-else')['result'] == {'x': 1}
    assert app.backend.get_task_meta(task_id)['result'] == {'step': 1}


@pytest.mark.parametrize(
    'environment, setting, expected',
    [
        (None, None, False),
        (None, True, True),
        ('1', None, True),
        ('yes', False, True),
        ('0', True, False),
        ('off', True, False),
    ],
)
def test_switch_reads_the_environment_first_then_the_setting(
    monkeypatch, environment, setting, expected
):
    if environment is None:
        monkeypatch.delenv(worker.ENVIRONMENT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(worker.ENVIRONMENT_VARIABLE, environment)
    configured = Celery('cct_switch', set_as_current=False)
    if setting is not None:
        configured.conf[worker.SETTING] = setting
    assert worker.wanted(configured) is expected


def test_switch_rejects_a_value_it_cannot_read(monkeypatch):
    monkeypatch.setenv(worker.ENVIRONMENT_VARIABLE, 'maybe')
    with pytest.raises(ValueError, match='CELERY_CTXTHREAD_INSTALL'):
        worker.wanted(None)
