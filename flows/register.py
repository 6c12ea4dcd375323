"""register-host (CloudStack "add host"): MAAS adopts the machine by its boot MAC, or it is
enlisted with IPMI power and commissioned until Ready. Removing a host never deletes it from
MAAS. Idempotent: a rerun finds the machine and waits, or does nothing."""

from __future__ import annotations

from prefect import flow

from metalflow.flows.models import HostRef
from metalflow.flows.provision import idle_name, status_of
from metalflow.flows.runbook import Runbook, Shown, host_lock, run_name
from metalflow.integrations.maas import Machine, NodeStatus
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import maas, switches
from metalflow.tasks.inventory import PortState
from metalflow.tasks.maas import WaitFor
from metalflow.tasks.settings import settings

S = NodeStatus
SETTLED = (S.READY, S.ALLOCATED, S.DEPLOYING, S.DEPLOYED)


@flow(name="register-host", flow_run_name=run_name("register-host"), log_prints=True)
def register_host(host: HostRef) -> str:
    with host_lock(host, "register-host"), Runbook("register-host", host, failed="failed (a rerun continues)") as rb:
        h = rb.load_host(host)
        if h.last_vm_uuid:
            # A host that carries a VM is registered again (CloudStack re-adds it, an
            # operator reruns): its ports carry the guest network; PXE would cut the VM off.
            rb.note("switch", "ports left alone", f"{h.name} carries VM {h.last_vm_name or h.last_vm_uuid}")
        else:
            # Commissioning PXE-boots: the cabled ports must be on the provisioning network.
            rb.step(
                "PXE VLAN on every cabled port",
                switches.converge_ports,
                h,
                rb.run(inv_t.want_ports, h, PortState.PXE),
            )
        machine = rb.step(Shown("adopt or enlist", adopted), maas.find_or_create_machine, h, idle_name(h))
        rb.step("record system_id", inv_t.record_system_id, h, machine.system_id)
        h = rb.load_host(h.name)
        if machine.status not in SETTLED:
            rb.step("commission", maas.commission_machine, h, machine.system_id)
            rb.step(
                Shown("wait for Ready", status_of),
                maas.wait_for_status,
                h,
                machine.system_id,
                WaitFor.READY,
                settings().commission_timeout,
            )
        rb.outcome = f"{h.name} is {h.maas_system_id} in MAAS"
        return rb.outcome


def adopted(m: Machine) -> str:
    """The machine MAAS adopted or enlisted, in the report: ``abc123 (Ready)``."""
    return f"{m.system_id} ({m.status.label})"
