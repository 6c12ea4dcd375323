"""plug-nic / unplug-nic: an extra network as a tagged VLAN on every cabled port.

A value that is not a VLAN id metalflow may configure (VLAN 1, ``True``, ``"5\n"``) or not a
host name is refused by the parameters' types (:mod:`metalflow.flows.models`) before the run
starts, by the UI's form, the API and the CLI alike. The refusals that need the inventory (the
PXE VLAN, the default NIC's VLAN, no VM on the host) happen before any change and are
published as the run's report, so the UI says why."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow
from prefect.runtime import flow_run

from metalflow.flows.models import HostRef
from metalflow.flows.runbook import Refused, Runbook, host_lock
from metalflow.integrations.common.fields import VlanId
from metalflow.integrations.common.values import MAX_NICS
from metalflow.integrations.inventory import HostInfo, VlanInfo
from metalflow.tasks import clients, switches
from metalflow.tasks import inventory as inv_t
from metalflow.tasks.common import logger


class NicRefused(Refused, ValueError):
    """The request cannot be honoured as given; nothing was changed."""


def _run_name(operation: str) -> Callable[[], str]:
    def name() -> str:
        params = flow_run.parameters or {}
        return f"{operation} {params.get('host', '')} → VLAN {params.get('vlan', '?')}"

    return name


@flow(name="plug-nic", flow_run_name=_run_name("plug-nic"), log_prints=True)
def plug_nic(host: HostRef, vlan: VlanId) -> str:
    with Runbook("plug-nic", host, f"VLAN {vlan}") as rb:
        with host_lock(host, "plug-nic"):
            h = rb.load_host(host)
            if vlan in rb.run(inv_t.pxe_vlans, h):
                raise NicRefused(f"vlan: {vlan} is the PXE (provisioning) VLAN; a VM cannot join it")
            if not h.last_vm_uuid:
                # An extra VLAN on an idle host would be handed to whichever VM comes next.
                raise NicRefused(f"host: {h.name} carries no VM; plug a NIC into a provisioned VM")
            desired = _desired(h)
            if any(v.vlan == vlan and v.purpose == "guest" for v in desired):
                raise NicRefused(f"vlan: {vlan} is already the default NIC's (guest) VLAN on {h.name}")
            networks = {v.vlan for v in desired if v.purpose in ("guest", "extra")}
            if vlan not in networks and len(networks) >= MAX_NICS:
                # The same limit as a VM's NICs at create: plugging one at a time cannot pass it.
                raise NicRefused(
                    f"vlan: {h.name} already has {len(networks)} networks, the most a VM may have "
                    f"({MAX_NICS}); unplug one first"
                )
            rb.step(
                f"VLAN {vlan} tagged on every cabled port",
                switches.converge_ports,
                h,
                rb.run(inv_t.want_extra_vlan, h, vlan, True),
            )
            rb.outcome = f"VLAN {vlan} plugged"
            return rb.outcome


@flow(name="unplug-nic", flow_run_name=_run_name("unplug-nic"), log_prints=True)
def unplug_nic(host: HostRef, vlan: VlanId) -> str:
    with Runbook("unplug-nic", host, f"VLAN {vlan}") as rb:
        with host_lock(host, "unplug-nic"):
            h = rb.load_host(host)
            desired = _desired(h)
            if vlan in rb.run(inv_t.pxe_vlans, h):
                raise NicRefused(
                    f"vlan: {vlan} is the PXE (provisioning) VLAN, not a NIC of the VM; "
                    "destroy puts the host back on it"
                )
            if any(v.vlan == vlan and v.purpose == "guest" for v in desired):
                raise NicRefused(
                    f"vlan: {vlan} belongs to the default NIC of {h.name}; the default NIC "
                    "cannot be unplugged (destroy the VM instead)"
                )
            if not any(v.vlan == vlan for v in desired):
                logger().info("VLAN %s is not plugged on %s: making sure the ports agree", vlan, h.name)
            rb.step(
                f"VLAN {vlan} off every cabled port",
                switches.converge_ports,
                h,
                rb.run(inv_t.want_extra_vlan, h, vlan, False),
            )
            rb.outcome = f"VLAN {vlan} unplugged"
            return rb.outcome


def _desired(h: HostInfo) -> list[VlanInfo]:
    return clients.inventory().ports.desired_vlans(h.name)
