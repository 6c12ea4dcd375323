"""The per-host journal: one line per step of every run (started, then ok or failed), the
maintenance the power poll decided, and what an operator reads back (``events``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from metalflow.integrations.common import mask, scrub
from metalflow.integrations.inventory.hosts import HostKey, bad_host_key, host_key_ok, host_not_found, host_row
from metalflow.integrations.inventory.models import OUTCOMES, Host, HostEvent, utcnow
from metalflow.integrations.inventory.records import InventoryError, JournalLine
from metalflow.integrations.inventory.session import Database

_DETAIL_LIMIT = 1000


def clean_detail(detail: str | Mapping[str, Any]) -> str:
    """A journal detail that is short and carries no secret: dicts go through ``mask``, and
    the text through the process's scrubber (every loaded secret, ``password=...``-like pairs,
    ipmitool's ``-P x``, URL passwords, crypt hashes). Scrubbed before it is cut, so a cut
    never leaves half a secret that the scrubber would no longer recognise."""
    if isinstance(detail, Mapping):
        detail = ", ".join(f"{k}={v}" for k, v in mask(dict(detail)).items())
    text = scrub(str(detail))
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def journal_line(
    host: HostKey,
    operation: str,
    run_id: str | None,
    step: str,
    system: str,
    outcome: str,
    detail: str | Mapping[str, Any] = "",
    *,
    at: datetime | None = None,
) -> JournalLine:
    """Check a journal line's fields (``InventoryError`` naming the bad one), mask and cut its
    detail, and stamp it now unless ``at`` is given: the line's time is when it happened, not
    when a batch carrying it was committed. ``host`` (a name or CloudStack id) is kept as the
    key it was given, as text; the line written back names the host by its inventory name."""
    if not host_key_ok(host):
        raise bad_host_key(host)
    for field, value, limit in (("operation", operation, 64), ("step", step, 128), ("system", system, 32)):
        if not isinstance(value, str) or not value or len(value) > limit:
            raise InventoryError(f"expected a non-empty string of at most {limit} characters", field=field)
    if outcome not in OUTCOMES:
        raise InventoryError(f"{outcome!r} is not an outcome ({', '.join(OUTCOMES)})", field="outcome")
    if run_id is not None and (not isinstance(run_id, str) or len(run_id) > 64):
        raise InventoryError("expected a run id of at most 64 characters", field="run_id")
    if at is not None and at.tzinfo is None:
        raise InventoryError("expected a timezone-aware datetime (UTC)", field="at")
    return JournalLine(str(host), at or utcnow(), operation, run_id, step, system, outcome, clean_detail(detail))


class JournalRepository:
    """Appending journal lines and reading them back."""

    def __init__(self, db: Database):
        self.db = db

    def append(
        self,
        host: HostKey,
        operation: str,
        run_id: str | None,
        step: str,
        system: str,
        outcome: str,
        detail: str | Mapping[str, Any] = "",
        *,
        at: datetime | None = None,
    ) -> JournalLine:
        """Append one journal line. ``detail`` is masked (``mask`` for dicts, ``key=value``
        secrets in text) and cut to 1000 characters."""
        result = self.append_lines([journal_line(host, operation, run_id, step, system, outcome, detail, at=at)])[0]
        if isinstance(result, InventoryError):
            raise result
        return result

    def append_lines(self, lines: Sequence[JournalLine]) -> list[JournalLine | InventoryError]:
        """Append checked lines (``journal_line``) in one transaction: one host lookup and one
        insert for all of them. A line whose host is not in the inventory gets its
        ``HostNotFound`` in its place and the others are written; a database failure (after
        the usual retries) raises for all of them. The lines come back naming their host by
        its inventory name."""

        def write(s: Session) -> list[JournalLine | InventoryError]:
            keys = {line.host for line in lines}
            found: dict[str, Host] = {}
            if keys:
                rows = list(s.scalars(select(Host).where(or_(Host.name.in_(keys), Host.cloudstack_id.in_(keys)))))
                found = {row.cloudstack_id: row for row in rows if row.cloudstack_id}
                found.update({row.name: row for row in rows})  # a name wins over a CloudStack id
            out: list[JournalLine | InventoryError | None] = []
            added: list[tuple[int, HostEvent, str]] = []
            for i, line in enumerate(lines):
                row = found.get(line.host)
                if row is None:
                    out.append(host_not_found(line.host))
                    continue
                event = HostEvent(
                    host_id=row.id,
                    at=line.at,
                    operation=line.operation,
                    run_id=line.run_id,
                    step=line.step,
                    system=line.system,
                    outcome=line.outcome,
                    detail=line.detail,
                )
                s.add(event)
                added.append((i, event, row.name))
                out.append(None)  # filled in below, once the insert has run
            s.flush()
            for i, event, name in added:
                out[i] = JournalLine.of(event, name)
            return [line for line in out if line is not None]

        return self.db.write(write) if lines else []

    def events(
        self,
        host: HostKey,
        limit: int = 100,
        *,
        operation: str | None = None,
        run_id: str | None = None,
    ) -> list[JournalLine]:
        """The host's journal, newest first."""

        def read(s: Session) -> list[JournalLine]:
            row = host_row(s, host)
            stmt = select(HostEvent).where(HostEvent.host_id == row.id)
            if operation is not None:
                stmt = stmt.where(HostEvent.operation == operation)
            if run_id is not None:
                stmt = stmt.where(HostEvent.run_id == run_id)
            stmt = stmt.order_by(HostEvent.at.desc(), HostEvent.id.desc()).limit(limit)
            return [JournalLine.of(e, row.name) for e in s.scalars(stmt)]

        return self.db.read(read)

    def step_events(
        self, hosts: Sequence[str], step: str, *, outcome: str | None = None, since: datetime | None = None
    ) -> list[JournalLine]:
        """The journal lines of ``step`` (and ``outcome``) of several hosts, given by inventory
        name, at or after ``since``, in one query, oldest first (a bulk watching fifty hosts'
        milestones reads them all at once instead of one host at a time)."""
        if since is not None and since.tzinfo is None:
            raise InventoryError("expected a timezone-aware datetime (UTC)", field="since")
        names = list(dict.fromkeys(hosts))
        if not names:
            return []

        def read(s: Session) -> list[JournalLine]:
            stmt = (
                select(HostEvent, Host.name)
                .join(Host, HostEvent.host_id == Host.id)
                .where(Host.name.in_(names), HostEvent.step == step)
            )
            if outcome is not None:
                stmt = stmt.where(HostEvent.outcome == outcome)
            if since is not None:
                stmt = stmt.where(HostEvent.at >= since)
            return [JournalLine.of(e, name) for e, name in s.execute(stmt.order_by(HostEvent.at, HostEvent.id))]

        return self.db.read(read)
