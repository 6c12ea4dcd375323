"""The host locks runs hold, by lease id (issue 18).

A host lock is a lease on a Prefect global concurrency limit, renewed by the run holding it.
When the run's process dies the lease lives on until it expires (``host_lock_lease``, 300 s by
default), and Prefect has no call that lists a limit's leases: only the dead process knew the
id. So a run writes the id here when it takes the lock and removes it when it lets go; what is
left belongs to a run that died, and recovery releases it the moment the run is marked Crashed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from metalflow.integrations.inventory.models import RunLease
from metalflow.integrations.inventory.records import InventoryError, LeaseInfo
from metalflow.integrations.inventory.session import Database


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InventoryError(f"expected a non-empty string of at most {limit} characters", field=field)
    return value


class LeaseRepository:
    """Record, forget and list the leases runs hold."""

    def __init__(self, db: Database):
        self.db = db

    def held(self, run_id: str, limit_name: str, lease_id: str) -> None:
        """``run_id`` took ``lease_id`` on the limit ``limit_name``. Idempotent."""
        _text(run_id, "run_id", 64), _text(limit_name, "limit_name", 128), _text(lease_id, "lease_id", 64)

        def write(s: Session) -> None:
            if s.scalar(select(RunLease.id).where(RunLease.lease_id == lease_id)) is None:
                s.add(RunLease(run_id=run_id, limit_name=limit_name, lease_id=lease_id))

        self.db.write(write)

    def released(self, lease_id: str) -> None:
        """The lease was given back (or expired): its record goes."""
        _text(lease_id, "lease_id", 64)
        self.db.write(lambda s: s.execute(delete(RunLease).where(RunLease.lease_id == lease_id)))

    def of_runs(self, run_ids: list[str] | None = None) -> list[LeaseInfo]:
        """The leases recorded (for ``run_ids`` only when given), oldest first."""

        def read(s: Session) -> list[LeaseInfo]:
            stmt = select(RunLease).order_by(RunLease.taken_at, RunLease.id)
            if run_ids is not None:
                stmt = stmt.where(RunLease.run_id.in_(run_ids))
            return [LeaseInfo(r.run_id, r.limit_name, r.lease_id, r.taken_at) for r in s.scalars(stmt)]

        return self.db.read(read)
