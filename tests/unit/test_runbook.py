"""How a ``Runbook`` ends a run: published outcome, refusals, rollback in reverse, an undo that
fails not stopping the others, the ``RolledBack`` message CloudStack shows. Steps run inline, so
no Prefect server is needed; the report is captured instead of published."""

import pytest

from metalflow.flows.runbook import Refused, RolledBack, Runbook, md_cell
from metalflow.tasks.common import runbook_task


@runbook_task(system="maas", name="change", journal=False, retries=0)
def change(what: str) -> str:
    if what == "boom":
        raise RuntimeError("MAAS said no")
    return f"did {what}"


@pytest.fixture
def published(monkeypatch):
    out = []
    monkeypatch.setattr("metalflow.flows.runbook.Report.publish", lambda self: out.append(self))
    return out


def runbook() -> Runbook:
    return Runbook("provision", "host-001", "web-01", inline=True)


def test_success_publishes_the_outcome_and_every_step(published):
    with runbook() as rb:
        rb.step("first", change, "a")
        rb.outcome = "all good"
    (report,) = published
    assert report.outcome == "all good"
    assert report.rows == [("maas", "first", "did a")]


def test_a_refusal_before_any_change_is_published_and_re_raised(published):
    with pytest.raises(Refused, match="not Ready"), runbook() as rb:
        rb.note("check", "MAAS status", "FAILED")
        raise Refused("MAAS status: not Ready")
    assert published[0].outcome == "refused, nothing changed: MAAS status: not Ready"


def test_a_failure_before_any_change_says_failed_and_keeps_its_exception(published):
    with pytest.raises(RuntimeError, match="MAAS said no"), runbook() as rb:
        rb.step("first", change, "boom")
    assert published[0].outcome == "failed: MAAS said no"
    assert published[0].rows == [("maas", "first", "FAILED: MAAS said no")]


def test_undos_run_newest_first_and_one_failing_does_not_stop_the_others(published):
    undone = []

    def undo(label, fail=False):
        undone.append(label)
        if fail:
            raise ConnectionError(f"{label} lost")
        return f"{label} undone"

    with pytest.raises(RolledBack) as ei, runbook() as rb:
        rb.undo("one", undo, "one")
        rb.step("first", change, "a")
        rb.undo("two", undo, "two", fail=True)
        rb.undo("two", undo, "two again")  # registered twice: keeps its first place
        rb.undo("three", change, "c")
        rb.step("second", change, "boom")
    assert undone == ["two", "one"]
    assert str(ei.value) == (
        "at step 'second': RuntimeError: MAAS said no | ROLLBACK INCOMPLETE: two failed (see the run's report and logs)"
    )
    assert isinstance(ei.value.__cause__, RuntimeError)
    rows = published[0].rows
    assert rows[-3:] == [
        ("rollback", "three", "did c"),
        ("rollback", "two FAILED", "two lost"),
        ("rollback", "one", "one undone"),
    ]
    assert published[0].outcome == f"failed: {ei.value}"


def test_after_begin_changes_a_failure_rolls_back_even_with_nothing_to_undo(published):
    with pytest.raises(
        RolledBack, match=r"^at step 'first': RuntimeError: MAAS said no \| rolled back \(0 steps undone\)$"
    ):
        with runbook() as rb:
            rb.begin_changes()
            rb.step("first", change, "boom")


def test_md_cell_escapes_pipes_and_newlines_and_keeps_empty_cells_empty():
    assert md_cell("a|b\nc") == "a\\|b c"
    assert md_cell(None) == "" and md_cell("") == ""
    assert md_cell("x" * 500, 300) == "x" * 300


@pytest.mark.parametrize("ending", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_run_rolls_back_and_ends_as_it_was_ending(published, ending):
    """Issue 18: not only exceptions. A run whose process is being stopped (a termination
    signal, Ctrl-C, a SystemExit from a dying log pipe) undoes its changes while it can."""
    undone = []
    with pytest.raises(ending), runbook() as rb:
        rb.undo("one", lambda: undone.append("one") or "one undone")
        rb.step("first", change, "a")
        raise ending()
    assert undone == ["one"]
    assert published[0].outcome.startswith(f"interrupted ({ending.__name__}): ")
    assert "rolled back (1 step undone)" in published[0].outcome
    assert published[0].rows[-1] == ("rollback", "one", "one undone")


def test_an_interruption_before_any_change_undoes_nothing(published):
    with pytest.raises(KeyboardInterrupt), runbook() as rb:
        rb.note("check", "MAAS status", "ok")
        raise KeyboardInterrupt
    assert published[0].outcome == "running" and published[0].rows == [("check", "MAAS status", "ok")]
