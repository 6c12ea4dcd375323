"""A run's undo stack, persisted (issue 18).

A run registers the undo of each change before it makes the change; in memory that was enough
while the run's process lived to undo it. A worker killed with its runs took those stacks with
it and left hosts deployed with no VM. So each undo is also written here, as an action name and
JSON parameters (``flows.undo`` knows the actions), and removed when the run completed or its
rollback finished. What is left belongs to a run that died (or whose rollback failed): a
recovery run reads it and finishes the rollback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, selectinload

from metalflow.integrations.inventory.hosts import HostKey, host_row
from metalflow.integrations.inventory.journal import clean_detail
from metalflow.integrations.inventory.models import RunUndo
from metalflow.integrations.inventory.records import InventoryError, UndoInfo
from metalflow.integrations.inventory.session import Database


def _check(run_id: Any, field: str = "run_id") -> str:
    if not isinstance(run_id, str) or not run_id or len(run_id) > 64:
        raise InventoryError("expected a run id of 1 to 64 characters", field=field)
    return run_id


class UndoRepository:
    """Push, mark and clear a run's undos; list what is left."""

    def __init__(self, db: Database):
        self.db = db

    def push(
        self,
        host: HostKey,
        run_id: str,
        operation: str,
        seq: int,
        label: str,
        action: str,
        params: Mapping[str, Any],
    ) -> UndoInfo:
        """Write one undo before its change. Idempotent per ``(run_id, seq)``: a retried step
        that registers its undo again keeps the first."""
        _check(run_id)
        for field, value, limit in (("operation", operation, 64), ("label", label, 128), ("action", action, 64)):
            if not isinstance(value, str) or not value or len(value) > limit:
                raise InventoryError(f"expected a non-empty string of at most {limit} characters", field=field)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise InventoryError("expected a non-negative sequence number", field="seq")
        text = json.dumps(dict(params), sort_keys=True, default=str)
        if len(text) > 4000:
            raise InventoryError(f"{len(text)} characters of parameters: at most 4000", field="params")

        def write(s: Session) -> UndoInfo:
            row = s.scalar(select(RunUndo).where(RunUndo.run_id == run_id, RunUndo.seq == seq))
            if row is None:
                row = RunUndo(
                    host_id=host_row(s, host).id,
                    run_id=run_id,
                    operation=operation,
                    seq=seq,
                    label=label,
                    action=action,
                    params=text,
                    state="pending",
                )
                s.add(row)
                s.flush()
            return UndoInfo.of(row)

        return self.db.write(write)

    def done(self, run_id: str, seq: int) -> None:
        """The undo ran: it goes."""
        _check(run_id)
        self.db.write(lambda s: s.execute(delete(RunUndo).where(RunUndo.run_id == run_id, RunUndo.seq == seq)))

    def failed(self, run_id: str, seq: int, detail: str) -> None:
        """The undo was tried and did not finish: kept, marked, with why."""
        _check(run_id)

        def write(s: Session) -> None:
            row = s.scalar(select(RunUndo).where(RunUndo.run_id == run_id, RunUndo.seq == seq).with_for_update())
            if row is not None:
                row.state, row.detail = "failed", clean_detail(detail)[:500]

        self.db.write(write)

    def clear(self, run_id: str) -> int:
        """The run completed (nothing to undo) or its rollback finished: its rows go."""
        _check(run_id)

        def write(s: Session) -> int:
            gone = len(list(s.scalars(select(RunUndo.id).where(RunUndo.run_id == run_id))))
            s.execute(delete(RunUndo).where(RunUndo.run_id == run_id))
            return gone

        return self.db.write(write)

    def left(self, host: HostKey | None = None) -> list[UndoInfo]:
        """Every undo still here (of one host), oldest first; the newest of a run is undone first."""

        def read(s: Session) -> list[UndoInfo]:
            stmt = select(RunUndo).options(selectinload(RunUndo.host)).order_by(RunUndo.run_id, RunUndo.seq)
            if host is not None:
                stmt = stmt.where(RunUndo.host_id == host_row(s, host).id)
            return [UndoInfo.of(u) for u in s.scalars(stmt)]

        return self.db.read(read)
