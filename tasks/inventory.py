"""Inventory steps: the host record, the desired port VLANs (what rollback and audit rely on),
the VM a host carries."""

from __future__ import annotations

from enum import StrEnum

from metalflow.integrations.inventory import CabledPort, DesiredVlan, HostInfo, VlanInfo
from metalflow.integrations.switches.batch import PortTarget
from metalflow.tasks import clients
from metalflow.tasks.common import runbook_task
from metalflow.tasks.settings import settings


class PortState(StrEnum):
    """What a host's cabled ports should carry (``want_ports``). A ``StrEnum``: Prefect shows
    task parameters as their value, so a run page still reads ``want-ports host-007 pxe``."""

    #: Idle or provisioning: each switch's PXE VLAN untagged, nothing else.
    PXE = "pxe"
    #: A VM's networks: its guest VLAN untagged, its extra VLANs tagged.
    GUEST = "guest"
    #: Whatever the inventory already records (the audit's repair).
    KEEP = "keep"


def pxe_vlan_for(switch_pxe_vlan: int | None) -> int:
    return switch_pxe_vlan or settings().pxe_vlan


def targets_from(host_ports: list[tuple[str, str]], desired: list[VlanInfo]) -> list[PortTarget]:
    """Per cabled port, the VLAN state the inventory wants (pure: tested without a database).
    A port with no desired VLAN at all gets no target (left alone, never stripped)."""
    out = []
    for sw, port in host_ports:
        rows = [v for v in desired if v.switch == sw and v.port == port]
        if not rows:
            continue
        untagged = next((v.vlan for v in rows if not v.tagged), None)
        tagged = tuple(sorted(v.vlan for v in rows if v.tagged))
        out.append(PortTarget(sw, port, untagged, tagged))
    return out


@runbook_task(system="inventory", name="load-host", run_name="load-host {host}", journal=False, retries=2)
def load_host(host: str) -> HostInfo:
    return clients.inventory().hosts.get(host)


@runbook_task(system="inventory", name="pxe-vlans", run_name="pxe-vlans {host.name}", journal=False, retries=2)
def pxe_vlans(host: HostInfo) -> list[int]:
    """The provisioning VLAN of every switch the host is cabled to (a switch may have its
    own; the setting is the default). No VM network may be one of them."""
    ports = clients.inventory().ports.cabled_ports(host.name)
    return sorted({pxe_vlan_for(cp.switch.pxe_vlan) for cp in ports}) or [pxe_vlan_for(None)]


@runbook_task(system="inventory", name="want-ports", run_name="want-ports {host.name} {state}")
def want_ports(
    host: HostInfo, state: PortState, guest_vlan: int | None = None, extra_vlans: list[int] | None = None
) -> list[PortTarget]:
    """Record the desired VLANs of every cabled port, then return the targets to converge to.

    ``state``: ``PXE`` (idle or provisioning: the PXE VLAN untagged only), ``GUEST`` (the
    guest VLAN untagged plus ``extra_vlans`` tagged), or ``KEEP`` (read back what is recorded).
    """
    try:
        state = PortState(state)  # a plain string (a caller outside the flows) still works
    except ValueError:
        raise ValueError(f"state: {state!r} is not pxe, guest or keep") from None
    inv = clients.inventory()
    if state is PortState.KEEP:
        ports, desired = inv.ports.cabled_ports(host.name), inv.ports.desired_vlans(host.name)
        return targets_from([(cp.switch.name, cp.port) for cp in ports], desired)
    if state is PortState.GUEST and guest_vlan is None:
        raise ValueError("guest_vlan: needed for state 'guest'")

    def plan(ports: list[CabledPort]) -> list[DesiredVlan]:
        if state is PortState.PXE:  # each switch's own PXE VLAN on the ports cabled to it
            by_vlan: dict[int, list[tuple[str, str]]] = {}
            for cp in ports:
                by_vlan.setdefault(pxe_vlan_for(cp.switch.pxe_vlan), []).append((cp.switch.name, cp.port))
            return [DesiredVlan(vlan, "pxe", tagged=False, ports=plist) for vlan, plist in by_vlan.items()]
        assert guest_vlan is not None  # checked above
        # The VM's whole network set is given here: any earlier guest or extra VLAN goes.
        return [DesiredVlan(guest_vlan, "guest", tagged=False)] + [
            DesiredVlan(extra, "extra", tagged=True) for extra in extra_vlans or []
        ]

    # One transaction: the ports never show nothing desired half-way (see the audit).
    ports, desired = inv.ports.replace_desired_vlans(host.name, plan)
    return targets_from([(cp.switch.name, cp.port) for cp in ports], desired)


@runbook_task(system="inventory", name="want-extra-vlan", run_name="want-extra-vlan {host.name} {vlan}")
def want_extra_vlan(host: HostInfo, vlan: int, present: bool) -> list[PortTarget]:
    inv = clients.inventory()
    if present:
        inv.ports.set_desired_vlan(host.name, vlan, purpose="extra", tagged=True)
    else:
        inv.ports.clear_desired_vlan(host.name, vlan, purpose="extra")
    ports = [(cp.switch.name, cp.port) for cp in inv.ports.cabled_ports(host.name)]
    return targets_from(ports, inv.ports.desired_vlans(host.name))


@runbook_task(system="inventory", name="record-vm", run_name="record-vm {host.name}")
def record_vm(host: HostInfo, vm_uuid: str | None, vm_name: str | None) -> str:
    clients.inventory().hosts.set_last_vm(host.name, vm_uuid, vm_name)
    return f"last VM: {vm_name or '-'}"


@runbook_task(system="inventory", name="record-system-id", run_name="record-system-id {host.name}")
def record_system_id(host: HostInfo, system_id: str) -> str:
    clients.inventory().hosts.set_maas_system_id(host.name, system_id)
    return system_id
