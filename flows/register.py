"""register-host (CloudStack "add host"): MAAS adopts the machine by its boot MAC, or it is
enlisted with IPMI power and commissioned until Ready. Removing a host never deletes it from
MAAS. Idempotent: a rerun finds the machine and waits, or does nothing."""

from __future__ import annotations

from prefect import flow

from metalflow.flows.provision import idle_name
from metalflow.flows.runbook import Report, host_lock, run_name
from metalflow.integrations.maas import NodeStatus
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import maas, switches
from metalflow.tasks.settings import settings

S = NodeStatus
SETTLED = (S.READY, S.ALLOCATED, S.DEPLOYING, S.DEPLOYED)


@flow(name="register-host", flow_run_name=run_name("register-host"), log_prints=True)
def register_host(host: str) -> str:
    with host_lock(host, "register-host"):
        h = inv_t.load_host(host)
        report = Report("register-host", h.name)
        try:
            if h.last_vm_uuid:
                # A host that carries a VM is registered again (CloudStack re-adds it, an
                # operator reruns): its ports carry the guest network; PXE would cut the VM off.
                report.add("switch", "ports left alone", f"{h.name} carries VM {h.last_vm_name or h.last_vm_uuid}")
            else:
                # Commissioning PXE-boots: the cabled ports must be on the provisioning network.
                report.add(
                    "switch", "PXE VLAN on every cabled port", switches.converge_ports(h, inv_t.want_ports(h, "pxe"))
                )
            machine = maas.find_or_create_machine(h, idle_name(h))
            report.add("maas", "adopt or enlist", f"{machine.system_id} ({machine.status.label})")
            report.add("inventory", "record system_id", inv_t.record_system_id(h, machine.system_id))
            h = inv_t.load_host(h.name)
            if machine.status not in SETTLED:
                report.add("maas", "commission", maas.commission_machine(h, machine.system_id))
                ready = maas.wait_for_status(h, machine.system_id, "ready", settings().commission_timeout)
                report.add("maas", "wait for Ready", ready.status.label)
        except Exception as exc:
            report.outcome = f"failed (a rerun continues): {exc}"
            report.publish()
            raise
        report.outcome = f"{h.name} is {h.maas_system_id} in MAAS"
        report.publish()
        return report.outcome
