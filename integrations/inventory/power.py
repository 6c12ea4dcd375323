"""The power-poll rules, as one function over a host row (no session, no I/O).

- A reading older than the one stored is stale and ignored: a slow poll must not overwrite
  the state a power action has just verified.
- A failed reading makes the state ``unknown`` and counts a consecutive failure; after
  ``threshold`` of them the host goes into maintenance, marked as set by the poll.
- A successful reading resets the count and takes the host out of maintenance only if the
  poll put it there: maintenance an operator set stays until the operator clears it.
"""

from __future__ import annotations

from datetime import datetime

from metalflow.integrations.inventory.models import POWER_STATES, Host, utcnow
from metalflow.integrations.inventory.records import InventoryError, PowerTransition

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
