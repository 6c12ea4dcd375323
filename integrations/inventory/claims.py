"""Placement claims: a host set aside for one CloudStack VM, so that two VMs placed at the
same moment never get the same host.

A claim is a lease until the VM is installed (issue 17). CloudStack sends no ``delete`` for a
VM whose first start failed (it has no host and no last host), so what ``prepare`` set aside
must free itself:

- ``leased``: made by ``prepare``; expires ``lease_seconds`` later unless a ``create`` begins;
- ``provisioning``: a ``create`` started (or re-attached to) the provision run; it expires
  too, but the reaper keeps it while that run lives;
- ``placed``: the provision completed (the host carries the VM): the VM's placement until
  ``delete`` releases it; it never expires.

``reap`` releases the expired ones whose run is not alive; the CloudStack extension calls it
at each ``prepare`` and the scheduled ``audit`` flow calls it too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from metalflow.integrations.inventory.hosts import HostKey, host_row
from metalflow.integrations.inventory.journal import clean_detail
from metalflow.integrations.inventory.models import CLAIM_STATES, Host, HostClaim, HostEvent, RunUndo, utcnow
from metalflow.integrations.inventory.records import (
    ClaimConflict,
    ClaimInfo,
    HostInfo,
    HostUnfit,
    InventoryError,
    NoFreeHost,
)
from metalflow.integrations.inventory.session import Database


def unfit(row: Host, min_cpus: int = 0, min_memory_mb: int = 0, arch: str | None = None) -> tuple[str, str] | None:
    """Why ``row`` cannot take a new VM, as ``(category, detail)``, or None. The category
    names no VM and quotes no operator note (it may reach a tenant); the detail may."""
    if row.maintenance:
        return "in maintenance", f"in maintenance: {row.maintenance_reason or 'no reason given'}"
    if row.maas_system_id is None:
        return "not registered in MAAS", "not registered in MAAS (run register-host)"
    if row.power_state not in ("on", "off"):
        return "power state unknown", "its power state is unknown (the power poll has no reading from its BMC)"
    if row.cpu_count < min_cpus or row.memory_mb < min_memory_mb:
        why = f"too small: {row.cpu_count} CPUs and {row.memory_mb} MB, the VM needs {min_cpus} and {min_memory_mb}"
        return "too small", why
    if arch and row.arch and row.arch.split("/", 1)[0] != arch.split("/", 1)[0]:
        return "another architecture", f"its architecture is {row.arch}, the VM needs {arch}"
    return None


def _lease_end(lease_seconds: float | None) -> datetime | None:
    if lease_seconds is None:
        return None
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not lease_seconds > 0:
        raise InventoryError(f"{lease_seconds!r} is not a positive number of seconds", field="lease_seconds")
    return utcnow() + timedelta(seconds=lease_seconds)


class ClaimRepository:
    """Claiming a host for a VM, releasing it, and finding a VM's host."""

    def __init__(self, db: Database):
        self.db = db

    @staticmethod
    def _check_vm(vm_uuid: Any, vm_name: Any = None) -> None:
        if not isinstance(vm_uuid, str) or not vm_uuid or len(vm_uuid) > 64:
            raise InventoryError("expected a VM uuid of 1 to 64 characters", field="vm_uuid")
        if vm_name is not None and (not isinstance(vm_name, str) or not vm_name or len(vm_name) > 255):
            raise InventoryError("expected a VM name of 1 to 255 characters", field="vm_name")

    def claim(
        self,
        vm_uuid: str,
        *,
        vm_name: str | None = None,
        host: HostKey | None = None,
        min_cpus: int = 0,
        min_memory_mb: int = 0,
        lease_seconds: float | None = None,
        fit: bool = False,
        arch: str | None = None,
    ) -> HostInfo:
        """Set a host aside for ``vm_uuid`` and return it; idempotent per VM (a VM that holds
        a claim gets the same host back, and a lease of it is renewed).

        The claim is a lease (``leased``) that expires ``lease_seconds`` from now (None:
        never). ``fit`` checks a named ``host`` the way a picked one is chosen (maintenance,
        MAAS, power state, size, ``arch``): ``HostUnfit`` says why not.

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
        expires = _lease_end(lease_seconds)

        def write(s: Session) -> HostInfo:
            mine = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid).with_for_update())
            if mine is not None:
                if host is not None and str(host) not in (mine.host.name, mine.host.cloudstack_id):
                    raise ClaimConflict(
                        f"VM {vm_uuid} already holds host {mine.host.name}; release that claim first",
                        field="host",
                    )
                if mine.state == "leased" and expires is not None:
                    mine.expires_at, mine.updated_at = expires, utcnow()
                return HostInfo.of(mine.host)
            if host is not None:
                row = host_row(s, host, lock=True)
                holder = s.scalar(select(HostClaim).where(HostClaim.host_id == row.id))
                if holder is not None:
                    raise ClaimConflict(f"host {row.name} is claimed by VM {holder.vm_uuid}", field="host")
                if row.last_vm_uuid not in (None, vm_uuid):
                    raise ClaimConflict(
                        f"host {row.name} carries VM {row.last_vm_name or row.last_vm_uuid}", field="host"
                    )
                problem = unfit(row, min_cpus, min_memory_mb, arch) if fit and row.last_vm_uuid is None else None
                if fit and problem is None and s.scalar(select(RunUndo.id).where(RunUndo.host_id == row.id).limit(1)):
                    problem = ("needs recovery", "a run left it half-done and its recovery has not finished")
                if problem is not None:
                    raise HostUnfit(f"host {row.name} cannot take a VM: {problem[1]}", why=problem[0], field="host")
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
                                Host.id.not_in(select(RunUndo.host_id)),  # half-done by a run that died
                                Host.last_vm_uuid.is_(None),
                                Host.maintenance.is_(False),
                                Host.power_state.in_(("on", "off")),
                                Host.maas_system_id.is_not(None),
                                Host.cpu_count >= min_cpus,
                                Host.memory_mb >= min_memory_mb,
                                *((Host.arch.like(arch.split("/", 1)[0] + "%"),) if arch else ()),
                            )
                            .order_by(Host.cpu_count, Host.memory_mb, Host.name)
                            .limit(20)
                        )
                    )
                )
            for row in candidates:
                try:
                    with s.begin_nested():
                        state = "placed" if row.last_vm_uuid == vm_uuid else "leased"
                        s.add(
                            HostClaim(
                                host_id=row.id,
                                vm_uuid=vm_uuid,
                                vm_name=vm_name,
                                state=state,
                                expires_at=expires if state == "leased" else None,
                                updated_at=utcnow(),
                            )
                        )
                except IntegrityError:
                    continue  # taken a moment ago by a concurrent claim: try the next one
                return HostInfo.of(row)
            if host is not None:
                raise ClaimConflict(f"host {host} was claimed by another VM a moment ago", field="host")
            raise NoFreeHost(self._why_no_host(s, min_cpus, min_memory_mb, arch), field="host")

        return self.db.write(write)

    @staticmethod
    def _why_no_host(s: Session, min_cpus: int, min_memory_mb: int, arch: str | None) -> str:
        claimed = set(s.scalars(select(HostClaim.host_id)))
        half_done = set(s.scalars(select(RunUndo.host_id)))
        counts: dict[str, int] = {"claimed": 0, "carrying a VM": 0}
        hosts = list(s.scalars(select(Host)))
        for h in hosts:
            if h.id in claimed:
                why = "claimed"
            elif h.last_vm_uuid is not None:
                why = "carrying a VM"
            elif h.id in half_done:
                why = "needs recovery"
            else:
                problem = unfit(h, min_cpus, min_memory_mb, arch)
                why = problem[0] if problem is not None else "taken a moment ago"
            counts[why] = counts.get(why, 0) + 1
        reasons = ", ".join(f"{n} {why}" for why, n in counts.items() if n) or "the inventory is empty"
        wanted = f"{min_cpus} CPUs and {min_memory_mb} MB of memory" + (f" ({arch})" if arch else "")
        return f"no free host fits {wanted} ({len(hosts)} hosts: {reasons})"

    def _move(self, vm_uuid: str, state: str, lease_seconds: float | None) -> ClaimInfo | None:
        self._check_vm(vm_uuid)
        assert state in CLAIM_STATES
        expires = _lease_end(lease_seconds) if state != "placed" else None

        def write(s: Session) -> ClaimInfo | None:
            row = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid).with_for_update())
            if row is None:
                return None
            if row.state != "placed" or state == "placed":
                row.state, row.expires_at, row.updated_at = state, expires, utcnow()
            s.flush()
            return ClaimInfo.of(row)

        return self.db.write(write)

    def begin(self, vm_uuid: str, *, lease_seconds: float) -> ClaimInfo | None:
        """A ``create`` started (or re-attached to) the VM's provision: the claim is kept while
        that run lives, and for ``lease_seconds`` after this call whatever happens. A placed
        claim stays placed. None when the VM holds no claim."""
        return self._move(vm_uuid, "provisioning", lease_seconds)

    def place(self, vm_uuid: str) -> ClaimInfo | None:
        """The VM is installed on its host: the claim is its placement (no expiry)."""
        return self._move(vm_uuid, "placed", None)

    def reap(
        self, is_live: Callable[[ClaimInfo], bool], *, now: datetime | None = None, run_id: str | None = None
    ) -> list[ClaimInfo]:
        """Release every expired lease (and provisioning claim) whose run ``is_live`` says is
        not alive and whose host does not carry the VM, with a journal line on the host.
        ``is_live`` is asked outside any transaction (it may be a call to Prefect's API); a
        claim renewed meanwhile (``begin``, a new ``prepare``) is kept."""
        now = now or utcnow()
        expired = [c for c in self.all() if c.expired(now)]
        released: list[ClaimInfo] = []
        for claim in expired:
            if is_live(claim):
                continue

            def write(s: Session, claim: ClaimInfo = claim) -> ClaimInfo | None:
                row = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == claim.vm_uuid).with_for_update())
                if row is None or (row.state, row.expires_at) != (claim.state, claim.expires_at):
                    return None  # released, renewed or placed meanwhile
                if row.host.last_vm_uuid == row.vm_uuid:
                    return None  # installed: set_last_vm places it; never freed by a lease
                info = ClaimInfo.of(row)
                age = (now - row.claimed_at).total_seconds()
                s.add(
                    HostEvent(
                        host_id=row.host_id,
                        at=now,
                        operation="claims",
                        run_id=run_id,
                        step="lease expired",
                        system="inventory",
                        outcome="ok",
                        detail=clean_detail(
                            f"released the {row.state} claim of VM {row.vm_uuid} ({row.vm_name or 'no name'}), "
                            f"made {age:.0f} s ago: no create finished it"
                        ),
                    )
                )
                s.delete(row)
                return info

            gone = self.db.write(write)
            if gone is not None:
                released.append(gone)
        return released

    def release(self, vm_uuid: str) -> ClaimInfo | None:
        """Give the VM's host back to the pool; None when the VM held no claim."""
        self._check_vm(vm_uuid)

        def write(s: Session) -> ClaimInfo | None:
            row = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid).with_for_update())
            if row is None:
                return None
            info = ClaimInfo.of(row)
            s.delete(row)
            return info

        return self.db.write(write)

    def for_vm(self, vm_uuid: str) -> ClaimInfo | None:
        """The VM's claim, or None."""
        self._check_vm(vm_uuid)

        def read(s: Session) -> ClaimInfo | None:
            claim = s.scalar(select(HostClaim).where(HostClaim.vm_uuid == vm_uuid))
            return ClaimInfo.of(claim) if claim is not None else None

        return self.db.read(read)

    def all(self) -> list[ClaimInfo]:
        return self.db.read(
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

        return self.db.read(read)
