"""stop, start, reboot, status: IPMI with the state read back."""

from __future__ import annotations

from prefect import Task, flow

from metalflow.flows.models import HostRef
from metalflow.flows.runbook import Runbook, host_lock, run_name
from metalflow.integrations.inventory import HostInfo
from metalflow.tasks import ipmi
from metalflow.tasks.common import logger


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
def start(host: HostRef) -> str:
    return _power_flow("start", host, ipmi.power_on)


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
