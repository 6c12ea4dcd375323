"""plug-nic / unplug-nic: an extra network as a tagged VLAN on every cabled port."""
from __future__ import annotations

from prefect import flow

from flows.runbook import Report, host_lock, run_name
from tasks import inventory as inv_t
from tasks import switches
from tasks.common import logger


class NicRefused(Exception):
    pass


def _check_vlan(vlan: int) -> None:
    if isinstance(vlan, bool) or not 1 <= int(vlan) <= 4094:
        raise NicRefused(f"vlan: {vlan!r} is not a VLAN id (1-4094)")
    if int(vlan) == inv_t.pxe_vlan_for(None):
        raise NicRefused(f"vlan: {vlan} is the PXE (provisioning) VLAN; a VM cannot join it")


@flow(name="plug-nic", flow_run_name=run_name("plug-nic", "vlan"), log_prints=True)
def plug_nic(host: str, vlan: int) -> str:
    _check_vlan(vlan)
    with host_lock(host, "plug-nic"):
        h = inv_t.load_host(host)
        report = Report("plug-nic", h.name, f"VLAN {vlan}")
        guest = [v for v in clients_desired(h) if v.purpose == "guest"]
        if any(v.vlan == vlan for v in guest):
            raise NicRefused(f"vlan: {vlan} is already the default NIC's (guest) VLAN on {h.name}")
        report.add("switch", f"VLAN {vlan} tagged on every cabled port",
                   switches.converge_ports(h, inv_t.want_extra_vlan(h, vlan, True)))
        report.outcome = f"VLAN {vlan} plugged"
        report.publish()
        return report.outcome


@flow(name="unplug-nic", flow_run_name=run_name("unplug-nic", "vlan"), log_prints=True)
def unplug_nic(host: str, vlan: int) -> str:
    _check_vlan(vlan)
    with host_lock(host, "unplug-nic"):
        h = inv_t.load_host(host)
        report = Report("unplug-nic", h.name, f"VLAN {vlan}")
        desired = clients_desired(h)
        if any(v.vlan == vlan and v.purpose == "guest" for v in desired):
            raise NicRefused(f"vlan: {vlan} belongs to the default NIC of {h.name}; the default NIC "
                             "cannot be unplugged (destroy the VM instead)")
        if not any(v.vlan == vlan for v in desired):
            logger().info("VLAN %s is not plugged on %s: making sure the ports agree", vlan, h.name)
        report.add("switch", f"VLAN {vlan} off every cabled port",
                   switches.converge_ports(h, inv_t.want_extra_vlan(h, vlan, False)))
        report.outcome = f"VLAN {vlan} unplugged"
        report.publish()
        return report.outcome


def clients_desired(h):
    from tasks.clients import inventory

    return inventory().desired_vlans(h.name)

