"""The wire layer: four IPMI chassis commands over one pyghmi session, each behind our deadline.

We send raw IPMI requests through ``pyghmi.ipmi.command.Command.raw_command`` instead of its
helpers (``get_power``, ``set_power``): the helpers first probe the BMC's vendor (Get Device
ID plus OEM handlers that may open HTTPS sessions), which costs a round trip and brings
vendor code paths we do not need; raw requests also give us the completion code, which is
what ``errors.error_for_code`` classifies. The bytes are the ones IPMI 2.0 defines (and that
pyghmi's helpers send):

- Get Chassis Status, NetFn 0x00 Cmd 0x01: data[0] bit 0 is "power is on";
- Chassis Control, NetFn 0x00 Cmd 0x02, one byte: 0 off, 1 on, 2 cycle, 3 hard reset,
  5 soft off (ACPI);
- Set System Boot Options, NetFn 0x00 Cmd 0x08, parameter 5 (boot flags): flags byte (bit 7
  valid, bit 6 persistent), device byte (bits 5..2: 1 PXE, 2 disk);
- Get System Boot Options, NetFn 0x00 Cmd 0x09, (5, 0, 0): version, parameter, flags, device.

Sessions. pyghmi keeps sessions in a process-wide table keyed by BMC and credentials, so a new
``Command`` with the same (bytes!) credentials reuses a live session. A link keeps the last
``Command`` while it is fresh, and logs its session out (one fire-and-forget packet) when it
has idled past ``REUSE_IDLE`` seconds (pyghmi sends keepalives only from inside calls; real
BMCs drop idle sessions after about 60 s), after a failure, and on ``close()``: sessions are
never left for the BMC to time out, and a long-lived client never accumulates them. Two
links to one BMC with the same credentials in one process share pyghmi's session: when one
logs it out, the other logs in again on its next call (after one transient error at worst).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from metalflow.integrations.common import Secret
from metalflow.integrations.ipmi.errors import (
    PYGHMI_TIMEOUT_CODE,
    BmcInvalidInput,
    BmcUnreachable,
    IpmiError,
    classify,
    classify_text,
    error_for_code,
    scrub,
)
from metalflow.integrations.ipmi.guard import CallGuard, CallGuards

log = logging.getLogger(__name__)

T = TypeVar("T")

NETFN_CHASSIS = 0x00
CMD_GET_CHASSIS_STATUS = 0x01
CMD_CHASSIS_CONTROL = 0x02
CMD_SET_BOOT_OPTIONS = 0x08
CMD_GET_BOOT_OPTIONS = 0x09
BOOT_PARAM_INFO_ACK = 3
BOOT_PARAM_FLAGS = 5
CC_PARAM_NOT_SUPPORTED = 0x80

CHASSIS_CONTROL = MappingProxyType({"off": 0, "on": 1, "cycle": 2, "reset": 3, "soft": 5})
# Boot device selector (boot flags data 2, bits 5..2) by our name, and back.
BOOT_DEVICE_CODE = MappingProxyType({"pxe": 0x04, "disk": 0x08})
BOOT_DEVICE_NAME = MappingProxyType({1: "pxe", 2: "disk", 3: "disk-safe", 5: "optical", 6: "setup", 15: "floppy"})


@dataclass(frozen=True)
class BootDevice:
    """The boot device override a BMC reports: ``device`` is ``pxe``, ``disk`` (or another
    firmware device name), or ``default`` when no override is set; ``persistent`` False means
    the override applies to the next boot only."""

    device: str
    persistent: bool


def parse_boot_options(data: bytes, *, target: str = "", operation: str = "boot_device") -> BootDevice:
    """Parse a Get System Boot Options (parameter 5) answer, completion code removed."""
    if len(data) < 4 or (data[1] & 0x7F) != BOOT_PARAM_FLAGS:
        raise IpmiError(
            "malformed boot options answer", target=target, operation=operation, evidence=f"data {bytes(data).hex()}"
        )
    flags, device = data[2], data[3]
    if data[1] & 0x80 or not flags & 0x80:  # parameter invalid/locked, or no valid override
        return BootDevice("default", False)
    selector = (device >> 2) & 0x0F
    name = "default" if selector == 0 else BOOT_DEVICE_NAME.get(selector, f"0x{selector:x}")
    return BootDevice(name, bool(flags & 0x40))


class Link(Protocol):
    """What ``BmcClient`` needs from the wire. Every call takes the real seconds it may use."""

    def power_is_on(self, *, timeout: float, operation: str) -> bool: ...

    def chassis_control(self, action: str, *, timeout: float, operation: str) -> None: ...

    def get_boot(self, *, timeout: float, operation: str) -> BootDevice: ...

    def set_boot(self, device: str, persistent: bool, *, timeout: float, operation: str) -> None: ...

    def close(self) -> None: ...


class PyghmiLink:
    """One BMC over pyghmi, with every call behind the BMC's ``CallGuard`` from ``guards``
    (the process's registry: one guard per BMC, whoever the client)."""

    REUSE_IDLE = 20.0  # seconds a session may idle before we log it out and open a new one
    CLOSE_TIMEOUT = 2.0

    def __init__(self, address: str, port: int, username: bytes, password: Secret, guards: CallGuards):
        self.target = f"{address}:{port}"
        self._address = address
        self._port = port
        self._username = username
        self._password = password
        self._guards = guards
        self._guard = guards.of(self.target)
        self._command: Any = None  # pyghmi Command, touched only from guarded helper threads
        self._last_ok = 0.0
        self._stale = False  # set when a call was abandoned: its session is not to be trusted

    def __repr__(self) -> str:
        return f"PyghmiLink({self.target!r})"

    @property
    def guard(self) -> CallGuard:
        """This BMC's guard; a fresh one from the registry if it pruned ours while we idled."""
        if self._guard.retired:
            self._guard = self._guards.of(self.target)
        return self._guard

    # -- the four commands ------------------------------------------------------------------
    def power_is_on(self, *, timeout: float, operation: str) -> bool:
        data = self._raw(NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, (), timeout=timeout, operation=operation)
        if not data:
            raise IpmiError("empty chassis status answer", target=self.target, operation=operation)
        return bool(data[0] & 0x01)

    def chassis_control(self, action: str, *, timeout: float, operation: str) -> None:
        if action not in CHASSIS_CONTROL:
            raise BmcInvalidInput(f"unknown chassis action {action!r}", target=self.target, operation=operation)
        self._raw(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, (CHASSIS_CONTROL[action],), timeout=timeout, operation=operation)

    def get_boot(self, *, timeout: float, operation: str) -> BootDevice:
        data = self._raw(
            NETFN_CHASSIS, CMD_GET_BOOT_OPTIONS, (BOOT_PARAM_FLAGS, 0, 0), timeout=timeout, operation=operation
        )
        return parse_boot_options(data, target=self.target, operation=operation)

    def set_boot(self, device: str, persistent: bool, *, timeout: float, operation: str) -> None:
        if device not in BOOT_DEVICE_CODE:
            raise BmcInvalidInput(f"unknown boot device {device!r}", target=self.target, operation=operation)
        flags = 0x80 | (0x40 if persistent else 0)

        def call() -> None:
            # Acknowledge boot info first, as ipmitool and pyghmi do; a BMC that does not know
            # the parameter (completion code 0x80) still takes the boot flags.
            self._exchange(
                NETFN_CHASSIS,
                CMD_SET_BOOT_OPTIONS,
                (BOOT_PARAM_INFO_ACK, 0x08),
                operation,
                tolerate=(CC_PARAM_NOT_SUPPORTED,),
            )
            self._exchange(
                NETFN_CHASSIS,
                CMD_SET_BOOT_OPTIONS,
                (BOOT_PARAM_FLAGS, flags, BOOT_DEVICE_CODE[device], 0, 0, 0),
                operation,
            )

        self._guarded(call, timeout=timeout, operation=operation)

    def close(self) -> None:
        """Log the session out (bounded by ``CLOSE_TIMEOUT``); never raises. With a call still
        stuck in pyghmi there is nothing to log out yet: that call ends on its own and its
        session is dropped by pyghmi when it fails (or idles out on the BMC if it succeeds)."""
        guard = self.guard
        if self._command is None or guard.busy():
            return
        try:
            guard.run(self._drop, timeout=self.CLOSE_TIMEOUT, operation="close")
        except IpmiError as exc:
            log.debug("closing %s: %s", self.target, exc)

    # -- mechanics --------------------------------------------------------------------------
    def _raw(self, netfn: int, command: int, data: tuple[int, ...], *, timeout: float, operation: str) -> bytes:
        return self._guarded(
            lambda: self._exchange(netfn, command, data, operation), timeout=timeout, operation=operation
        )

    def _guarded(self, call: Callable[[], T], *, timeout: float, operation: str) -> T:
        try:
            return self.guard.run(call, timeout=timeout, operation=operation)
        except BmcUnreachable:
            self._stale = True  # a timed-out or dropped session is not reused
            raise

    def _exchange(
        self, netfn: int, command: int, data: tuple[int, ...], operation: str, tolerate: tuple[int, ...] = ()
    ) -> bytes:
        """One request and its answer; runs in the guard's helper thread."""
        cmd = self._session(operation)
        try:
            rsp = cmd.raw_command(netfn=netfn, command=command, data=data)
        except Exception as exc:  # noqa: BLE001 - classified
            self._drop()
            raise classify(exc, target=self.target, operation=operation, password=self._password) from None
        code = rsp.get("code", 0)
        if "error" in rsp or code:
            if code in tolerate:
                return b""
            if code and code != PYGHMI_TIMEOUT_CODE:  # the BMC answered: the session is fine
                self._last_ok = time.monotonic()
                raise error_for_code(code, target=self.target, operation=operation, text=str(rsp.get("error", "")))
            self._drop()
            if code:
                raise error_for_code(code, target=self.target, operation=operation)
            raise classify_text(scrub(str(rsp["error"]), self._password), target=self.target, operation=operation)
        self._last_ok = time.monotonic()
        return bytes(rsp.get("data", b""))

    def _session(self, operation: str) -> Any:
        """The current pyghmi ``Command``, a fresh one after a failure or a long idle."""
        if self._command is not None and (self._stale or time.monotonic() - self._last_ok > self.REUSE_IDLE):
            self._drop()
        self._stale = False
        if self._command is None:
            from pyghmi.ipmi.command import Command

            for attempt in (1, 2):
                try:
                    # Bytes, not str: pyghmi compares credentials to find a live session to
                    # reuse, and with str a second Command to the same BMC hung.
                    self._command = Command(
                        bmc=self._address,
                        userid=self._username,
                        password=self._password.reveal_bytes(),
                        port=self._port,
                    )
                    break
                except AttributeError as exc:
                    # When another thread handles our failed login, pyghmi can mark the session
                    # broken before storing why ("no attribute 'errormsg'"): ask once more to
                    # learn the reason (a wrong password answers at once).
                    if attempt == 2 or "errormsg" not in str(exc):
                        raise classify(exc, target=self.target, operation=operation, password=self._password) from None
                except Exception as exc:  # noqa: BLE001 - classified
                    raise classify(exc, target=self.target, operation=operation, password=self._password) from None
            self._last_ok = time.monotonic()
        return self._command

    def _drop(self) -> None:
        """Forget the session, logging it out if pyghmi still thinks it is alive."""
        cmd, self._command = self._command, None
        session = getattr(cmd, "ipmi_session", None)
        if session is not None and getattr(session, "logged", False) and not getattr(session, "broken", True):
            try:
                session.logout()  # one Close Session packet, pyghmi does not wait for the answer
            except Exception as exc:  # noqa: BLE001 - best effort
                log.debug("logout from %s failed: %s", self.target, type(exc).__name__)
