"""provision: a physical host becomes a CloudStack VM (the seed's StartCommand).

Case A: the VM last ran on this host and MAAS still has it Deployed: power it on, nothing else.
Case B: a new VM: PXE VLAN on the ports, rename, bond, allocate, tag, preseed, deploy, wait,
boot from disk, guest VLAN untagged (extra networks tagged), reboot. Any failure after the
first change undoes what was done, in reverse, and the run ends Failed with the reason.
"""
from __future__ import annotations

from prefect import flow

from flows.models import EraseMode, Vm
from flows.runbook import Report, Undo, host_lock, run_name
from integrations.inventory import HostInfo
from integrations.maas import NodeStatus
from tasks import inventory as inv_t
from tasks import ipmi, maas, switches
from tasks.settings import settings

S = NodeStatus
OWNED = (S.ALLOCATED, S.DEPLOYING, S.DEPLOYED)


class ConstraintFailed(Exception):
    """A provision precondition does not hold; nothing was changed."""


def check_constraints(h: HostInfo, vm: Vm, report: Report) -> tuple[str, object]:
    """Every check before the first change, each failing with the constraint's name.
    Returns the case ('A' or 'B') and the machine as MAAS has it."""

    def need(ok: bool, constraint: str, fix: str) -> None:
        report.add("check", constraint, "ok" if ok else f"FAILED: {fix}")
        if not ok:
            raise ConstraintFailed(f"{constraint}: {fix}")

    need(not h.maintenance, "host not in maintenance",
         f"{h.name} is in maintenance ({h.maintenance_reason}); fix the host and clear it")
    cabled = [n for n in h.nics if n.switch]
    need(bool(cabled), "host cabled to a ToR switch", f"{h.name} has no NIC in the rack config")
    pxe = {inv_t.pxe_vlan_for(None)}
    need(vm.guest_vlan not in pxe and not pxe & set(vm.extra_vlans), "VLANs are not the PXE VLAN",
         f"VLAN {sorted(pxe)} is the provisioning network; give the VM another network")
    need(bool(h.maas_system_id), "machine known to MAAS", f"{h.name} is not registered; run register-host")
    power = ipmi.read_power(h)
    report.add("ipmi", "BMC answers", f"power {power}")
    machine = maas.read_machine(h)
    if h.last_vm_uuid == vm.uuid and machine.status == S.DEPLOYED:
        return "A", machine
    resumable = machine.status in OWNED and machine.hostname == vm.name
    need(machine.status == S.READY or resumable, "MAAS status allows provisioning",
         f"machine {machine.system_id} is {machine.status.label}"
         + (f" as {machine.hostname}" if machine.status in OWNED else "")
         + "; it must be Ready (destroy the VM it carries, or fix it in MAAS)")
    need(maas.image_exists(h, vm.image), "image exists in MAAS",
         f"MAAS has no image {vm.image!r} (the template URL must name a MAAS boot resource)")
    return "B", machine


@flow(name="provision", flow_run_name=run_name("provision", "vm", "name"), log_prints=True)
def provision(host: str, vm: Vm, erase_on_failure: EraseMode | None = None) -> str:
    """Make ``host`` (inventory name or CloudStack host id) become ``vm``."""
    cfg = settings()
    with host_lock(host, "provision"):
        h = inv_t.load_host(host)
        report = Report("provision", h.name, vm.name)
        try:
            case, machine = check_constraints(h, vm, report)
        except ConstraintFailed as exc:
            report.outcome = f"refused, nothing changed: {exc}"
            report.publish()
            raise
        if case == "A":
            report.add("ipmi", "power on (case A: VM already deployed here)", ipmi.power_on(h))
            report.outcome = "running (case A)"
            report.publish()
            return "case A: powered on"

        undo = Undo()
        try:
            report.add("switch", "PXE VLAN on every cabled port",
                       switches.converge_ports(h, inv_t.want_ports(h, "pxe")))

            report.add("maas", f"rename to {vm.name}", maas.rename_machine(h, vm.name))
            undo.push("rename back", lambda: maas.rename_machine(h, idle_name(h)))

            cabled_macs = [n.mac for n in h.nics if n.switch]
            if len(cabled_macs) > 1:
                report.add("maas", "active-backup bond", maas.create_bond(h, cabled_macs))

            report.add("maas", "allocate", maas.allocate_machine(h))
            erase = erase_on_failure or cfg.erase_default
            undo.push("release with erase", lambda: release_and_wait(h, erase, report))

            tags = vm.owner.tags()
            if tags:
                report.add("maas", "ownership tags", maas.tag_machine(h, tags))
                undo.push("remove ownership tags", lambda: maas.untag_machine(h, ["accountid_", "domainid_", "projectid_"]))

            preseed = maas.deliver_preseed(h, vm.name, vm.image, vm.root_password_ref, vm.root_password_hash,
                                           list(vm.ssh_keys))
            report.add("maas", "curtin preseed", preseed.filename)
            report.section(f"curtin preseed ({preseed.filename}, secrets masked)", preseed.masked_text, "yaml")

            report.add("maas", f"deploy {vm.image}", maas.deploy_machine(h, vm.image))
            deployed = maas.wait_for_status(h, h.maas_system_id, "deployed", cfg.deploy_timeout)
            report.add("maas", "wait for Deployed", f"{deployed.status.label}: {deployed.osystem}/{deployed.distro_series}")

            report.add("ipmi", "boot device disk", ipmi.set_boot_device(h, "disk", True))
            undo.push("boot device PXE", lambda: ipmi.set_boot_device(h, "pxe", True))

            targets = inv_t.want_ports(h, "guest", vm.guest_vlan, vm.extra_vlans)
            report.add("switch", f"guest VLAN {vm.guest_vlan} untagged" +
                       (f", VLANs {vm.extra_vlans} tagged" if vm.extra_vlans else ""),
                       switches.converge_ports(h, targets))
            # Before any release: a disk erase PXE-boots, so the PXE VLAN must be back first.
            undo.push("guest VLANs off, PXE VLAN back",
                      lambda: switches.converge_ports(h, inv_t.want_ports(h, "pxe")))

            report.add("ipmi", "reboot", ipmi.reboot(h))
            undo.push("power off", lambda: ipmi.power_off(h))

            report.add("inventory", "record VM", inv_t.record_vm(h, vm.uuid, vm.name))
        except Exception as exc:
            report.outcome = f"failed, rolled back: {exc}"
            undo.run(report)
            report.publish()
            raise
        report.outcome = f"{h.name} runs {vm.name} ({vm.image})"
        report.publish()
        return report.outcome


def idle_name(h: HostInfo) -> str:
    """The name a machine carries when it holds no VM (the original plugin's HOST-<id>)."""
    return f"HOST-{h.cloudstack_id}" if h.cloudstack_id else h.name


def release_and_wait(h: HostInfo, erase: str, report: Report) -> str:
    """Power off first (a half-built OS must not run on), ports to PXE already undone by the
    caller's order, then release with erase and wait until MAAS has the machine Ready."""
    result = maas.release_machine(h, erase)
    ready = maas.wait_for_status(h, h.maas_system_id, "ready", settings().erase_timeout)
    return f"{result}; {ready.status.label}"
