"""provision: a physical host becomes a CloudStack VM (the seed's StartCommand).

Case A: the VM last ran on this host and MAAS still has it Deployed: power it on, nothing else.
Case B: a new VM: PXE VLAN on the ports, rename, bond, allocate, tag, preseed, deploy, wait,
boot from disk, guest VLAN untagged (extra networks tagged), reboot. Any failure after the
first change undoes what was done, in reverse, and the run ends Failed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prefect import flow

from metalflow.flows.models import EraseMode, HostRef, Vm
from metalflow.flows.recover import finish_left_rollbacks
from metalflow.flows.runbook import Refused, Runbook, Shown, host_lock, run_name
from metalflow.integrations.inventory import HostInfo
from metalflow.integrations.maas import MaasNotFound, Machine, NodeStatus
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi, maas, switches
from metalflow.tasks.inventory import PortState
from metalflow.tasks.ipmi import BootFrom
from metalflow.tasks.maas import WaitFor
from metalflow.tasks.settings import settings

S = NodeStatus
OWNED = (S.ALLOCATED, S.DEPLOYING, S.DEPLOYED)
#: The MAAS tags that say who owns the machine's VM (Owner.tags()); gone when it holds none.
OWNER_TAG_PREFIXES = ("accountid_", "domainid_", "projectid_", "vmid_")


class ConstraintFailed(Refused):
    """A provision precondition does not hold; nothing was changed."""


class Case(StrEnum):
    """Which provision a request is (see the module docstring)."""

    #: The VM last ran on this host and MAAS still has it Deployed: power it on.
    A = "A"
    #: A new VM: the whole runbook.
    B = "B"


@dataclass(frozen=True)
class Checked:
    """What the checks found: the case, and the machine as MAAS has it."""

    case: Case
    machine: Machine


def check_constraints(rb: Runbook, h: HostInfo, vm: Vm) -> Checked:
    """Every check before the first change, each reported and failing with the constraint's
    name."""

    def need(ok: bool, constraint: str, fix: str) -> None:
        rb.note("check", constraint, "ok" if ok else f"FAILED: {fix}")
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
    pxe_vlans: list[int] = rb.run(inv_t.pxe_vlans, h)
    pxe = set(pxe_vlans)
    need(
        vm.guest_vlan not in pxe and not pxe & set(vm.extra_vlans),
        "VLANs are not the PXE VLAN",
        f"VLAN {sorted(pxe)} is the provisioning network; give the VM another network",
    )
    need(bool(h.maas_system_id), "host registered in MAAS", f"{h.name} is not registered; run register-host")
    power, problem = None, ""
    try:
        # One retry, not the task's usual three with backoff: a check should answer quickly.
        power = rb.run(ipmi.read_power.with_options(retries=1, retry_delay_seconds=1), h)
    except Exception as exc:  # noqa: BLE001 - any failure to read it fails this constraint
        problem = (
            f"{h.name}'s BMC at {h.ipmi_address} did not answer a power read ({type(exc).__name__}: "
            f"{exc}); check its address, credentials and network"
        )
    need(power is not None, "BMC answers", problem)
    rb.note("ipmi", "power state", power)
    machine = None
    try:
        machine = rb.run(maas.read_machine, h)
    except MaasNotFound:
        pass
    need(
        machine is not None,
        "machine known to MAAS",
        f"MAAS has no machine {h.maas_system_id} any more; run register-host again",
    )
    assert machine is not None  # for the type checker: need() raised otherwise
    if h.last_vm_uuid == vm.uuid and machine.status == S.DEPLOYED:
        return Checked(Case.A, machine)
    resumable = machine.status in OWNED and machine.hostname == vm.name
    need(
        machine.status == S.READY or resumable,
        "MAAS status allows provisioning",
        f"machine {machine.system_id} is {machine.status.label}"
        + (f" as {machine.hostname}" if machine.status in OWNED else "")
        + "; it must be Ready (destroy the VM it carries, or fix it in MAAS)",
    )
    if vm.architecture:
        # MAAS deploys the machine's own architecture: a template made for another one is
        # refused here, before anything changes (compared without the subarchitecture
        # unless the template names one).
        wanted, have = vm.architecture, machine.architecture
        same = have == wanted if "/" in wanted else have.split("/", 1)[0] == wanted
        need(
            same,
            "architecture matches",
            f"{h.name} is {have or 'of unknown architecture'}, the VM's template asks for {wanted}; "
            "use a template of the machine's architecture or another machine",
        )
    need(
        rb.run(maas.image_exists, h, vm.image, vm.architecture),
        "image exists in MAAS",
        f"MAAS has no image {vm.image!r}"
        + (f" for {vm.architecture}" if vm.architecture else "")
        + " (the template must name a MAAS boot resource)",
    )
    return Checked(Case.B, machine)


@flow(name="provision", flow_run_name=run_name("provision", "vm", "name"), log_prints=True)
def provision(host: HostRef, vm: Vm, erase_on_failure: EraseMode | None = None) -> str:
    """Make ``host`` (inventory name or CloudStack host id) become ``vm``."""
    cfg = settings()
    with host_lock(host, "provision"), Runbook("provision", host, vm.name) as rb:
        h = rb.load_host(host)
        if finish_left_rollbacks(rb, h):  # a dead run's or an unfinished rollback's leftovers
            h = rb.load_host(host)
        checked = check_constraints(rb, h, vm)
        if checked.case is Case.A:
            # The NIC list is the truth here too: CloudStack's retried create carries it.
            rb.step(
                f"ports follow the NICs: VLAN {vm.guest_vlan} untagged"
                + (f", VLANs {vm.extra_vlans} tagged" if vm.extra_vlans else ""),
                switches.converge_ports,
                h,
                rb.run(inv_t.want_ports, h, PortState.GUEST, vm.guest_vlan, vm.extra_vlans),
            )
            rb.step("power on (case A: VM already deployed here)", ipmi.power_on, h)
            rb.outcome = "running (case A)"
            return "case A: powered on"

        sid = checked.machine.system_id
        erase = erase_on_failure or cfg.erase_default
        rb.begin_changes()
        # The idle state: nothing to undo (a rollback ends with the ports here anyway).
        rb.step("PXE VLAN on every cabled port", switches.converge_ports, h, rb.run(inv_t.want_ports, h, PortState.PXE))

        # Each undo is registered before its change: a change that fails half-way (a
        # session dropped between two switch commands) is undone too.
        rb.undo_action("rename back", "rename", h, name=idle_name(h))
        rb.step(f"rename to {vm.name}", maas.rename_machine, h, vm.name)

        cabled_macs = [n.mac for n in h.nics if n.switch]
        if len(cabled_macs) > 1:
            # Kept on rollback, as destroy keeps it: the host's networking, not the VM's.
            rb.step("active-backup bond", maas.create_bond, h, cabled_macs)

        # Reversed, power off runs after the release: whatever the release and its erase
        # achieved, the machine ends powered off.
        rb.undo_action("power off", "power-off", h)
        rb.undo_action("release with erase", "release-with-erase", h, system_id=sid, erase=erase)
        rb.step("allocate", maas.allocate_machine, h)

        tags = vm.owner.tags()
        if tags:
            rb.undo_action("remove ownership tags", "untag", h, prefixes=list(OWNER_TAG_PREFIXES))
            rb.step("ownership tags", maas.tag_machine, h, tags)

        rb.undo_action("remove the curtin preseed", "remove-preseeds", h, hostname=vm.name)
        preseed = rb.step(
            "curtin preseed",
            maas.deliver_preseed,
            h,
            vm.name,
            vm.image,
            vm.root_password_ref,
            list(vm.ssh_keys),
        )
        rb.section(f"curtin preseed ({preseed.filename}, secrets masked)", preseed.masked_text, "yaml")

        rb.step(f"deploy {vm.image}", maas.deploy_machine, h, vm.image)
        rb.step(
            Shown("wait for Deployed", installed),
            maas.wait_for_status,
            h,
            sid,
            WaitFor.DEPLOYED,
            cfg.deploy_timeout,
            phase="deploy",
        )
        # Installed: MAAS will not read the preseed again (a reinstall writes its own).
        rb.step("remove the used curtin preseed", maas.remove_preseeds, h, vm.name)

        rb.undo_action("boot device PXE", "boot-device", h, device=BootFrom.PXE.value, persistent=True)
        rb.step("boot device disk", ipmi.set_boot_device, h, BootFrom.DISK, True)

        # Before any release: a disk erase PXE-boots, so the PXE VLAN must be back first
        # (pushed last, it runs first).
        rb.undo_action("guest VLANs off, PXE VLAN back", "ports", h, state=PortState.PXE.value)
        rb.step(
            f"guest VLAN {vm.guest_vlan} untagged" + (f", VLANs {vm.extra_vlans} tagged" if vm.extra_vlans else ""),
            switches.converge_ports,
            h,
            rb.run(inv_t.want_ports, h, PortState.GUEST, vm.guest_vlan, vm.extra_vlans),
        )

        rb.step("reboot", ipmi.reboot, h)

        rb.step("record VM", inv_t.record_vm, h, vm.uuid, vm.name)
        rb.outcome = f"{h.name} runs {vm.name} ({vm.image})"
        return rb.outcome


def idle_name(h: HostInfo) -> str:
    """The name a machine carries when it holds no VM (the original plugin's HOST-<id>)."""
    return f"HOST-{h.cloudstack_id}" if h.cloudstack_id else h.name


def installed(m: Machine) -> str:
    """A deployed machine in the report: ``Deployed: ubuntu/jammy``."""
    return f"{m.status.label}: {m.osystem}/{m.distro_series}"


def status_of(m: Machine) -> str:
    """A machine in the report: its MAAS status."""
    return m.status.label
