"""Switches, the ports each host's NICs are cabled to, and the VLANs each port should carry
(the desired state that rollback and audit compare with the switches)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import ColumnElement, delete, or_, select
from sqlalchemy.orm import Session, selectinload

from metalflow.integrations.inventory.hosts import HostKey, host_row
from metalflow.integrations.inventory.models import VLAN_PURPOSES, Host, HostNic, PortVlan, Switch, SwitchVlanDef
from metalflow.integrations.inventory.records import CabledPort, DesiredVlan, InventoryError, SwitchInfo, VlanInfo
from metalflow.integrations.inventory.session import Database


def switch_row(s: Session, name: str) -> Switch:
    row = s.scalar(select(Switch).where(Switch.name == name))
    if row is None:
        raise InventoryError(f"no switch {name!r} in the inventory", field="switch")
    return row


def _cabled(row: Host) -> list[CabledPort]:
    out = []
    for n in sorted((n for n in row.nics if n.switch is not None), key=lambda n: (not n.is_boot, n.mac)):
        assert n.switch is not None and n.port is not None  # the "cabled" check: both or neither
        out.append(CabledPort(SwitchInfo.of(n.switch), n.port))
    return out


def _desired(s: Session, row: Host) -> list[VlanInfo]:
    ports = [(n.switch_id, n.port) for n in row.nics if n.switch_id is not None]
    conds = [PortVlan.host_id == row.id] + [(PortVlan.switch_id == sw) & (PortVlan.port == p) for sw, p in ports]
    stmt = select(PortVlan).where(or_(*conds)).options(selectinload(PortVlan.switch), selectinload(PortVlan.host))
    rows = sorted(s.scalars(stmt), key=lambda v: (v.switch.name, v.port, v.vlan))
    return [VlanInfo.of(v) for v in rows]


def _ports(row: Host, ports: Sequence[tuple[str, str]] | None) -> list[HostNic]:
    cabled = [n for n in row.nics if n.switch is not None]
    if ports is None:
        if not cabled:
            raise InventoryError(f"host {row.name} has no NIC cabled to a switch in the rack config", field="ports")
        return cabled
    by_port = {(n.switch.name, n.port): n for n in cabled if n.switch is not None}
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


def _set_desired(s: Session, row: Host, want: DesiredVlan) -> int:
    changed = 0
    vlan, is_tagged, purpose = want.vlan, want.is_tagged, want.purpose
    for nic in _ports(row, want.ports):
        assert nic.switch is not None  # _ports gives cabled NICs only
        current = {
            v.vlan: v
            for v in s.scalars(select(PortVlan).where(PortVlan.switch_id == nic.switch_id, PortVlan.port == nic.port))
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


def _clear_desired(
    s: Session,
    row: Host,
    vlan: int | None = None,
    purpose: str | None = None,
    ports: Sequence[tuple[str, str]] | None = None,
) -> int:
    cabled = [n for n in row.nics if n.switch_id is not None]
    nics = _ports(row, ports) if ports is not None else cabled
    conds: list[ColumnElement[bool]] = [(PortVlan.switch_id == n.switch_id) & (PortVlan.port == n.port) for n in nics]
    if ports is None:
        conds.append(PortVlan.host_id == row.id)
    if not conds:
        return 0
    stmt = delete(PortVlan).where(or_(*conds))
    if vlan is not None:
        stmt = stmt.where(PortVlan.vlan == vlan)
    if purpose is not None:
        stmt = stmt.where(PortVlan.purpose == purpose)
    result = s.execute(stmt, execution_options={"synchronize_session": False})
    return int(getattr(result, "rowcount", 0) or 0)


class PortRepository:
    """Switches, cabled ports and desired VLANs."""

    def __init__(self, db: Database):
        self.db = db

    def vlan_origins(self, switch: str) -> dict[int, str]:
        """The VLAN definitions recorded on ``switch``: id -> ``found`` (an operator's) or
        ``made`` (created by metalflow's port change)."""

        def read(s: Session) -> dict[int, str]:
            sw = switch_row(s, switch)
            return {d.vlan: d.origin for d in s.scalars(select(SwitchVlanDef).where(SwitchVlanDef.switch_id == sw.id))}

        return self.db.read(read)

    def record_vlans(self, switch: str, found: Iterable[int] = (), made: Iterable[int] = ()) -> None:
        """Record VLAN definitions not recorded yet on ``switch`` (a recorded one keeps its
        origin: who made a definition does not change)."""
        wanted = {int(v): "found" for v in found}
        wanted.update({int(v): "made" for v in made if int(v) not in wanted})

        def write(s: Session) -> None:
            sw = switch_row(s, switch)
            have = set(s.scalars(select(SwitchVlanDef.vlan).where(SwitchVlanDef.switch_id == sw.id)))
            for vlan, origin in sorted(wanted.items()):
                if vlan not in have:
                    s.add(SwitchVlanDef(switch_id=sw.id, vlan=vlan, origin=origin))

        if wanted:
            self.db.write(write)

    def list_switches(self) -> list[SwitchInfo]:
        return self.db.read(lambda s: [SwitchInfo.of(w) for w in s.scalars(select(Switch).order_by(Switch.name))])

    def get_switch(self, name: str) -> SwitchInfo:
        return self.db.read(lambda s: SwitchInfo.of(switch_row(s, name)))

    def cabled_ports(self, host: HostKey) -> list[CabledPort]:
        """The ``(switch, port)`` pairs the host's NICs are cabled to, boot NIC first."""
        return self.db.read(lambda s: _cabled(host_row(s, host)))

    def desired_vlans(self, host: HostKey) -> list[VlanInfo]:
        """VLANs the host's cabled ports should carry (and any still recorded for the host)."""
        return self.db.read(lambda s: _desired(s, host_row(s, host)))

    def switch_vlans(self, switch: str) -> list[VlanInfo]:
        """Every desired VLAN on one switch: what the audit compares the read-back with."""

        def read(s: Session) -> list[VlanInfo]:
            sw = switch_row(s, switch)
            stmt = (
                select(PortVlan)
                .where(PortVlan.switch_id == sw.id)
                .options(selectinload(PortVlan.switch), selectinload(PortVlan.host))
                .order_by(PortVlan.port, PortVlan.vlan)
            )
            return [VlanInfo.of(v) for v in s.scalars(stmt)]

        return self.db.read(read)

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
        return self.db.write(lambda s: _set_desired(s, host_row(s, host, lock=True), want))

    def replace_desired_vlans(
        self, host: HostKey, plan: Callable[[list[CabledPort]], Sequence[DesiredVlan]]
    ) -> tuple[list[CabledPort], list[VlanInfo]]:
        """In one transaction: forget every desired VLAN of the host (as ``clear_desired_vlan``
        with no filter), record the ones ``plan`` returns for its cabled ports, and read back.
        Returns the cabled ports (boot NIC first) and the desired VLANs now recorded. Nobody
        ever sees the host's ports with nothing desired half-way, and an error (a VLAN
        refused, the host gone) leaves what was recorded before untouched."""

        def write(s: Session) -> tuple[list[CabledPort], list[VlanInfo]]:
            row = host_row(s, host, lock=True)
            ports = _cabled(row)
            wants = list(plan(ports))
            _clear_desired(s, row)
            for want in wants:
                _set_desired(s, row, want)
            s.flush()
            return ports, _desired(s, row)

        return self.db.write(write)

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
        return self.db.write(lambda s: _clear_desired(s, host_row(s, host, lock=True), vlan, purpose, ports))
