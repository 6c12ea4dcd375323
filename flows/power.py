"""stop, start, reboot, status: IPMI with the state read back."""

from __future__ import annotations

from prefect import flow

from metalflow.flows.runbook import Report, host_lock, run_name
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi
from metalflow.tasks.common import logger


def _power_flow(operation: str, host: str, action) -> str:
    with host_lock(host, operation):
        h = inv_t.load_host(host)
        report = Report(operation, h.name, h.last_vm_name or "")
        try:
            result = action(h)
        except Exception as exc:
            report.add("ipmi", operation, f"FAILED: {exc}")
            report.outcome = f"failed: {exc}"
            report.publish()
            raise
        report.add("ipmi", operation, result)
        report.outcome = result
        report.publish()
        return result


@flow(name="stop", flow_run_name=run_name("stop"), log_prints=True)
def stop(host: str, soft_timeout: float | None = None) -> str:
    """ACPI soft off, read back, escalate to hard off if the OS ignores it (bounded)."""
    if soft_timeout is not None and not soft_timeout > 0:
        raise ValueError(
            f"soft_timeout: {soft_timeout!r} must be a positive number of seconds "
            "(how long the OS gets to shut down before a hard power off)"
        )
    return _power_flow("stop", host, lambda h: ipmi.shut_down(h, soft_timeout))


@flow(name="start", flow_run_name=run_name("start"), log_prints=True)
def start(host: str) -> str:
    return _power_flow("start", host, ipmi.power_on)


@flow(name="reboot", flow_run_name=run_name("reboot"), log_prints=True)
def reboot(host: str) -> str:
    return _power_flow("reboot", host, ipmi.reboot)


@flow(name="status", flow_run_name=run_name("status"), log_prints=True)
def status(host: str) -> str:
    """Read the power state from the BMC now (no lock: a read never changes anything)."""
    h = inv_t.load_host(host)
    state = ipmi.read_power(h)
    logger().info("%s is powered %s", h.name, state)
    report = Report("status", h.name, h.last_vm_name or "")
    report.add("ipmi", "read power", state)
    report.outcome = f"power {state}"
    report.publish()
    return state
