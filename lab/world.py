"""The physical world behind the simulators: what a server does when its BMC powers it.

The BMC simulator owns power and boot device; the switch simulator owns port VLANs; the MAAS
simulator owns the node state machine. This model joins them the way real hardware does:

- a power-on or reset boots the server from its effective boot device (the BMC tells);
- a PXE boot reaches MAAS only if at least one cabled port is *untagged* in the PXE VLAN on
  its switch at that moment (DHCP and TFTP are untagged on the provisioning network); MAAS
  then answers what to run (commissioning, deployment, erasure, or "boot from local disk");
  without the PXE VLAN the PXE ROM gets no offer and the server hangs there, so MAAS's phase
  fails by its own node timeout, as on real hardware;
- a disk boot starts the installed image, if curtin wrote one;
- there is no fallback from PXE to disk: after deploy the server boots its OS from disk only
  if the boot device says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metalflow.lab.scheduler import Scheduler
from metalflow.lab.spec import HostSpec, LabSpec

log = logging.getLogger(__name__)

# What a powered server is doing, as an operator at its console would see it.
OFF = "off"
NO_DHCP = "pxe: no DHCP offer"
NO_DISK = "no bootable disk"
PXE_IDLE = "pxe: nothing to boot"
# With no boot device set, the firmware's own order runs: network first, as MAAS expects of
# the machines it manages.
FIRMWARE_ORDER_FIRST = "pxe"


@dataclass
class HostModel:
    spec: HostSpec
    running: str = OFF  # OFF, "ephemeral:<phase>", "os:<image>", NO_DHCP, NO_DISK, PXE_IDLE
    disk_image: str | None = None
    boots: int = 0
    history: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.running = what
        self.history.append((time.time(), what))
        del self.history[:-20]


class World:
    """Joins BMC events, switch port state and MAAS into one coherent physical lab."""

    def __init__(self, spec: LabSpec):
        self.spec = spec
        self.hosts = {h.name: HostModel(h) for h in spec.hosts}
        self._by_mac = {nic.mac: self.hosts[h.name] for h in spec.hosts for nic in h.nics}
        self._lock = threading.Lock()
        self._sched = Scheduler("lab-world")
        self.maas: Any = None
        self.bmcs: Any = None
        self.switches: dict[str, Any] = {}

    def attach(self, *, maas: Any, bmcs: Any, switches: dict[str, Any]) -> None:
        self.maas, self.bmcs, self.switches = maas, bmcs, switches

    def stop(self) -> None:
        self._sched.stop()

    # --- BMC side -------------------------------------------------------------------------
    def on_bmc_event(self, event: Any) -> None:
        """Called on the BMC fleet's event thread for every power transition."""
        host = self.hosts.get(event.host)
        if host is None:
            return
        if event.kind == "power_off":
            with self._lock:
                host.note(OFF)
            if self.maas is not None:
                self.maas.on_power_lost(list(host.spec.macs))  # an installer that was running is gone
            return
        if event.kind in ("power_on", "reset"):
            bootdev = event.bootdev
            self._sched.call_later(self.spec.timing.boot, lambda: self._boot(host, bootdev))

    def _boot(self, host: HostModel, bootdev: str) -> None:
        if self.bmcs is not None and self.bmcs.state(host.spec.name).power != "on":
            return  # switched off again before it got anywhere
        with self._lock:
            host.boots += 1
        if bootdev in ("none", "default", "firmware"):
            bootdev = FIRMWARE_ORDER_FIRST
        if bootdev in ("pxe", "network"):
            self._pxe_boot(host)
        elif bootdev in ("disk", "hd"):
            self._disk_boot(host)
        else:
            with self._lock:
                host.note(f"booted {bootdev}: nothing there")

    def _pxe_boot(self, host: HostModel) -> None:
        mac = self.pxe_mac(host)
        if mac is None:
            with self._lock:
                host.note(NO_DHCP)
            log.info("%s: PXE boot, no cabled port in the PXE VLAN", host.spec.name)
            return
        hardware = {
            "macs": list(host.spec.macs),
            "cpu_count": host.spec.cpu_count,
            "memory": host.spec.memory_mb,
            "arch": host.spec.arch,
        }
        answer = self.maas.on_netboot(mac, hardware) if self.maas is not None else None
        if answer == "local":
            self._disk_boot(host)
        elif answer:
            with self._lock:
                host.note(f"ephemeral:{answer}")
        else:
            with self._lock:
                host.note(PXE_IDLE)

    def _disk_boot(self, host: HostModel) -> None:
        with self._lock:
            host.note(f"os:{host.disk_image}" if host.disk_image else NO_DISK)

    # --- switch side ----------------------------------------------------------------------
    def pxe_mac(self, host: HostModel) -> str | None:
        """The MAC of the first NIC whose port is untagged in the PXE VLAN, if any."""
        pxe = self.spec.maas.pxe_vlan
        for nic in host.spec.nics:
            sw = self.switches.get(nic.switch)
            if sw is not None and sw.port_vlans(nic.port).untagged == pxe:
                return nic.mac
        return None

    # --- what MAAS tells the hardware (MachineHooks) ----------------------------------------
    def _host_for(self, mac: str) -> HostModel | None:
        return self._by_mac.get(mac.lower())

    def install(self, boot_mac: str, image: str) -> None:
        host = self._host_for(boot_mac)
        if host is not None:
            with self._lock:
                host.disk_image = image

    def wipe(self, boot_mac: str) -> None:
        host = self._host_for(boot_mac)
        if host is not None:
            with self._lock:
                host.disk_image = None

    def reboot(self, boot_mac: str) -> None:
        """The installed system reboots itself (curtin's ``power_state: reboot``): no BMC
        command, but the firmware still boots from the BMC's current boot device."""
        host = self._host_for(boot_mac)
        if host is None or self.bmcs is None:
            return
        st = self.bmcs.state(host.spec.name)
        if st.power != "on":
            return
        bootdev = st.override or st.bootdev
        self._sched.call_later(self.spec.timing.boot, lambda: self._boot(host, bootdev))

    # --- reading it all -----------------------------------------------------------------------
    def host_state(self, name: str) -> dict:
        host = self.hosts[name]
        with self._lock:
            # The last 20 things the console showed: a phase shorter than a poll interval
            # (commissioning takes 0.5 s in tests) is still visible afterwards.
            history = [{"at": at, "running": what} for at, what in host.history]
        out: dict = {
            "name": name,
            "running": host.running,
            "disk_image": host.disk_image,
            "boots": host.boots,
            "history": history,
        }
        if self.bmcs is not None:
            st = self.bmcs.state(name)
            out.update(
                power=st.power, bootdev=st.bootdev, persistent=st.persistent, override=st.override, bmc_fault=st.fault
            )
        ports = []
        for nic in host.spec.nics:
            sw = self.switches.get(nic.switch)
            pv = sw.port_vlans(nic.port) if sw is not None else None
            ports.append(
                {
                    "mac": nic.mac,
                    "switch": nic.switch,
                    "port": nic.port,
                    "untagged": pv.untagged if pv else None,
                    "tagged": sorted(pv.tagged) if pv else [],
                }
            )
        out["ports"] = ports
        return out


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (for lab start-up checks)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
