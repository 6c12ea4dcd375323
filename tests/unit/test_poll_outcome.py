"""The helper both power-poll paths (one sweep, long-running) share after recording readings:
maintenance log lines and the journal of power changed behind metalflow's back. The journal
writer is passed in (the real one writes the inventory through Prefect's run context)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from metalflow.integrations.inventory.records import BulkPowerResult, PowerTransition
from metalflow.tasks.poll import apply_outcome, recover_when_answering
from tests.cloudstack.inventory_fixtures import make_inventory

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def t(host, previous, state, **kw) -> PowerTransition:
    return PowerTransition(host, previous, state, AT, kw.pop("failures", 0), kw.pop("maintenance", False), **kw)


def test_apply_outcome_logs_maintenance_and_journals_only_real_power_changes(caplog):
    outcome = BulkPowerResult(
        (
            t("h1", "on", "off"),  # pulled plug: journaled
            t("h2", "unknown", "on", left_maintenance=True),  # answers again: not a power change
            t("h3", "off", "unknown", failures=3, maintenance=True, entered_maintenance=True),
            t("h4", "off", "off"),  # unchanged
            t("h5", "off", "on", stale=True),  # older than the stored reading: ignored
            t("h6", "unknown", "off"),  # first reading
        )
    )
    journal = []
    caplog.set_level(logging.INFO)
    log = logging.getLogger("test-poll")
    changed = apply_outcome(outcome, log, journal=lambda *a: journal.append(a), recover=lambda *a: None)
    assert [c.host for c in changed] == ["h1", "h2", "h3", "h6"]
    assert journal == [("h1", "power-changed", "ipmi", "ok", "on → off (seen by power-poll)")]
    assert "h3 put in maintenance" in caplog.text and "h2 answers again" in caplog.text


def test_a_bmc_answering_again_starts_recover_for_a_host_with_a_rollback_left(tmp_path, monkeypatch, caplog):
    """Issue 18: a rollback that met a silent BMC is finished as soon as the poll reads that BMC
    again (not at the next sweep), for hosts with undo records only. A real SQLite inventory;
    the start of the recover deployment is passed in (no Prefect server here)."""
    inv = make_inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
    monkeypatch.setattr("metalflow.tasks.clients.inventory", lambda: inv)
    inv.undos.push("host-002", "run-dead", "provision", 0, "power off", "power-off", {})
    outcome = BulkPowerResult(
        (
            t("host-002", "unknown", "on"),  # answers again, rollback left: recover
            t("host-003", "unknown", "off"),  # answers again, nothing left: nothing
            t("host-001", "on", "unknown"),  # silent now: nothing
        )
    )
    started: list[str] = []
    caplog.set_level(logging.INFO)
    assert recover_when_answering(outcome, logging.getLogger("test-poll"), start=started.append) == ["host-002"]
    assert started == ["host-002"] and "host-002 answers again and has a rollback left" in caplog.text

    def refused(host: str) -> None:
        raise RuntimeError("no Prefect API")

    assert recover_when_answering(outcome, logging.getLogger("test-poll"), start=refused) == ["host-002"]
    assert "recover not started (no Prefect API): the next sweep retries" in caplog.text
    inv.dispose()
