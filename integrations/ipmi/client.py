"""``BmcClient``: the power interface of one BMC, after Ironic's, with deadlines everywhere.

- ``validate()`` checks address, port and credentials offline; every network method runs it
  first, so bad input fails before a packet leaves.
- A power change reads the state, does nothing when it already holds, sends the command, then
  polls with backoff until the observed state matches or the deadline passes. A soft off that
  the OS ignores ends in ``BmcWrongState`` at the deadline: the caller (the stop flow) decides
  to escalate to a hard off. Reset works from off (it powers on).
- Setting the boot device is verified by reading it back.
- Each pyghmi call gets ``min(call_timeout, what is left of the operation's deadline)`` and
  runs behind our own hard deadline (``guard.CallGuard``), the BMC's one guard from the
  ``CallGuards`` the caller passes (the process's: ``tasks`` keeps it in the runtime).
- The pyghmi shim (``shim.patch_pyghmi``) is the process's business, applied once when it
  starts (``tasks``' runtime, the engine's workers, a test's fixture), not by the first client:
  a client only reads it. Without it pyghmi still works, with its stalls and deadlock (see
  ``shim``); that is also what an unchecked pyghmi version gets, so it is not an error.
- ``min_gap`` spaces commands to this BMC (small BMCs fall over when hammered); the time of
  the last command lives in the client object.
- Only ``BmcBusy`` (the BMC said "not now", so the command was not executed) is retried
  inside an operation; while polling, transient read errors just mean "no reading yet".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from metalflow.integrations.common import Backoff, Clock, Deadline, DeadlineExceeded, MonotonicClock, Secret, retry
from metalflow.integrations.ipmi.errors import BmcBusy, BmcInvalidInput, BmcTimeout, BmcUnreachable, BmcWrongState
from metalflow.integrations.ipmi.guard import CallGuards
from metalflow.integrations.ipmi.validate import check_address, check_password, check_port, check_username
from metalflow.integrations.ipmi.wire import BOOT_DEVICE_CODE, BootDevice, Link, PyghmiLink

log = logging.getLogger(__name__)

T = TypeVar("T")

BOOT_DEVICES = tuple(BOOT_DEVICE_CODE)  # ('pxe', 'disk')


class BmcClient:
    """One BMC. Not thread-safe for concurrent operations (use one client per task); each call
    is bounded in time whatever the BMC does."""

    #: polling after a power command: first wait, growth factor, longest wait (seconds)
    poll_interval = 0.25
    poll_factor = 1.6
    poll_max_interval = 4.0
    #: retries of a command the BMC answered "busy"
    busy_backoff = Backoff(first=0.5, factor=2.0, cap=4.0, attempts=4)

    def __init__(
        self,
        address: str,
        username: str,
        password: str | bytes | Secret,
        port: int = 623,
        *,
        call_timeout: float = 10.0,
        min_gap: float = 0.0,
        clock: Clock | None = None,
        link: Link | None = None,
        guards: CallGuards | None = None,
    ):
        """``guards``: the process's call guards, so that all clients of one BMC share its
        guard (pyghmi's session tables are process-wide); without it the client has its own,
        which is only right when nothing else in the process talks to that BMC. ``link``
        replaces the pyghmi wire (tests with a fake clock use it; nothing else should)."""
        self.address = address
        self.port = port
        self.username = username
        self._password = Secret(password) if isinstance(password, (str, bytes)) else password
        self.call_timeout = call_timeout
        self.min_gap = min_gap
        self._clock: Clock = clock or MonotonicClock()
        self._link = link
        self._guards = guards
        self._validated = False
        self._last_command: float | None = None  # clock time of the last command sent

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def __repr__(self) -> str:
        return f"BmcClient(address={self.address!r}, port={self.port!r}, username={self.username!r})"

    def __enter__(self) -> BmcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- offline ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``BmcInvalidInput`` naming the field when the address, port, credentials or
        timeouts cannot work. Never touches the BMC."""
        target = self.target if isinstance(self.address, str) else ""
        check_address(self.address, target)
        check_port(self.port, target)
        check_username(self.username, target)
        self._password = check_password(self._password, target)
        if not isinstance(self.call_timeout, (int, float)) or self.call_timeout <= 0:
            raise BmcInvalidInput(
                "call_timeout: must be a positive number of seconds", target=target, operation="validate"
            )
        if not isinstance(self.min_gap, (int, float)) or self.min_gap < 0:
            raise BmcInvalidInput(
                "min_gap: must be zero or a positive number of seconds", target=target, operation="validate"
            )
        self._validated = True

    # -- reads ------------------------------------------------------------------------------
    def power_state(self) -> str:
        """``'on'`` or ``'off'``, as the BMC reports it now."""
        return self._read_power(Deadline(self.call_timeout, clock=self._clock), "power_state")

    def boot_device(self) -> BootDevice:
        """The boot device override the BMC holds (``default`` when none)."""
        d = Deadline(self.call_timeout, clock=self._clock)
        return self._call(d, "boot_device", lambda link, t: link.get_boot(timeout=t, operation="boot_device"))

    # -- power ------------------------------------------------------------------------------
    def power_on(self, deadline: float = 60) -> str:
        """Power on and wait until the BMC reports 'on'; nothing is sent when it already is."""
        d = Deadline(deadline, clock=self._clock)
        if self._read_power(d, "power_on") == "on":
            return "on"
        self._control("on", d, "power_on")
        return self._await_power("on", d, "power_on")

    def power_off(self, soft: bool = False, deadline: float = 60) -> str:
        """Hard off, or with ``soft`` an ACPI shutdown request; ``BmcWrongState`` if the machine
        is still on at the deadline (an OS may ignore a soft-off request)."""
        operation = "soft_power_off" if soft else "power_off"
        d = Deadline(deadline, clock=self._clock)
        if self._read_power(d, operation) == "off":
            return "off"
        self._control("soft" if soft else "off", d, operation)
        hint = "the OS did not honour the soft-off request; escalate to a hard power off" if soft else ""
        return self._await_power("off", d, operation, hint=hint)

    def reset(self, deadline: float = 60) -> str:
        """Reboot: a hard reset when on, power on when off. Verified by reading 'on' back (a
        reset itself is not visible in the chassis status)."""
        d = Deadline(deadline, clock=self._clock)
        was = self._read_power(d, "reset")
        self._control("reset" if was == "on" else "on", d, "reset")
        return self._await_power("on", d, "reset")

    # -- boot device ------------------------------------------------------------------------
    def set_boot_device(self, device: str, persistent: bool = False) -> None:
        """Boot from ``device`` ('pxe' or 'disk') at the next boot, or at every boot with
        ``persistent``; read back, and ``BmcWrongState`` if the BMC reports anything else."""
        if device not in BOOT_DEVICES:
            raise BmcInvalidInput(
                f"device: {device!r} is not one of {', '.join(BOOT_DEVICES)}",
                target=self.target,
                operation="set_boot_device",
            )
        persistent = bool(persistent)
        d = Deadline(3 * self.call_timeout, clock=self._clock)
        self._call(
            d,
            "set_boot_device",
            lambda link, t: link.set_boot(device, persistent, timeout=t, operation="set_boot_device"),
            retry_busy=True,
        )
        seen = self._call(d, "set_boot_device", lambda link, t: link.get_boot(timeout=t, operation="set_boot_device"))
        if seen != BootDevice(device, persistent):
            raise BmcWrongState(
                "the boot device did not stick",
                target=self.target,
                operation="set_boot_device",
                evidence=f"asked {device} {'persistent' if persistent else 'next boot'}, BMC reports "
                f"{seen.device} {'persistent' if seen.persistent else 'next boot'}",
            )
        log.info("boot device of %s set to %s (%s)", self.target, device, "persistent" if persistent else "next boot")

    def close(self) -> None:
        """Log out of the BMC session (bounded, never raises). The client stays usable."""
        if self._link is not None:
            self._link.close()

    # -- mechanics --------------------------------------------------------------------------
    def _ensure_link(self) -> Link:
        if not self._validated:
            self.validate()
        if self._link is None:
            guards = self._guards if self._guards is not None else CallGuards()
            self._link = PyghmiLink(self.address, self.port, check_username(self.username), self._password, guards)
        return self._link

    def _pace(self, d: Deadline, operation: str) -> None:
        """Keep ``min_gap`` between two commands to this BMC."""
        if self.min_gap and self._last_command is not None:
            wait = self._last_command + self.min_gap - self._clock.now()
            if wait > d.remaining():
                raise BmcTimeout(
                    "no time left for the minimum gap between commands",
                    target=self.target,
                    operation=operation,
                    evidence=f"min_gap {self.min_gap} s",
                )
            if wait > 0:
                self._clock.sleep(wait)
        self._last_command = self._clock.now()

    def _call(self, d: Deadline, operation: str, fn: Callable[[Link, float], T], *, retry_busy: bool = False) -> T:
        link = self._ensure_link()

        def once() -> T:
            self._pace(d, operation)
            timeout = d.cap(self.call_timeout)
            if timeout <= 0:
                raise BmcTimeout(
                    "the deadline was spent before the call",
                    target=self.target,
                    operation=operation,
                    evidence=f"deadline {d.seconds:.1f} s",
                )
            return fn(link, timeout)

        if not retry_busy:
            return once()
        return retry(
            once,
            transient=lambda e: 0.0 if isinstance(e, BmcBusy) else None,
            deadline=d,
            backoff=self.busy_backoff,
            on_retry=lambda n, e, s: log.info("%s busy during %s, retry %d in %.1f s", self.target, operation, n, s),
        )

    def _read_power(self, d: Deadline, operation: str) -> str:
        on = self._call(d, operation, lambda link, t: link.power_is_on(timeout=t, operation=operation), retry_busy=True)
        return "on" if on else "off"

    def _control(self, action: str, d: Deadline, operation: str) -> None:
        log.info("chassis %s on %s", action, self.target)
        self._call(
            d, operation, lambda link, t: link.chassis_control(action, timeout=t, operation=operation), retry_busy=True
        )

    def _await_power(self, want: str, d: Deadline, operation: str, hint: str = "") -> str:
        """Poll with backoff until the power state is ``want``; transient read errors count as
        "no reading yet". At the deadline: ``BmcWrongState`` with the last state seen, or the
        last error when nothing was read."""
        errors: list[BaseException] = []
        seen: list[str] = []

        def probe() -> str | None:
            try:
                seen.append(self._read_power(d, operation))
                return seen[-1]
            except (BmcUnreachable, BmcBusy) as exc:
                errors.append(exc)
                return None

        try:
            d.wait_for(
                probe,
                lambda v: v == want,
                what=f"{operation} on {self.target}",
                interval=self.poll_interval,
                max_interval=self.poll_max_interval,
                factor=self.poll_factor,
            )
            return want  # the only reading the wait accepts
        except DeadlineExceeded:
            if not seen and errors:
                raise errors[-1] from None
            raise BmcWrongState(
                f"the machine is still {seen[-1] if seen else 'unknown'} after {d.seconds:g} s, expected {want}",
                target=self.target,
                operation=operation,
                evidence=hint,
            ) from None
