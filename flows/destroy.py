"""destroy: the host gives its VM back and returns to the pool (the seed's DestroyCommand).

Power off; every tenant VLAN off every cabled port, the PXE VLAN back (the host is on the
provisioning network again); boot device PXE; MAAS release with the chosen erase (skipped
when already Ready); rename back to HOST-<id>."""

from __future__ import annotations

from prefect import flow

from metalflow.flows.models import EraseMode, HostRef
from metalflow.flows.provision import OWNER_TAG_PREFIXES, idle_name, status_of
from metalflow.flows.recover import finish_left_rollbacks
from metalflow.flows.runbook import Runbook, Shown, host_lock, run_name
from metalflow.integrations.maas import NodeStatus
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi, maas, switches
from metalflow.tasks.inventory import PortState
from metalflow.tasks.ipmi import BootFrom
from metalflow.tasks.maas import WaitFor
from metalflow.tasks.settings import settings


@flow(name="destroy", flow_run_name=run_name("destroy"), log_prints=True)
def destroy(host: HostRef, erase: EraseMode | None = None, wait_for_erase: bool = True) -> str:
    cfg = settings()
    erase = erase or cfg.erase_default
    # No rollback: every step moves towards the idle state, so a rerun continues from a failure.
    with host_lock(host, "destroy"), Runbook("destroy", host, failed="failed (a rerun continues from here)") as rb:
        h = rb.load_host(host)
        rb.subject = h.last_vm_name or ""
        # What a dead run or an unfinished rollback left goes first: the host ends idle with
        # no records, handed out again (its undos are idempotent, the steps below no-ops then).
        if finish_left_rollbacks(rb, h):
            h = rb.load_host(host)
        rb.step("power off", ipmi.power_off, h)
        rb.step(
            "tenant VLANs off, PXE VLAN back",
            switches.converge_ports,
            h,
            rb.run(inv_t.want_ports, h, PortState.PXE),
        )
        rb.step("boot device PXE", ipmi.set_boot_device, h, BootFrom.PXE, True)
        if h.maas_system_id:
            machine = rb.run(maas.read_machine, h)
            if machine.status == NodeStatus.READY:
                rb.note("maas", "release", "already Ready: skipped")
            else:
                rb.step(f"release (erase: {erase})", maas.release_machine, h, erase)
                if wait_for_erase:
                    rb.step(
                        Shown("wait for Ready", status_of),
                        maas.wait_for_status,
                        h,
                        machine.system_id,
                        WaitFor.READY,
                        cfg.erase_timeout,
                        phase="erase",
                    )
            rb.step(f"rename to {idle_name(h)}", maas.rename_machine, h, idle_name(h))
            rb.step("remove ownership tags", maas.untag_machine, h, list(OWNER_TAG_PREFIXES))
        rb.step("forget the VM", inv_t.record_vm, h, None, None)
        rb.outcome = f"{h.name} is free again"
        return rb.outcome
