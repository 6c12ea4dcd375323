"""The physical server behind a simulated BMC: power, boot device, soft-off, faults.

Pure logic, no sockets: the wire layer calls these methods and the machine reports every
power transition through ``emit``. Timers come from an injected ``schedule`` so the logic
is tested without an event loop.

Boot model: a persistent default device (``pxe`` at first: MAAS-managed servers boot from
the network) and an optional next-boot override. Every boot (power on, reset, power cycle,
from off or on) consumes the override. Event choices (documented for the world model):

- power on from off, and reset or power cycle *from off*: one ``power_on`` event;
- reset or power cycle *from on*: one ``reset`` event (the machine restarts; no separate
  ``power_off``);
- power off (hard, soft-off honoured, or the button): one ``power_off`` event, whose
  ``bootdev`` is the device the next boot would use (nothing is consumed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

FAULT_MODES = ("none", "silent", "slow", "ignore_soft_off", "reject_auth")

# Boot device selector of the "boot flags" parameter (IPMI 2.0 table 28-14, data 2 bits 5:2),
# already shifted into place. Names are what BmcState and BmcEvent carry.
BOOT_DEVICE_CODES: dict[str, int] = {
    "none": 0x00,  # no override: the firmware's own order
    "pxe": 0x04,
    "disk": 0x08,
    "safe": 0x0C,  # default hard drive, safe mode
    "diag": 0x10,
    "cdrom": 0x14,
    "bios": 0x18,  # BIOS setup
    "remote_floppy": 0x1C,
    "remote_cdrom": 0x20,
    "remote_media": 0x24,
    "remote_disk": 0x2C,
    "floppy": 0x3C,  # primary removable media
}
BOOT_DEVICE_NAMES: dict[int, str] = {code: name for name, code in BOOT_DEVICE_CODES.items()}


@dataclass(frozen=True)
class BmcState:
    """A BMC's view of its server. ``bootdev`` is what the next boot uses; ``persistent`` is
    True when that comes from the persistent default (no next-boot override is pending)."""

    power: str  # "on" | "off"
    bootdev: str
    persistent: bool
    override: str | None
    fault: str


@dataclass(frozen=True)
class BmcEvent:
    """A power transition. ``at`` is wall-clock time (``time.time()``) in the BMC process."""

    host: str
    kind: str  # "power_on" | "power_off" | "reset"
    bootdev: str
    at: float


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


Schedule = Callable[[float, Callable[[], None]], Cancellable]


class Machine:
    """One server: power state, boot flags and fault mode, owned by its BMC's process."""

    def __init__(
        self,
        host: str,
        *,
        soft_off_delay: float,
        emit: Callable[[str, str], None],
        schedule: Schedule,
        default_boot: str = "pxe",
    ) -> None:
        self.host = host
        self.soft_off_delay = soft_off_delay
        self._emit = emit
        self._schedule = schedule
        self.powered = False
        self.default_boot = default_boot
        self.override: str | None = None
        self.efi = False
        self.fault = "none"
        self.fault_delay = 0.0
        self.last_power_by_ipmi = False
        self._soft_off: Cancellable | None = None

    # -- boot device --------------------------------------------------------------------------
    @property
    def next_boot(self) -> str:
        return self.override if self.override is not None else self.default_boot

    def set_boot_flags(self, valid: bool, persistent: bool, device: str, efi: bool) -> None:
        """Apply a "boot flags" write. Not valid: drop the pending override. Persistent: the
        device becomes the default (``none``: the firmware's order). Otherwise the device is a
        one-shot override (``none`` clears it)."""
        self.efi = efi
        if not valid:
            self.override = None
        elif persistent:
            self.default_boot = device
            self.override = None
        else:
            self.override = None if device == "none" else device

    def _consume_boot(self) -> str:
        device = self.next_boot
        self.override = None
        return device

    # -- power --------------------------------------------------------------------------------
    def power_on(self, by_ipmi: bool = True) -> None:
        if self.powered:
            return
        self._cancel_soft_off()
        self.powered = True
        self.last_power_by_ipmi = by_ipmi
        self._emit("power_on", self._consume_boot())

    def power_off(self, by_ipmi: bool = True) -> None:
        if not self.powered:
            return
        self._cancel_soft_off()
        self.powered = False
        self.last_power_by_ipmi = by_ipmi
        self._emit("power_off", self.next_boot)

    def reset(self) -> None:
        """Hard reset or power cycle: a reboot when on, a plain power on when off."""
        if not self.powered:
            self.power_on()
            return
        self._cancel_soft_off()
        self.last_power_by_ipmi = True
        self._emit("reset", self._consume_boot())

    def soft_off(self) -> None:
        """ACPI shutdown request: the OS powers off after ``soft_off_delay`` unless it ignores
        the request (fault ``ignore_soft_off``). A second request while one is pending, or a
        request to an off machine, does nothing."""
        if not self.powered or self.fault == "ignore_soft_off" or self._soft_off is not None:
            return
        self._soft_off = self._schedule(self.soft_off_delay, self._soft_off_done)

    def _soft_off_done(self) -> None:
        self._soft_off = None
        if self.fault != "ignore_soft_off":
            self.power_off()

    def _cancel_soft_off(self) -> None:
        if self._soft_off is not None:
            self._soft_off.cancel()
            self._soft_off = None

    # -- faults and views ---------------------------------------------------------------------
    def set_fault(self, mode: str, delay: float = 0.0) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown BMC fault mode {mode!r} for {self.host}; one of {FAULT_MODES}")
        if delay < 0:
            raise ValueError(f"BMC fault delay must be >= 0 for {self.host}, got {delay}")
        self.fault = mode
        self.fault_delay = delay

    def state(self) -> BmcState:
        return BmcState(
            power="on" if self.powered else "off",
            bootdev=self.next_boot,
            persistent=self.override is None,
            override=self.override,
            fault=self.fault,
        )
