"""What the MAAS simulator needs from the physical world, and its IPMI power driver.

MAAS never decides alone that a machine booted: it powers the machine through its BMC (the
``PowerDriver``), and learns that it booted when the machine PXE-boots and asks MAAS what to
run (``MaasSim.on_netboot``, called by the lab's world model). What the running machine then
does on its own (curtin writing the disk, the installed system rebooting itself) is reported
back to the world through ``MachineHooks``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

IPMI_PORT = 623


class PowerDriver(Protocol):
    """MAAS's power driver for ``power_type=ipmi``. ``params`` are the machine's power parameters."""

    def power_on(self, params: dict) -> None:
        """Set the next boot to PXE, then power on (or reset when already on)."""

    def power_off(self, params: dict, soft: bool = False) -> None: ...

    def query(self, params: dict) -> str:
        """``'on'``, ``'off'``, ``'error'`` or ``'unknown'``; never raises."""


class MachineHooks(Protocol):
    """What the simulated hardware does when MAAS tells it something over the network."""

    def install(self, boot_mac: str, image: str) -> None:
        """Curtin wrote ``image`` (``os/release``) to the disk."""

    def wipe(self, boot_mac: str) -> None:
        """The disk was erased."""

    def reboot(self, boot_mac: str) -> None:
        """The installed system reboots itself (curtin ``power_state: reboot``), no BMC involved."""


class PowerError(RuntimeError):
    """A power action failed; the message names the BMC and the operation, never a password."""


def parse_power_address(address: str) -> tuple[str, int]:
    """``addr`` or ``addr:port`` (``[v6]:port`` too) -> (host, port), port 623 by default."""
    address = (address or "").strip()
    if not address:
        raise PowerError("no power_address in the power parameters")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    try:
        return host, int(port) if port else IPMI_PORT
    except ValueError:
        raise PowerError(f"bad port in power_address {address!r}") from None


class IpmiPowerDriver:
    """The ipmi power driver, over RMCP+ with pyghmi's client.

    Each call logs in, acts and logs out (real BMCs drop idle sessions; a fresh session per
    action is what MAAS's driver does too), with credentials as bytes (str credentials made a
    second session to the same BMC hang). Every call runs on a worker with our own hard
    deadline around it: pyghmi can stall for a long time on a silent BMC or a wrong user.
    The deadline counts from submission, so ``workers`` must stay above the number of callers
    (the simulator's phase pool has 32) or a queued call would spend its budget waiting.
    """

    def __init__(self, *, timeout: float = 10.0, workers: int = 64):
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maas-ipmi")
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def power_on(self, params: dict) -> None:
        def act(cmd: Any) -> None:
            cmd.set_bootdev("network")
            cmd.set_power("boot")  # on if off, else reset (MAAS: ipmipower --cycle --on-if-off)

        self._call(params, "power on", act)

    def power_off(self, params: dict, soft: bool = False) -> None:
        self._call(
            params, "soft power off" if soft else "power off", lambda cmd: cmd.set_power("softoff" if soft else "off")
        )

    def query(self, params: dict) -> str:
        try:
            state = self._call(params, "power query", lambda cmd: cmd.get_power()["powerstate"])
        except PowerError as exc:
            log.info("%s", exc)
            return "error"
        return state if state in ("on", "off") else "unknown"

    def _call(self, params: dict, what: str, fn: Callable[[Any], T]) -> T:
        host, port = parse_power_address(str(params.get("power_address", "")))
        user = str(params.get("power_user", "")).encode()
        password = str(params.get("power_pass", "")).encode()
        target = f"{host}:{port}"
        if self._closed.is_set():
            raise PowerError(f"ipmi {what} on {target}: driver closed")
        future = self._pool.submit(self._run, host, port, user, password, fn)
        try:
            return future.result(timeout=self.timeout)
        except FutureTimeout:
            raise PowerError(f"ipmi {what} on {target}: no answer within {self.timeout:g} s") from None
        except PowerError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyghmi raises IpmiException and plain errors alike
            raise PowerError(f"ipmi {what} on {target} failed: {exc}") from None

    @staticmethod
    def _run(host: str, port: int, user: bytes, password: bytes, fn: Callable[[Any], T]) -> T:
        from pyghmi.ipmi.command import Command  # imported late: pyghmi starts an I/O thread

        cmd = Command(bmc=host, userid=user, password=password, port=port)
        try:
            return fn(cmd)
        finally:
            try:
                cmd.ipmi_session.logout()
            except Exception:  # noqa: BLE001 - the session may already be broken
                pass
