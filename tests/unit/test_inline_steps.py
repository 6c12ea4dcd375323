"""Runbook steps run inline (``tasks.common.inline_steps``): the step's own function, with the
task's transient-only retries, and no Prefect task run. Outside the block, the step is the
Prefect task. No Prefect server is needed: inline calls never reach it, and the task path is
only inspected, not called."""

import pytest

from metalflow.tasks.common import Step, inline_steps, runbook_task


class Flaky(Exception):
    def __init__(self, transient: bool):
        super().__init__("transient" if transient else "permanent")
        self.transient = transient


def make(fails, retries=2):
    calls = []

    @runbook_task(system="test", name="probe", journal=False, retries=retries, backoff=0.01)
    def probe(x):
        calls.append(x)
        if fails:
            raise fails.pop(0)
        return x * 2

    return probe, calls


def test_a_runbook_task_is_a_step_around_its_prefect_task():
    probe, _ = make([])
    assert isinstance(probe, Step)
    assert probe.name == "probe" and probe.task.retries == 2  # the Prefect task's own attributes
    assert probe.fn(4) == 8  # .fn is the task's function


def test_inline_retries_transient_errors_then_returns():
    probe, calls = make([Flaky(True), Flaky(True)])
    with inline_steps():
        assert probe(5) == 10
    assert calls == [5, 5, 5]


def test_inline_gives_up_after_the_tasks_retries():
    probe, calls = make([Flaky(True)] * 5, retries=1)
    with inline_steps(), pytest.raises(Flaky):
        probe(1)
    assert len(calls) == 2  # the first try and one retry, as the task would


def test_inline_never_retries_a_permanent_error():
    probe, calls = make([Flaky(False)])
    with inline_steps(), pytest.raises(Flaky, match="permanent"):
        probe(1)
    assert calls == [1]


def test_with_options_keeps_the_step_and_its_new_retries():
    probe, calls = make([Flaky(True)] * 5, retries=3)
    once = probe.with_options(retries=0, retry_delay_seconds=0)
    assert isinstance(once, Step) and once.task.retries == 0
    with inline_steps(), pytest.raises(Flaky):
        once(1)
    assert calls == [1]


def test_the_block_ends_with_its_context():
    from metalflow.tasks.common import _INLINE

    with inline_steps():
        assert _INLINE.get()
    assert not _INLINE.get()
