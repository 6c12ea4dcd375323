"""Placement claims: a host set aside for one CloudStack VM, so that two VMs placed at the
same moment never get the same host."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from metalflow.integrations.inventory.hosts import HostKey, host_row
from metalflow.integrations.inventory.models import Host, HostClaim
from metalflow.integrations.inventory.records import ClaimConflict, ClaimInfo, HostInfo, InventoryError, NoFreeHost
from metalflow.integrations.inventory.session import Database


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
                row = host_row(s, host, lock=True)
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

        return self.db.write(write)

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
