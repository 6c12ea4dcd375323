"""The ``Inventory`` facade: the only way flows and tasks touch the database.

Every method runs in its own short transaction and returns frozen dataclasses. Writers use
``BEGIN IMMEDIATE`` on SQLite and ``SELECT ... FOR UPDATE`` on PostgreSQL, and host rows carry
a version column: an update based on a stale read fails instead of overwriting, and the
facade retries the whole read-modify-write. Two processes updating the same host therefore
never lose an update.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from metalflow.integrations.common import Backoff, Deadline, mask, retry
from metalflow.integrations.config import RackConfig
from metalflow.integrations.inventory import migrate
from metalflow.integrations.inventory.engine import WRITE_OPTION, default_url, make_engine
from metalflow.integrations.inventory.importing import (
    DEFAULT_SWITCH_CREDENTIAL_REF,
    CredentialRefSource,
    chunks,
    import_rack,
)
from metalflow.integrations.inventory.models import (
    OUTCOMES,
    VLAN_PURPOSES,
    Host,
    HostClaim,
    HostEvent,
    HostNic,
    PortVlan,
    Switch,
    utcnow,
)
from metalflow.integrations.inventory.power import MAINTENANCE_AFTER, apply_reading, check_reading
from metalflow.integrations.inventory.records import (
    BulkPowerResult,
    CabledPort,
    ClaimConflict,
    ClaimInfo,
    DesiredVlan,
    EventInfo,
    HostInfo,
    HostNotFound,
    HostRecord,
    ImportSummary,
    InventoryError,
    NoFreeHost,
    PowerReading,
    PowerTransition,
    SwitchInfo,
    VlanInfo,
)

T = TypeVar("T")
HostKey = str | int  # a host name, or its CloudStack id

_DETAIL_LIMIT = 1000
# "MaasSecret=x", "password: x", '"api_key": "x"' (a name ending in one of these words), and
# ipmitool's "-P x".
_SECRET_IN_TEXT = re.compile(
    r"(?i)\b([\w.-]*?(?:password|passwd|secret|token|api_?key|key))([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;]+)"
)
_IPMITOOL_PASSWORD = re.compile(r"(\s-P\s+)(\S+)")


def clean_detail(detail: str | Mapping[str, Any]) -> str:
    """A journal detail that is short and carries no secret: dicts go through ``mask``,
    ``password=...``-like pairs in text are masked."""
    if isinstance(detail, Mapping):
        detail = ", ".join(f"{k}={v}" for k, v in mask(dict(detail)).items())
    text = _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}***", str(detail))
    text = _IPMITOOL_PASSWORD.sub(lambda m: f"{m.group(1)}***", text)
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


@dataclass(frozen=True)
class JournalLine:
    """One journal line, checked and stamped (``journal_line``), ready to be written."""

    host: HostKey
    operation: str
    run_id: str | None
    step: str
    system: str
    outcome: str
    detail: str
    at: datetime


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
    when a batch carrying it was committed."""
    for field, value, limit in (("operation", operation, 64), ("step", step, 128), ("system", system, 32)):
        if not isinstance(value, str) or not value or len(value) > limit:
            raise InventoryError(f"expected a non-empty string of at most {limit} characters", field=field)
    if outcome not in OUTCOMES:
        raise InventoryError(f"{outcome!r} is not an outcome ({', '.join(OUTCOMES)})", field="outcome")
    if run_id is not None and (not isinstance(run_id, str) or len(run_id) > 64):
        raise InventoryError("expected a run id of at most 64 characters", field="run_id")
    if at is not None and at.tzinfo is None:
        raise InventoryError("expected a timezone-aware datetime (UTC)", field="at")
    return JournalLine(host, operation, run_id, step, system, outcome, clean_detail(detail), at or utcnow())


def _host_key_ok(key: Any) -> bool:
    return not isinstance(key, bool) and isinstance(key, (str, int)) and str(key) != ""


def _bad_host_key(key: Any) -> InventoryError:
    return InventoryError(f"{key!r} is not a host name or CloudStack id", field="host")


def _host_not_found(key: str) -> HostNotFound:
    return HostNotFound(f"no host {key!r} in the inventory (by name or CloudStack id); import it first", field="host")


def _transient(exc: BaseException) -> float | None:
    """Retry a lost race (stale version), a locked SQLite file, a PostgreSQL serialisation
    failure or deadlock, or a dropped connection; nothing else."""
    if isinstance(exc, StaleDataError):
        return 0.0
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return 0.0
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
        if "locked" in message or "busy" in message or code in ("40001", "40P01"):
            return 0.0
    return None


class Inventory:
    """Hosts, switches, cabling, desired VLANs, power state and the journal.

    ``url`` defaults to ``$METALFLOW_INVENTORY_URL`` or
    ``sqlite:///<$METALFLOW_HOME or ~/.metalflow>/inventory.db``. Call ``upgrade()`` once
    (it is cheap when the schema is current). One instance per process.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        maintenance_after: int = MAINTENANCE_AFTER,
        busy_timeout_ms: int = 30_000,
        write_deadline: float = 60.0,
        echo: bool = False,
    ):
        self.url = url or default_url()
        self.engine = make_engine(self.url, busy_timeout_ms=busy_timeout_ms, echo=echo)
        self.maintenance_after = maintenance_after
        self.write_deadline = write_deadline
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Inventory({self.engine.url.render_as_string(hide_password=True)!r})"

    # ------------------------------------------------------------------ plumbing

    def upgrade(self, revision: str = "head") -> None:
        migrate.upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, committed on success. ``write=True`` takes the write
        lock up front on SQLite (``BEGIN IMMEDIATE``)."""
        with self._sessions() as s:
            if write:
                s.connection(execution_options={WRITE_OPTION: True})
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def _write(self, fn: Callable[[Session], T]) -> T:
        def attempt() -> T:
            with self.session(write=True) as s:
                return fn(s)

        return retry(
            attempt,
            transient=_transient,
            deadline=Deadline(self.write_deadline),
            backoff=Backoff(first=0.01, factor=2.0, cap=0.5, attempts=12),
        )

    def _read(self, fn: Callable[[Session], T]) -> T:
        with self.session() as s:
            return fn(s)

    @staticmethod
    def _host(s: Session, key: HostKey, *, lock: bool = False) -> Host:
        if not _host_key_ok(key):
            raise _bad_host_key(key)
        k = str(key)
        stmt = select(Host).where(or_(Host.name == k, Host.cloudstack_id == k))
        if lock:
            stmt = stmt.with_for_update()
        found = list(s.scalars(stmt))
        if not found:
            raise _host_not_found(k)
        return next((h for h in found if h.name == k), found[0])

    @staticmethod
    def _switch(s: Session, name: str) -> Switch:
        row = s.scalar(select(Switch).where(Switch.name == name))
        if row is None:
            raise InventoryError(f"no switch {name!r} in the inventory", field="switch")
        return row

    # ------------------------------------------------------------------ import and lookup

    def import_rack_config(
        self,
        rack: RackConfig,
        hosts: Sequence[HostRecord],
        *,
        switch_credential_ref: CredentialRefSource = DEFAULT_SWITCH_CREDENTIAL_REF,
        switch_names: Mapping[str, str] | None = None,
        pxe_vlan: int | None = None,
    ) -> ImportSummary:
        """Add or update switches (matched by address; named ``tor-N`` in rack order unless
        ``switch_names`` maps an address to a name), hosts (matched by name) and NIC cabling.
        Idempotent: a second identical call reports ``changes == 0``."""
        return self._write(
            lambda s: import_rack(
                s, rack, hosts, credential_ref=switch_credential_ref, switch_names=switch_names, pxe_vlan=pxe_vlan
            )
        )

    def get_host(self, key: HostKey) -> HostInfo:
        """By name first, then CloudStack id. Raises HostNotFound."""
        return self._read(lambda s: HostInfo.of(self._host(s, key)))

    def find_host(self, key: HostKey) -> HostInfo | None:
        try:
            return self.get_host(key)
        except HostNotFound:
            return None

    def list_hosts(self, *, maintenance: bool | None = None) -> list[HostInfo]:
        def read(s: Session) -> list[HostInfo]:
            stmt = select(Host).options(selectinload(Host.nics).selectinload(HostNic.switch)).order_by(Host.name)
            if maintenance is not None:
                stmt = stmt.where(Host.maintenance.is_(maintenance))
            return [HostInfo.of(h) for h in s.scalars(stmt)]

        return self._read(read)

    def remove_host(self, key: HostKey) -> bool:
        """Forget a host (its NICs and journal go with it; desired VLANs stay, unowned). Only
        the inventory: the machine is never deleted from MAAS. False when it was not there."""

        def remove(s: Session) -> bool:
            try:
                row = self._host(s, key, lock=True)
            except HostNotFound:
                return False
            s.delete(row)
            return True

        return self._write(remove)

    def list_switches(self) -> list[SwitchInfo]:
        return self._read(lambda s: [SwitchInfo.of(w) for w in s.scalars(select(Switch).order_by(Switch.name))])

    def get_switch(self, name: str) -> SwitchInfo:
        return self._read(lambda s: SwitchInfo.of(self._switch(s, name)))

    def cabled_ports(self, host: HostKey) -> list[CabledPort]:
        """The ``(switch, port)`` pairs the host's NICs are cabled to, boot NIC first."""

        return self._read(lambda s: self._cabled(self._host(s, host)))

    @staticmethod
    def _cabled(row: Host) -> list[CabledPort]:
        nics = sorted((n for n in row.nics if n.switch is not None), key=lambda n: (not n.is_boot, n.mac))
        return [CabledPort(SwitchInfo.of(n.switch), n.port) for n in nics]

    # ------------------------------------------------------------------ desired VLANs

    def desired_vlans(self, host: HostKey) -> list[VlanInfo]:
        """VLANs the host's cabled ports should carry (and any still recorded for the host)."""

        return self._read(lambda s: self._desired(s, self._host(s, host)))

    @staticmethod
    def _desired(s: Session, row: Host) -> list[VlanInfo]:
        ports = [(n.switch_id, n.port) for n in row.nics if n.switch_id is not None]
        conds = [PortVlan.host_id == row.id] + [(PortVlan.switch_id == sw) & (PortVlan.port == p) for sw, p in ports]
        stmt = select(PortVlan).where(or_(*conds)).options(selectinload(PortVlan.switch), selectinload(PortVlan.host))
        rows = sorted(s.scalars(stmt), key=lambda v: (v.switch.name, v.port, v.vlan))
        return [VlanInfo.of(v) for v in rows]

    def switch_vlans(self, switch: str) -> list[VlanInfo]:
        """Every desired VLAN on one switch: what the audit compares the read-back with."""

        def read(s: Session) -> list[VlanInfo]:
            sw = self._switch(s, switch)
            stmt = (
                select(PortVlan)
                .where(PortVlan.switch_id == sw.id)
                .options(selectinload(PortVlan.switch), selectinload(PortVlan.host))
                .order_by(PortVlan.port, PortVlan.vlan)
            )
            return [VlanInfo.of(v) for v in s.scalars(stmt)]

        return self._read(read)

    @staticmethod
    def _ports(row: Host, ports: Sequence[tuple[str, str]] | None) -> list[HostNic]:
        cabled = [n for n in row.nics if n.switch is not None]
        if ports is None:
            if not cabled:
                raise InventoryError(f"host {row.name} has no NIC cabled to a switch in the rack config", field="ports")
            return cabled
        by_port = {(n.switch.name, n.port): n for n in cabled}
        out = []
        for i, p in enumerate(ports):
            key = tuple(p)
            if key not in by_port:
                raise InventoryError(
                    f"{key!r} is not a port host {row.name} is cabled to (cabled: {sorted(by_port)})",
                    field=f"ports[{i}]",
                )
            out.append(by_port[key])
        return out

    def set_desired_vlan(
        self,
        host: HostKey,
        vlan: int,
        *,
        purpose: str = "guest",
        tagged: bool | None = None,
        ports: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        """Record that ``vlan`` belongs on the host's cabled ports (all, or ``ports``).

        ``tagged`` defaults by purpose: the PXE and guest VLANs are untagged, extra networks
        tagged (as plug-nic does). A port carries one untagged VLAN: asking for a second is
        refused (clear the first). Returns the number of rows added or changed (0 on a rerun).
        """
        want = DesiredVlan(vlan, purpose, tagged, ports)  # checked as it is made

        def write(s: Session) -> int:
            return self._set_desired(s, self._host(s, host, lock=True), want)

        return self._write(write)

    def _set_desired(self, s: Session, row: Host, want: DesiredVlan) -> int:
        changed = 0
        vlan, is_tagged, purpose = want.vlan, want.is_tagged, want.purpose
        for nic in self._ports(row, want.ports):
            current = {
                v.vlan: v
                for v in s.scalars(
                    select(PortVlan).where(PortVlan.switch_id == nic.switch_id, PortVlan.port == nic.port)
                )
            }
            if not is_tagged:
                other = next((v for v in current.values() if not v.tagged and v.vlan != vlan), None)
                if other is not None:
                    raise InventoryError(
                        f"{nic.switch.name} {nic.port} already carries untagged VLAN {other.vlan} "
                        f"({other.purpose}); clear it before adding untagged VLAN {vlan}",
                        field="vlan",
                    )
            existing = current.get(vlan)
            if existing is None:
                s.add(
                    PortVlan(
                        switch_id=nic.switch_id,
                        port=nic.port,
                        vlan=vlan,
                        tagged=is_tagged,
                        purpose=purpose,
                        host_id=row.id,
                    )
                )
                changed += 1
            elif (existing.tagged, existing.purpose, existing.host_id) != (is_tagged, purpose, row.id):
                existing.tagged, existing.purpose, existing.host_id = is_tagged, purpose, row.id
                changed += 1
        return changed

    def replace_desired_vlans(
        self, host: HostKey, plan: Callable[[list[CabledPort]], Sequence[DesiredVlan]]
    ) -> tuple[list[CabledPort], list[VlanInfo]]:
        """In one transaction: forget every desired VLAN of the host (as ``clear_desired_vlan``
        with no filter), record the ones ``plan`` returns for its cabled ports, and read back.
        Returns the cabled ports (boot NIC first) and the desired VLANs now recorded. Nobody
        ever sees the host's ports with nothing desired half-way, and an error (a VLAN
        refused, the host gone) leaves what was recorded before untouched."""

        def write(s: Session) -> tuple[list[CabledPort], list[VlanInfo]]:
            row = self._host(s, host, lock=True)
            ports = self._cabled(row)
            wants = list(plan(ports))
            self._clear_desired(s, row)
            for want in wants:
                self._set_desired(s, row, want)
            s.flush()
            return ports, self._desired(s, row)

        return self._write(write)

    def clear_desired_vlan(
        self,
        host: HostKey,
        vlan: int | None = None,
        *,
        purpose: str | None = None,
        ports: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        """Forget desired VLANs on the host's cabled ports (all, or ``ports``), optionally
        only ``vlan`` or only one ``purpose``; rows recorded for the host on ports it is no
        longer cabled to go too when ``ports`` is None. Returns how many rows went."""
        if purpose is not None and purpose not in VLAN_PURPOSES:
            raise InventoryError(f"{purpose!r} is not a VLAN purpose (pxe, guest or extra)", field="purpose")

        def write(s: Session) -> int:
            return self._clear_desired(s, self._host(s, host, lock=True), vlan, purpose, ports)

        return self._write(write)

    def _clear_desired(
        self,
        s: Session,
        row: Host,
        vlan: int | None = None,
        purpose: str | None = None,
        ports: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        cabled = [n for n in row.nics if n.switch_id is not None]
        nics = self._ports(row, ports) if ports is not None else cabled
        conds = [(PortVlan.switch_id == n.switch_id) & (PortVlan.port == n.port) for n in nics]
        if ports is None:
            conds.append(PortVlan.host_id == row.id)
        if not conds:
            return 0
        stmt = delete(PortVlan).where(or_(*conds))
        if vlan is not None:
            stmt = stmt.where(PortVlan.vlan == vlan)
        if purpose is not None:
            stmt = stmt.where(PortVlan.purpose == purpose)
        return s.execute(stmt, execution_options={"synchronize_session": False}).rowcount or 0

    # ------------------------------------------------------------------ power and maintenance

    def record_power(
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
        See ``power`` for the maintenance rules."""
        check_reading(state, at, error)
        error = clean_detail(error) if error is not None else None

        def write(s: Session) -> PowerTransition:
            row = self._host(s, host, lock=True)
            t = apply_reading(row, state, at, error, threshold=self.maintenance_after)
            self._journal_transition(s, row, t, run_id)
            return t

        return self._write(write)

    def record_power_bulk(self, readings: Iterable[PowerReading], *, run_id: str | None = None) -> BulkPowerResult:
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
            transitions, unknown = [], []
            for name, state, at, error in cleaned:
                row = rows.get(str(name))
                if row is None:
                    unknown.append(str(name))
                    continue
                t = apply_reading(row, state, at, error, threshold=self.maintenance_after)
                self._journal_transition(s, row, t, run_id)
                transitions.append(t)
            return BulkPowerResult(tuple(transitions), tuple(unknown))

        return self._write(write)

    @staticmethod
    def _journal_transition(s: Session, row: Host, t: PowerTransition, run_id: str | None) -> None:
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

    def set_maintenance(self, host: HostKey, on: bool, reason: str | None = None) -> HostInfo:
        """Operator maintenance: a later successful poll does not clear it."""
        if on and not reason:
            raise InventoryError("say why the host goes into maintenance", field="reason")

        def write(s: Session) -> HostInfo:
            row = self._host(s, host, lock=True)
            if on:
                row.maintenance, row.maintenance_source = True, "operator"
                row.maintenance_reason = clean_detail(reason or "")[:500]
            elif row.maintenance:
                row.maintenance, row.maintenance_source, row.maintenance_reason = False, None, None
            s.flush()
            return HostInfo.of(row)

        return self._write(write)

    # ------------------------------------------------------------------ MAAS and VM bookkeeping

    def set_maas_system_id(self, host: HostKey, system_id: str | None) -> HostInfo:
        if system_id is not None and (not isinstance(system_id, str) or not re.fullmatch(r"[a-z0-9]{1,32}", system_id)):
            raise InventoryError(f"{system_id!r} is not a MAAS system_id (e.g. 4y3h7n)", field="system_id")

        def write(s: Session) -> HostInfo:
            row = self._host(s, host, lock=True)
            owner = (
                None
                if system_id is None
                else s.scalar(select(Host.name).where(Host.maas_system_id == system_id, Host.id != row.id))
            )
            if owner is not None:
                raise InventoryError(f"{system_id} already belongs to host {owner}", field="system_id")
            if row.maas_system_id != system_id:
                row.maas_system_id = system_id
                s.flush()
            return HostInfo.of(row)

        return self._write(write)

    def set_last_vm(self, host: HostKey, vm_uuid: str | None, vm_name: str | None) -> HostInfo:
        """The VM last provisioned on the host (case A of provisioning reads it back)."""
        for field, value, limit in (("vm_uuid", vm_uuid, 64), ("vm_name", vm_name, 255)):
            if value is not None and (not isinstance(value, str) or not value or len(value) > limit):
                raise InventoryError(f"expected a non-empty string of at most {limit} characters", field=field)

        def write(s: Session) -> HostInfo:
            row = self._host(s, host, lock=True)
            if (row.last_vm_uuid, row.last_vm_name) != (vm_uuid, vm_name):
                row.last_vm_uuid, row.last_vm_name = vm_uuid, vm_name
                s.flush()
            return HostInfo.of(row)

        return self._write(write)

    # ------------------------------------------------------------------ journal

    def journal(
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
    ) -> EventInfo:
        """Append one journal line. ``detail`` is masked (``mask`` for dicts, ``key=value``
        secrets in text) and cut to 1000 characters."""
        result = self.journal_lines([journal_line(host, operation, run_id, step, system, outcome, detail, at=at)])[0]
        if isinstance(result, InventoryError):
            raise result
        return result

    def journal_lines(self, lines: Sequence[JournalLine]) -> list[EventInfo | InventoryError]:
        """Append checked lines (``journal_line``) in one transaction: one host lookup and one
        insert for all of them. A line whose host is not in the inventory gets its
        ``HostNotFound`` in its place and the others are written; a database failure (after
        the usual retries) raises for all of them."""

        def write(s: Session) -> list[EventInfo | InventoryError]:
            keys = {str(line.host) for line in lines if _host_key_ok(line.host)}
            found: dict[str, Host] = {}
            if keys:
                rows = list(s.scalars(select(Host).where(or_(Host.name.in_(keys), Host.cloudstack_id.in_(keys)))))
                found = {row.cloudstack_id: row for row in rows if row.cloudstack_id}
                found.update({row.name: row for row in rows})  # a name wins over a CloudStack id
            out: list[EventInfo | InventoryError] = []
            added: list[tuple[int, HostEvent, str]] = []
            for i, line in enumerate(lines):
                if not _host_key_ok(line.host):
                    out.append(_bad_host_key(line.host))
                    continue
                row = found.get(str(line.host))
                if row is None:
                    out.append(_host_not_found(str(line.host)))
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
                out.append(None)  # type: ignore[arg-type] - filled in below
            s.flush()
            for i, event, name in added:
                out[i] = EventInfo.of(event, name)
            return out

        return self._write(write) if lines else []

    def events(
        self,
        host: HostKey,
        limit: int = 100,
        *,
        operation: str | None = None,
        run_id: str | None = None,
    ) -> list[EventInfo]:
        """The host's journal, newest first."""

        def read(s: Session) -> list[EventInfo]:
            row = self._host(s, host)
            stmt = select(HostEvent).where(HostEvent.host_id == row.id)
            if operation is not None:
                stmt = stmt.where(HostEvent.operation == operation)
            if run_id is not None:
                stmt = stmt.where(HostEvent.run_id == run_id)
            stmt = stmt.order_by(HostEvent.at.desc(), HostEvent.id.desc()).limit(limit)
            return [EventInfo.of(e, row.name) for e in s.scalars(stmt)]

        return self._read(read)

    def step_events(
        self, hosts: Sequence[str], step: str, *, outcome: str | None = None, since: datetime | None = None
    ) -> list[EventInfo]:
        """The journal lines of ``step`` (and ``outcome``) of several hosts, given by inventory
        name, at or after ``since``, in one query, oldest first (a bulk watching fifty hosts'
        milestones reads them all at once instead of one host at a time)."""
        if since is not None and since.tzinfo is None:
            raise InventoryError("expected a timezone-aware datetime (UTC)", field="since")
        names = list(dict.fromkeys(hosts))
        if not names:
            return []

        def read(s: Session) -> list[EventInfo]:
            stmt = (
                select(HostEvent, Host.name)
                .join(Host, HostEvent.host_id == Host.id)
                .where(Host.name.in_(names), HostEvent.step == step)
            )
            if outcome is not None:
                stmt = stmt.where(HostEvent.outcome == outcome)
            if since is not None:
                stmt = stmt.where(HostEvent.at >= since)
            return [EventInfo.of(e, name) for e, name in s.execute(stmt.order_by(HostEvent.at, HostEvent.id))]

        return self._read(read)

    # ------------------------------------------------------------------ placement claims

    @staticmethod
    def _check_vm(vm_uuid: Any, vm_name: Any = None) -> None:
        if not isinstance(vm_uuid, str) or not vm_uuid or len(vm_uuid) > 64:
            raise InventoryError("expected a VM uuid of 1 to 64 characters", field="vm_uuid")
        if vm_name is not None and (not isinstance(vm_name, str) or not vm_name or len(vm_name) > 255):
            raise InventoryError("expected a VM name of 1 to 255 characters", field="vm_name")

    def claim_host(
        self,
        vm_uuid: str,
        *,
        vm_name: str | None = None,
        host: HostKey | None = None,
        min_cpus: int = 0,
        min_memory_mb: int = 0,
    ) -> HostInfo:
        """Set a host aside for ``vm_uuid`` and return it; idempotent per VM (a VM that holds
        a claim gets the same host back).

        With ``host`` (the seed's model: one server per CloudStack host) that host is claimed,
        or ClaimConflict when another VM holds or carries it. Without, the smallest free host
        that fits is picked: registered in MAAS, no claim, no VM, not in maintenance, power
        state known, at least ``min_cpus`` and ``min_memory_mb``; NoFreeHost says why none
        was. Two concurrent claims never get the same host: the unique constraints of
        ``host_claims`` make the INSERT the arbiter (on SQLite the write lock already
        serialises them; on PostgreSQL the loser's INSERT fails and it tries the next host).
        """
        self._check_vm(vm_uuid, vm_name)
        for field, value in (("min_cpus", min_cpus), ("min_memory_mb", min_memory_mb)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InventoryError(f"{value!r} is not a non-negative integer", field=field)

        def write(s: Session) -> HostInfo:
            mine = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid))
            if mine is not None:
                if host is not None and str(host) not in (mine.host.name, mine.host.cloudstack_id):
                    raise ClaimConflict(
                        f"VM {vm_uuid} already holds host {mine.host.name}; release that claim first",
                        field="host",
                    )
                return HostInfo.of(mine.host)
            if host is not None:
                row = self._host(s, host, lock=True)
                holder = s.scalar(select(HostClaim).where(HostClaim.host_id == row.id))
                if holder is not None:
                    raise ClaimConflict(f"host {row.name} is claimed by VM {holder.vm_uuid}", field="host")
                if row.last_vm_uuid not in (None, vm_uuid):
                    raise ClaimConflict(
                        f"host {row.name} carries VM {row.last_vm_name or row.last_vm_uuid}", field="host"
                    )
                candidates = [row]
            else:
                carrying = s.scalar(select(Host).where(Host.last_vm_uuid == vm_uuid))
                candidates = (
                    [carrying]
                    if carrying is not None
                    else list(
                        s.scalars(
                            select(Host)
                            .where(
                                Host.id.not_in(select(HostClaim.host_id)),
                                Host.last_vm_uuid.is_(None),
                                Host.maintenance.is_(False),
                                Host.power_state.in_(("on", "off")),
                                Host.maas_system_id.is_not(None),
                                Host.cpu_count >= min_cpus,
                                Host.memory_mb >= min_memory_mb,
                            )
                            .order_by(Host.cpu_count, Host.memory_mb, Host.name)
                            .limit(20)
                        )
                    )
                )
            for row in candidates:
                try:
                    with s.begin_nested():
                        s.add(HostClaim(host_id=row.id, vm_uuid=vm_uuid, vm_name=vm_name))
                except IntegrityError:
                    continue  # taken a moment ago by a concurrent claim: try the next one
                return HostInfo.of(row)
            if host is not None:
                raise ClaimConflict(f"host {host} was claimed by another VM a moment ago", field="host")
            raise NoFreeHost(self._why_no_host(s, min_cpus, min_memory_mb), field="host")

        return self._write(write)

    @staticmethod
    def _why_no_host(s: Session, min_cpus: int, min_memory_mb: int) -> str:
        claimed = set(s.scalars(select(HostClaim.host_id)))
        counts = {
            "claimed": 0,
            "carrying a VM": 0,
            "in maintenance": 0,
            "power state unknown": 0,
            "not registered in MAAS": 0,
            "too small": 0,
        }
        hosts = list(s.scalars(select(Host)))
        for h in hosts:
            if h.id in claimed:
                counts["claimed"] += 1
            elif h.last_vm_uuid is not None:
                counts["carrying a VM"] += 1
            elif h.maintenance:
                counts["in maintenance"] += 1
            elif h.power_state not in ("on", "off"):
                counts["power state unknown"] += 1
            elif h.maas_system_id is None:
                counts["not registered in MAAS"] += 1
            else:
                counts["too small"] += 1
        reasons = ", ".join(f"{n} {why}" for why, n in counts.items() if n) or "the inventory is empty"
        return f"no free host fits {min_cpus} CPUs and {min_memory_mb} MB of memory ({len(hosts)} hosts: {reasons})"

    def release_claim(self, vm_uuid: str) -> ClaimInfo | None:
        """Give the VM's host back to the pool; None when the VM held no claim."""
        self._check_vm(vm_uuid)

        def write(s: Session) -> ClaimInfo | None:
            row = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid).with_for_update())
            if row is None:
                return None
            info = ClaimInfo.of(row)
            s.delete(row)
            return info

        return self._write(write)

    def claim_for(self, vm_uuid: str) -> ClaimInfo | None:
        """The VM's claim, or None."""
        self._check_vm(vm_uuid)

        def read(s: Session) -> ClaimInfo | None:
            claim = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid))
            return ClaimInfo.of(claim) if claim is not None else None

        return self._read(read)

    def list_claims(self) -> list[ClaimInfo]:
        return self._read(
            lambda s: [
                ClaimInfo.of(c)
                for c in s.scalars(
                    select(HostClaim).options(selectinload(HostClaim.host)).order_by(HostClaim.claimed_at)
                )
            ]
        )

    def host_for_vm(self, vm_uuid: str) -> HostInfo | None:
        """The host a VM is placed on: its claim, else the host that carries it."""
        self._check_vm(vm_uuid)

        def read(s: Session) -> HostInfo | None:
            claim = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid))
            if claim is not None:
                return HostInfo.of(claim.host)
            row = s.scalar(select(Host).where(Host.last_vm_uuid == vm_uuid).order_by(Host.name).limit(1))
            return HostInfo.of(row) if row is not None else None

        return self._read(read)
