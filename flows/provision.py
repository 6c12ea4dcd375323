"""provision: a physical host becomes a CloudStack VM (the seed's StartCommand).

Case A: the VM last ran on this host and MAAS still has it Deployed: power it on, nothing else.
Case B: a new VM: PXE VLAN on the ports, rename, bond, allocate, tag, preseed, deploy, wait,
boot from disk, guest VLAN untagged (extra networks tagged), reboot. Any failure after the
first change undoes what was done, in reverse, and the run ends Failed with the reason.
"""

from __future__ import annotations

from prefect import flow

from metalflow.flows.models import EraseMode, Vm
from metalflow.flows.runbook import Report, RolledBack, Undo, host_lock, run_name
from metalflow.integrations.inventory import HostInfo
from metalflow.integrations.maas import MaasNotFound, NodeStatus
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi, maas, switches
from metalflow.tasks.settings import settings

S = NodeStatus
OWNED = (S.ALLOCATED, S.DEPLOYING, S.DEPLOYED)
#: The MAAS tags that say who owns the machine's VM (Owner.tags()); gone when it holds none.
OWNER_TAG_PREFIXES = ("accountid_", "domainid_", "projectid_")


class ConstraintFailed(Exception):
    """A provision precondition does not hold; nothing was changed."""


def check_constraints(h: HostInfo, vm: Vm, report: Report) -> tuple[str, object]:
    """Every check before the first change, each failing with the constraint's name.
    Returns the case ('A' or 'B') and the machine as MAAS has it."""

    def need(ok: bool, constraint: str, fix: str) -> None:
        report.add("check", constraint, "ok" if ok else f"FAILED: {fix}")
        if not ok:
            raise ConstraintFailed(f"{constraint}: {fix}")

    need(
        not h.maintenance,
        "host not in maintenance",
        f"{h.name} is in maintenance ({h.maintenance_reason}); fix the host and clear it",
    )
    cabled = [n for n in h.nics if n.switch]
    need(bool(cabled), "host cabled to a ToR switch", f"{h.name} has no NIC in the rack config")
    # Each switch may have its own provisioning VLAN: none of them may carry the VM.
    pxe = set(inv_t.pxe_vlans(h))
    need(
        vm.guest_vlan not in pxe and not pxe & set(vm.extra_vlans),
        "VLANs are not the PXE VLAN",
        f"VLAN {sorted(pxe)} is the provisioning network; give the VM another network",
    )
    need(bool(h.maas_system_id), "host registered in MAAS", f"{h.name} is not registered; run register-host")
    power, problem = None, ""
    try:
        # One retry, not the task's usual three with backoff: a check should answer quickly.
        power = ipmi.read_power.with_options(retries=1, retry_delay_seconds=1)(h)
    except Exception as exc:  # noqa: BLE001 - any failure to read it fails this constraint
        problem = (
            f"{h.name}'s BMC at {h.ipmi_address} did not answer a power read ({type(exc).__name__}: "
            f"{exc}); check its address, credentials and network"
        )
    need(power is not None, "BMC answers", problem)
    report.add("ipmi", "power state", power)
    machine = None
    try:
        machine = maas.read_machine(h)
    except MaasNotFound:
        pass
    need(
        machine is not None,
        "machine known to MAAS",
        f"MAAS has no machine {h.maas_system_id} any more; run register-host again",
    )
    if h.last_vm_uuid == vm.uuid and machine.status == S.DEPLOYED:
        return "A", machine
    resumable = machine.status in OWNED and machine.hostname == vm.name
    need(
        machine.status == S.READY or resumable,
        "MAAS status allows provisioning",
        f"machine {machine.system_id} is {machine.status.label}"
        + (f" as {machine.hostname}" if machine.status in OWNED else "")
        + "; it must be Ready (destroy the VM it carries, or fix it in MAAS)",
    )
    need(
        maas.image_exists(h, vm.image),
        "image exists in MAAS",
        f"MAAS has no image {vm.image!r} (the template URL must name a MAAS boot resource)",
    )
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
        erase = erase_on_failure or cfg.erase_default
        try:
            # The idle state: nothing to undo (a rollback ends with the ports here anyway).
            report.add(
                "switch", "PXE VLAN on every cabled port", switches.converge_ports(h, inv_t.want_ports(h, "pxe"))
            )

            # Each undo is registered before its change: a change that fails half-way (a
            # session dropped between two switch commands) is undone too.
            undo.push("rename back", lambda: maas.rename_machine(h, idle_name(h)))
            report.add("maas", f"rename to {vm.name}", maas.rename_machine(h, vm.name))

            cabled_macs = [n.mac for n in h.nics if n.switch]
            if len(cabled_macs) > 1:
                # Kept on rollback, as destroy keeps it: the host's networking, not the VM's.
                report.add("maas", "active-backup bond", maas.create_bond(h, cabled_macs))

            # Reversed, power off runs after the release: whatever the release and its erase
            # achieved, the machine ends powered off.
            undo.push("power off", lambda: ipmi.power_off(h))
            undo.push("release with erase", lambda: release_and_wait(h, erase))
            report.add("maas", "allocate", maas.allocate_machine(h))

            tags = vm.owner.tags()
            if tags:
                undo.push("remove ownership tags", lambda: maas.untag_machine(h, list(OWNER_TAG_PREFIXES)))
                report.add("maas", "ownership tags", maas.tag_machine(h, tags))

            preseed = maas.deliver_preseed(
                h, vm.name, vm.image, vm.root_password_ref, vm.root_password_hash, list(vm.ssh_keys)
            )
            report.add("maas", "curtin preseed", preseed.filename)
            report.section(f"curtin preseed ({preseed.filename}, secrets masked)", preseed.masked_text, "yaml")

            report.add("maas", f"deploy {vm.image}", maas.deploy_machine(h, vm.image))
            deployed = maas.wait_for_status(h, h.maas_system_id, "deployed", cfg.deploy_timeout, phase="deploy")
            report.add(
                "maas", "wait for Deployed", f"{deployed.status.label}: {deployed.osystem}/{deployed.distro_series}"
            )

            undo.push("boot device PXE", lambda: ipmi.set_boot_device(h, "pxe", True))
            report.add("ipmi", "boot device disk", ipmi.set_boot_device(h, "disk", True))

            # Before any release: a disk erase PXE-boots, so the PXE VLAN must be back first
            # (pushed last, it runs first).
            undo.push("guest VLANs off, PXE VLAN back", lambda: switches.converge_ports(h, inv_t.want_ports(h, "pxe")))
            targets = inv_t.want_ports(h, "guest", vm.guest_vlan, vm.extra_vlans)
            report.add(
                "switch",
                f"guest VLAN {vm.guest_vlan} untagged" + (f", VLANs {vm.extra_vlans} tagged" if vm.extra_vlans else ""),
                switches.converge_ports(h, targets),
            )

            report.add("ipmi", "reboot", ipmi.reboot(h))

            report.add("inventory", "record VM", inv_t.record_vm(h, vm.uuid, vm.name))
        except Exception as exc:
            steps = len(undo.steps)
            failed = undo.run(report)
            outcome = RolledBack.of(exc, steps, failed)
            report.outcome = f"failed: {outcome}"
            report.publish()
            raise outcome from exc
        report.outcome = f"{h.name} runs {vm.name} ({vm.image})"
        report.publish()
        return report.outcome


def idle_name(h: HostInfo) -> str:
    """The name a machine carries when it holds no VM (the original plugin's HOST-<id>)."""
    return f"HOST-{h.cloudstack_id}" if h.cloudstack_id else h.name


def release_and_wait(h: HostInfo, erase: str) -> str:
    """Release with ``erase`` and wait until MAAS has the machine Ready (the erase PXE-boots:
    the caller's undo order has put the ports back on the PXE VLAN before this runs)."""
    result = maas.release_machine(h, erase)
    ready = maas.wait_for_status(h, h.maas_system_id, "ready", settings().erase_timeout, phase="erase")
    return f"{result}; {ready.status.label}"
