"""IPMI steps: power and boot device, each read back by the client before it returns."""
from __future__ import annotations

from integrations.inventory import HostInfo
from integrations.ipmi import BmcWrongState
from tasks import clients
from tasks.common import logger, runbook_task
from tasks.settings import settings


@runbook_task(system="ipmi", name="read-power")
def read_power(host: HostInfo) -> str:
    with clients.bmc(host) as bmc:
        return bmc.power_state()


@runbook_task(system="ipmi", name="power-on")
def power_on(host: HostInfo) -> str:
    with clients.bmc(host) as bmc:
        return bmc.power_on()


@runbook_task(system="ipmi", name="power-off")
def power_off(host: HostInfo) -> str:
    """Hard off (destroy, rollback): no waiting for an OS."""
    with clients.bmc(host) as bmc:
        return bmc.power_off(soft=False)


@runbook_task(system="ipmi", name="shut-down")
def shut_down(host: HostInfo, soft_timeout: float | None = None) -> str:
    """Stop as an operator would: ask the OS (ACPI soft off), read back, and if it is still on
    after ``soft_timeout`` escalate to a hard power off. Returns how it went off."""
    log = logger()
    wait = soft_timeout if soft_timeout is not None else settings().stop_soft_timeout
    with clients.bmc(host) as bmc:
        if bmc.power_state() == "off":
            return "already off"
        try:
            bmc.power_off(soft=True, deadline=wait)
            return "soft off"
        except BmcWrongState:
            log.warning("%s ignored the soft-off request for %.0f s: powering off hard", host.name, wait)
        bmc.power_off(soft=False)
        return "hard off (soft off ignored)"


@runbook_task(system="ipmi", name="reboot")
def reboot(host: HostInfo) -> str:
    """Reset when on, power on when off."""
    with clients.bmc(host) as bmc:
        return bmc.reset()


@runbook_task(system="ipmi", name="set-boot-device", run_name="set-boot-device {host.name} {device}")
def set_boot_device(host: HostInfo, device: str, persistent: bool = True) -> str:
    with clients.bmc(host) as bmc:
        current = bmc.boot_device()
        if current.device == device and current.persistent == persistent:
            return f"already {device}"
        bmc.set_boot_device(device, persistent=persistent)
        return f"{device} ({'persistent' if persistent else 'next boot'})"
