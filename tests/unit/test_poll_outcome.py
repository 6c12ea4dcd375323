"""The helper both power-poll paths (one sweep, long-running) share after recording readings:
maintenance log lines and the journal of power changed behind metalflow's back. The journal
writer is passed in (the real one writes the inventory through Prefect's run context)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from metalflow.integrations.inventory.records import BulkPowerResult, PowerTransition
from metalflow.tasks.poll import apply_outcome

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
    changed = apply_outcome(outcome, logging.getLogger("test-poll"), journal=lambda *a: journal.append(a))
    assert [c.host for c in changed] == ["h1", "h2", "h3", "h6"]
    assert journal == [("h1", "power-changed", "ipmi", "ok", "on → off (seen by power-poll)")]
    assert "h3 put in maintenance" in caplog.text and "h2 answers again" in caplog.text
