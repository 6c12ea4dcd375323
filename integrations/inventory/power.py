"""Power state and maintenance: the power-poll rules, as one function over a host row (no
session, no I/O), and ``PowerRepository``, which stores readings with them.

- A reading older than the one stored is stale and ignored: a slow poll must not overwrite
  the state a power action has just verified.
- A failed reading makes the state ``unknown`` and counts a consecutive failure; after
  ``threshold`` of them the host goes into maintenance, marked as set by the poll.
- A successful reading resets the count and takes the host out of maintenance only if the
  poll put it there: maintenance an operator set stays until the operator clears it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from metalflow.integrations.inventory.hosts import HostKey, host_row
from metalflow.integrations.inventory.importing import chunks
from metalflow.integrations.inventory.journal import clean_detail
from metalflow.integrations.inventory.models import POWER_STATES, Host, HostEvent, utcnow
from metalflow.integrations.inventory.records import (
    BulkPowerResult,
    HostInfo,
    InventoryError,
    PowerReading,
    PowerTransition,
)
from metalflow.integrations.inventory.session import Database

MAINTENANCE_AFTER = 3
_ERROR_LIMIT = 500


def check_reading(state: str, at: datetime | None, error: str | None, field: str = "") -> None:
    prefix = f"{field}." if field else ""
    if state not in POWER_STATES:
        raise InventoryError(f"{state!r} is not a power state (expected on, off or unknown)", field=f"{prefix}state")
    if error is not None and state != "unknown":
        raise InventoryError("a failed reading has state 'unknown'", field=f"{prefix}state")
    if at is not None and (not isinstance(at, datetime) or at.tzinfo is None):
        raise InventoryError("expected a timezone-aware datetime (UTC)", field=f"{prefix}at")


def apply_reading(
    host: Host,
    state: str,
    at: datetime | None,
    error: str | None,
    *,
    threshold: int = MAINTENANCE_AFTER,
) -> PowerTransition:
    """Apply one reading to ``host`` (mutating it) and say what happened."""
    previous = host.power_state
    if at is not None and host.power_state_at is not None and at < host.power_state_at:
        return PowerTransition(
            host.name, previous, previous, host.power_state_at, host.poll_failures, host.maintenance, stale=True
        )
    at = at or utcnow()
    entered = left = False
    if error is not None:
        host.power_state = "unknown"
        host.poll_failures += 1
        host.last_poll_error = error[:_ERROR_LIMIT]
        if host.poll_failures >= threshold and not host.maintenance:
            host.maintenance = True
            host.maintenance_source = "poll"
            host.maintenance_reason = (f"power poll failed {host.poll_failures} times in a row; last error: {error}")[
                :_ERROR_LIMIT
            ]
            entered = True
    else:
        host.power_state = state
        if host.poll_failures:
            host.poll_failures = 0
        if host.last_poll_error is not None:
            host.last_poll_error = None
        if state != "unknown" and host.maintenance and host.maintenance_source == "poll":
            host.maintenance = False
            host.maintenance_source = None
            host.maintenance_reason = None
            left = True
    host.power_state_at = at
    return PowerTransition(
        host.name, previous, host.power_state, at, host.poll_failures, host.maintenance, entered, left
    )


def _journal_transition(s: Session, row: Host, t: PowerTransition, run_id: str | None) -> None:
    """A journal line, in the reading's transaction, when the reading moved the host into or
    out of maintenance (an operator reads why a host left the pool)."""
    if t.entered_maintenance:
        detail = f"entered maintenance: {row.maintenance_reason}"
    elif t.left_maintenance:
        detail = f"left maintenance: power poll answered ({t.state})"
    else:
        return
    s.add(
        HostEvent(
            host_id=row.id,
            at=t.at or utcnow(),
            operation="power-poll",
            run_id=run_id,
            step="maintenance",
            system="inventory",
            outcome="ok",
            detail=clean_detail(detail),
        )
    )


class PowerRepository:
    """Power readings (one, or a poll of every host at once) and operator maintenance. A host
    goes into maintenance after ``maintenance_after`` failed readings in a row."""

    def __init__(self, db: Database, *, maintenance_after: int = MAINTENANCE_AFTER):
        self.db = db
        self.maintenance_after = maintenance_after

    def record(
        self,
        host: HostKey,
        state: str,
        at: datetime | None = None,
        error: str | None = None,
        *,
        run_id: str | None = None,
    ) -> PowerTransition:
        """Store one power reading (``at`` defaults to now; an older reading than the stored
        one is ignored). ``error`` marks a failed reading, whose state must be 'unknown'.
        See the module's docstring for the maintenance rules."""
        check_reading(state, at, error)
        error = clean_detail(error) if error is not None else None

        def write(s: Session) -> PowerTransition:
            row = host_row(s, host, lock=True)
            t = apply_reading(row, state, at, error, threshold=self.maintenance_after)
            _journal_transition(s, row, t, run_id)
            return t

        return self.db.write(write)

    def record_bulk(self, readings: Iterable[PowerReading], *, run_id: str | None = None) -> BulkPowerResult:
        """Store many readings in one transaction (a poll of every host). Readings of hosts
        that are not in the inventory (any more) are skipped and listed."""
        items = list(readings)
        for i, r in enumerate(items):
            if not isinstance(r, PowerReading):
                raise InventoryError(f"expected a PowerReading, got {type(r).__name__}", field=f"readings[{i}]")
            check_reading(r.state, r.at, r.error, field=f"readings[{i}]")
        cleaned = [(r.host, r.state, r.at, clean_detail(r.error) if r.error is not None else None) for r in items]
        names = sorted({str(r[0]) for r in cleaned})

        def write(s: Session) -> BulkPowerResult:
            rows: dict[str, Host] = {}
            for part in chunks(names):
                for row in s.scalars(select(Host).where(Host.name.in_(part)).with_for_update()):
                    rows[row.name] = row
            transitions: list[PowerTransition] = []
            unknown: list[str] = []
            for name, state, at, error in cleaned:
                found = rows.get(str(name))
                if found is None:
                    unknown.append(str(name))
                    continue
                t = apply_reading(found, state, at, error, threshold=self.maintenance_after)
                _journal_transition(s, found, t, run_id)
                transitions.append(t)
            return BulkPowerResult(tuple(transitions), tuple(unknown))

        return self.db.write(write)

    def set_maintenance(self, host: HostKey, on: bool, reason: str | None = None) -> HostInfo:
        """Operator maintenance: a later successful poll does not clear it."""
        if on and not reason:
            raise InventoryError("say why the host goes into maintenance", field="reason")

        def write(s: Session) -> HostInfo:
            row = host_row(s, host, lock=True)
            if on:
                row.maintenance, row.maintenance_source = True, "operator"
                row.maintenance_reason = clean_detail(reason or "")[:500]
            elif row.maintenance:
                row.maintenance, row.maintenance_source, row.maintenance_reason = False, None, None
            s.flush()
            return HostInfo.of(row)

        return self.db.write(write)
