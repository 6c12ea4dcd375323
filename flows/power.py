"""stop, start, reboot, status: IPMI with the state read back."""

from __future__ import annotations

from prefect import Task, flow

from metalflow.flows.models import HostRef, Nic
from metalflow.flows.runbook import Refused, Runbook, host_lock, run_name
from metalflow.integrations.common.values import MAX_NICS
from metalflow.integrations.common.vm import networks
from metalflow.integrations.inventory import HostInfo
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi, switches
from metalflow.tasks.common import logger
from metalflow.tasks.inventory import PortState


class StartRefused(Refused, ValueError):
    """The NIC list given to start cannot be put on the ports; nothing was changed."""


def _power_flow(operation: str, host: str, action: Task[..., str], *args: object) -> str:
    """One power step under the host's lock; its result is the run's outcome."""
    with host_lock(host, operation), Runbook(operation, host) as rb:
        h = rb.load_host(host)
        rb.subject = h.last_vm_name or ""
        result = rb.step(operation, action, h, *args)
        rb.outcome = result
        return result


@flow(name="stop", flow_run_name=run_name("stop"), log_prints=True)
def stop(host: HostRef, soft_timeout: float | None = None) -> str:
    """ACPI soft off, read back, escalate to hard off if the OS ignores it (bounded)."""
    if soft_timeout is not None and not soft_timeout > 0:
        raise ValueError(
            f"soft_timeout: {soft_timeout!r} must be a positive number of seconds "
            "(how long the OS gets to shut down before a hard power off)"
        )
    return _power_flow("stop", host, ipmi.shut_down, soft_timeout)


@flow(name="start", flow_run_name=run_name("start"), log_prints=True)
def start(
    host: HostRef,
    nics: list[Nic] | None = None,
) -> str:
    """Power on. Given the VM's NIC list (CloudStack lets a user add and remove NICs of a
    stopped VM, and its next start carries the new list), the ports first converge to it
    through the same desired state as plug-nic and unplug-nic: a network removed while the
    VM was stopped is off the ports before the machine powers on, an added one is on."""
    if nics is None:
        return _power_flow("start", host, ipmi.power_on)
    if len(nics) > MAX_NICS:
        raise StartRefused(f"nics: {len(nics)} NICs, a VM may have at most {MAX_NICS}")
    try:
        guest, extra = networks(nics)
    except ValueError as exc:
        raise StartRefused(str(exc)) from None
    with host_lock(host, "start"), Runbook("start", host) as rb:
        h = rb.load_host(host)
        rb.subject = h.last_vm_name or ""
        if not h.last_vm_uuid:
            raise StartRefused(f"host: {h.name} carries no VM; its ports stay on the PXE VLAN")
        pxe_vlans: list[int] = rb.run(inv_t.pxe_vlans, h)
        pxe = set(pxe_vlans)
        if pxe & {guest, *extra}:
            raise StartRefused(f"nics: VLAN {sorted(pxe & {guest, *extra})} is the provisioning (PXE) VLAN")
        rb.step(
            f"ports follow the NICs: VLAN {guest} untagged" + (f", VLANs {extra} tagged" if extra else ""),
            switches.converge_ports,
            h,
            rb.run(inv_t.want_ports, h, PortState.GUEST, guest, extra),
        )
        result = rb.step("start", ipmi.power_on, h)
        rb.outcome = result
        return result


@flow(name="reboot", flow_run_name=run_name("reboot"), log_prints=True)
def reboot(host: HostRef) -> str:
    return _power_flow("reboot", host, ipmi.reboot)


@flow(name="status", flow_run_name=run_name("status"), log_prints=True)
def status(host: HostRef) -> str:
    """Read the power state from the BMC now (no lock: a read never changes anything)."""
    with Runbook("status", host) as rb:
        h: HostInfo = rb.load_host(host)
        rb.subject = h.last_vm_name or ""
        state = rb.step("read power", ipmi.read_power, h)
        logger().info("%s is powered %s", h.name, state)
        rb.outcome = f"power {state}"
        return state
