"""destroy: the host gives its VM back and returns to the pool (the seed's DestroyCommand).

Power off; every tenant VLAN off every cabled port, the PXE VLAN back (the host is on the
provisioning network again); boot device PXE; MAAS release with the chosen erase (skipped
when already Ready); rename back to HOST-<id>."""

from __future__ import annotations

from prefect import flow

from metalflow.flows.models import EraseMode
from metalflow.flows.provision import OWNER_TAG_PREFIXES, idle_name
from metalflow.flows.runbook import Report, host_lock, run_name
from metalflow.integrations.maas import NodeStatus
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi, maas, switches
from metalflow.tasks.settings import settings


@flow(name="destroy", flow_run_name=run_name("destroy"), log_prints=True)
def destroy(host: str, erase: EraseMode | None = None, wait_for_erase: bool = True) -> str:
    cfg = settings()
    erase = erase or cfg.erase_default
    with host_lock(host, "destroy"):
        h = inv_t.load_host(host)
        report = Report("destroy", h.name, h.last_vm_name or "")
        try:
            report.add("ipmi", "power off", ipmi.power_off(h))
            report.add(
                "switch", "tenant VLANs off, PXE VLAN back", switches.converge_ports(h, inv_t.want_ports(h, "pxe"))
            )
            report.add("ipmi", "boot device PXE", ipmi.set_boot_device(h, "pxe", True))
            if h.maas_system_id:
                machine = maas.read_machine(h)
                if machine.status == NodeStatus.READY:
                    report.add("maas", "release", "already Ready: skipped")
                else:
                    report.add("maas", f"release (erase: {erase})", maas.release_machine(h, erase))
                    if wait_for_erase:
                        ready = maas.wait_for_status(h, h.maas_system_id, "ready", cfg.erase_timeout, phase="erase")
                        report.add("maas", "wait for Ready", ready.status.label)
                report.add("maas", f"rename to {idle_name(h)}", maas.rename_machine(h, idle_name(h)))
                report.add("maas", "remove ownership tags", maas.untag_machine(h, list(OWNER_TAG_PREFIXES)))
            report.add("inventory", "forget the VM", inv_t.record_vm(h, None, None))
        except Exception as exc:
            report.outcome = f"failed (a rerun continues from here): {exc}"
            report.publish()
            raise
        report.outcome = f"{h.name} is free again"
        report.publish()
        return report.outcome
