"""IPMI steps: power and boot device, each read back by the client before it returns.

The power state a step has verified goes into the inventory at once: an operator sees it, and
the next power poll does not take metalflow's own action for a change behind its back."""

from __future__ import annotations

from enum import StrEnum

from metalflow.integrations.inventory import HostInfo
from metalflow.integrations.ipmi import BmcTimeout, BmcWrongState
from metalflow.tasks import clients
from metalflow.tasks.common import logger, runbook_task
from metalflow.tasks.settings import settings


class BootFrom(StrEnum):
    """The boot devices the runbook sets (``set_boot_device``): PXE while MAAS owns the
    machine, the disk once the OS is installed. Values are the BMC client's device names."""

    PXE = "pxe"
    DISK = "disk"


def record_power(host: HostInfo, state: str) -> None:
    """Best effort: an inventory that cannot be written must not fail the power step."""
    try:
        clients.inventory().power.record(host.name, state)
    except Exception as exc:  # noqa: BLE001
        logger().warning("could not record power %s of %s in the inventory: %s", state, host.name, exc)


@runbook_task(system="ipmi", name="read-power")
def read_power(host: HostInfo) -> str:
    with clients.bmc(host) as bmc:
        state = bmc.power_state()
    record_power(host, state)
    return state


@runbook_task(system="ipmi", name="power-on")
def power_on(host: HostInfo) -> str:
    with clients.bmc(host) as bmc:
        state = bmc.power_on()
    record_power(host, state)
    return state


@runbook_task(system="ipmi", name="power-off")
def power_off(host: HostInfo) -> str:
    """Hard off (destroy, rollback): no waiting for an OS."""
    with clients.bmc(host) as bmc:
        state = bmc.power_off(soft=False)
    record_power(host, state)
    return state


@runbook_task(system="ipmi", name="shut-down")
def shut_down(host: HostInfo, soft_timeout: float | None = None) -> str:
    """Stop as an operator would: ask the OS (ACPI soft off), read back, and if it is still on
    after ``soft_timeout`` escalate to a hard power off. Returns how it went off."""
    log = logger()
    wait = soft_timeout if soft_timeout is not None else settings().stop_soft_timeout
    with clients.bmc(host) as bmc:
        if bmc.power_state() == "off":
            how = "already off"
        else:
            try:
                bmc.power_off(soft=True, deadline=wait)
                how = "soft off"
            except (BmcWrongState, BmcTimeout) as exc:
                # Still on at the deadline, or the deadline ran out while the BMC was slow to
                # answer: either way the OS had its chance. An unreachable BMC fails the hard
                # off below too, and that error is the one retried.
                log.warning(
                    "%s did not go off within %g s of the soft-off request (%s): powering off hard",
                    host.name,
                    wait,
                    type(exc).__name__,
                )
                bmc.power_off(soft=False)
                how = "hard off (soft off ignored)"
    record_power(host, "off")
    return how


@runbook_task(system="ipmi", name="reboot")
def reboot(host: HostInfo) -> str:
    """Reset when on, power on when off."""
    with clients.bmc(host) as bmc:
        state = bmc.reset()
    record_power(host, state)
    return state


@runbook_task(system="ipmi", name="set-boot-device", run_name="set-boot-device {host.name} {device}")
def set_boot_device(host: HostInfo, device: BootFrom, persistent: bool = True) -> str:
    device = BootFrom(device)
    with clients.bmc(host) as bmc:
        current = bmc.boot_device()
        if current.device == device and current.persistent == persistent:
            return f"already {device}"
        bmc.set_boot_device(device.value, persistent=persistent)
        return f"{device} ({'persistent' if persistent else 'next boot'})"
