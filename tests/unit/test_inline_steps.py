"""Runbook steps run inline (``Runbook(inline=True)``, or any Runbook inside
``flows.runbook.inline_steps()``): the step's own function, with the task's transient-only
retries, and no Prefect task run. Otherwise, the step is the Prefect task. No Prefect server is
needed: inline calls never reach it, and the task path is only inspected, not called."""

import pytest
from prefect import Task

from metalflow.flows.runbook import Runbook, inline_steps
from metalflow.tasks.common import runbook_task, system_of


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


def inline() -> Runbook:
    return Runbook("test", "host-000", inline=True)


def test_a_runbook_task_is_a_plain_prefect_task_that_knows_its_system():
    probe, _ = make([])
    assert isinstance(probe, Task)
    assert probe.name == "probe" and probe.retries == 2  # the Prefect task's own attributes
    assert probe.fn(4) == 8  # .fn is the task's function
    assert system_of(probe) == "test"
    assert system_of(probe.with_options(retries=0)) == "test"


def test_inline_retries_transient_errors_then_returns():
    probe, calls = make([Flaky(True), Flaky(True)])
    assert inline().run(probe, 5) == 10
    assert calls == [5, 5, 5]


def test_inline_gives_up_after_the_tasks_retries():
    probe, calls = make([Flaky(True)] * 5, retries=1)
    with pytest.raises(Flaky):
        inline().run(probe, 1)
    assert len(calls) == 2  # the first try and one retry, as the task would


def test_inline_never_retries_a_permanent_error():
    probe, calls = make([Flaky(False)])
    with pytest.raises(Flaky, match="permanent"):
        inline().run(probe, 1)
    assert calls == [1]


def test_with_options_keeps_its_new_retries_inline():
    probe, calls = make([Flaky(True)] * 5, retries=3)
    once = probe.with_options(retries=0, retry_delay_seconds=0)
    assert isinstance(once, Task) and once.retries == 0
    with pytest.raises(Flaky):
        inline().run(once, 1)
    assert calls == [1]


def test_an_inline_step_has_its_report_row_under_the_tasks_system():
    probe, _ = make([Flaky(True)])
    rb = inline()
    assert rb.step("double 3", probe, 3) == 6
    assert rb.report.rows == [("test", "double 3", "6")]


def test_the_block_makes_runbooks_inline_and_ends_with_its_context():
    with inline_steps():
        assert Runbook("test", "host-000").inline
        assert not Runbook("test", "host-000", inline=False).inline  # an explicit choice wins
    assert not Runbook("test", "host-000").inline
