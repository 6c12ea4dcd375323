"""Many simulated BMCs served by a few child processes, driven from the lab's main process.

The parent owns no BMC state: each child process (``lab.bmc.worker``) serves a contiguous
slice of the fleet and answers state queries and fault/power commands over its command
channel. Power transitions come back on a separate event channel that one parent thread
drains, calling ``on_event`` there (never in a child). Because replies and events travel on
different channels, ``on_event`` may itself call ``state()`` or ``set_power()``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import cast

from metalflow.lab.bmc.model import FAULT_MODES, BmcEvent, BmcState
from metalflow.lab.bmc.wire import CIPHER_SUITES
from metalflow.lab.spec import BmcSpec, Timing

log = logging.getLogger(__name__)

BMCS_PER_PROCESS = 500
COMMAND_TIMEOUT = 10.0
EVENT_BUFFER = 1 << 20  # bytes of events a child can queue while on_event is busy
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent.parent)


class BmcFleetError(RuntimeError):
    """A BMC process failed to answer or reported an error."""


class BmcStartError(BmcFleetError):
    """The fleet could not start: a bind failure (naming the address) or a process failure."""


@dataclass
class _Child:
    index: int
    specs: list[BmcSpec]
    proc: subprocess.Popen
    cmd: Connection
    events: Connection
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0

    def describe(self) -> str:
        first, last = self.specs[0], self.specs[-1]
        return f"BMC process {self.index} (pid {self.proc.pid}, {first.host}..{last.host})"


def process_count(bmcs: int, processes: int = 0) -> int:
    """0: one process per 500 BMCs, at least 1 and at most the CPU count; never more
    processes than BMCs."""
    if processes <= 0:
        processes = min(max(1, math.ceil(bmcs / BMCS_PER_PROCESS)), os.cpu_count() or 1)
    return max(1, min(processes, bmcs))


def _validate(specs: Sequence[BmcSpec], suites: Sequence[int]) -> None:
    hosts: set[str] = set()
    endpoints: set[tuple[str, int]] = set()
    for spec in specs:
        if spec.host in hosts:
            raise ValueError(f"BMC host {spec.host!r} appears twice in the fleet")
        if (spec.address, spec.port) in endpoints:
            raise ValueError(f"BMC address {spec.address}:{spec.port} is used twice (second: {spec.host})")
        if not 1 <= len(spec.username.encode()) <= 16:
            raise ValueError(f"BMC {spec.host}: IPMI user names are 1 to 16 bytes")
        if len(spec.password.encode()) > 20:
            raise ValueError(f"BMC {spec.host}: IPMI 2.0 passwords are at most 20 bytes")
        hosts.add(spec.host)
        endpoints.add((spec.address, spec.port))
    if not suites or any(s not in CIPHER_SUITES for s in suites):
        raise ValueError(f"cipher_suites must be a non-empty subset of {sorted(CIPHER_SUITES)}, got {list(suites)}")


class BmcFleet:
    """A fleet of simulated BMCs. ``start()`` returns once every BMC is bound and serving."""

    def __init__(
        self,
        specs: Sequence[BmcSpec],
        *,
        timing: Timing = Timing(),
        processes: int = 0,
        on_event: Callable[[BmcEvent], None] | None = None,
        cipher_suites: Sequence[int] = (3, 17),
    ) -> None:
        _validate(specs, cipher_suites)
        self._specs = tuple(specs)
        self._timing = timing
        self._on_event = on_event
        self._suites = list(cipher_suites)
        self.processes = process_count(len(self._specs), processes) if self._specs else 0
        self._children: list[_Child] = []
        self._owner: dict[str, _Child] = {}
        self._pump: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._started = False
        self._stopped = False

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        with self._state_lock:
            if self._started:
                raise BmcFleetError("this BMC fleet was already started")
            self._started = True
        deadline = time.monotonic() + timeout
        try:
            for index, chunk in enumerate(self._slices()):
                self._children.append(self._spawn(index, chunk))
            for child in self._children:
                child.cmd.send({"specs": child.specs, "timing": self._timing, "suites": self._suites})
            for child in self._children:
                self._await_ready(child, deadline, timeout)
        except BaseException:
            self.stop()
            raise
        for child in self._children:
            for spec in child.specs:
                self._owner[spec.host] = child
        self._pump = threading.Thread(target=self._pump_events, name="bmc-fleet-events", daemon=True)
        self._pump.start()

    def _slices(self) -> list[list[BmcSpec]]:
        n = self.processes
        size, extra = divmod(len(self._specs), n) if n else (0, 0)
        out, at = [], 0
        for i in range(n):
            take = size + (1 if i < extra else 0)
            out.append(list(self._specs[at : at + take]))
            at += take
        return out

    def _spawn(self, index: int, specs: list[BmcSpec]) -> _Child:
        cmd_parent, cmd_child = socket.socketpair()
        ev_parent, ev_child = socket.socketpair()
        ev_child.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, EVENT_BUFFER)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
        fds = (cmd_child.fileno(), ev_child.fileno())
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "metalflow.lab.bmc.worker", str(fds[0]), str(fds[1])],
                pass_fds=fds,
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            cmd_child.close()
            ev_child.close()
        return _Child(index, specs, proc, Connection(cmd_parent.detach()), Connection(ev_parent.detach()))

    def _await_ready(self, child: _Child, deadline: float, timeout: float) -> None:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            if not child.cmd.poll(remaining):
                raise BmcStartError(f"{child.describe()} did not bind its {len(child.specs)} BMCs within {timeout} s")
            _, status, value = child.cmd.recv()
        except (EOFError, OSError):
            try:
                code = child.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            raise BmcStartError(f"{child.describe()} exited during start-up (exit code {code})") from None
        if status == "bind_error":
            host, address, port, reason = value
            raise BmcStartError(f"BMC {host} cannot listen on {address}:{port} (UDP): {reason}")
        if status != "ready":
            raise BmcStartError(f"{child.describe()} answered {status!r} during start-up")

    def stop(self) -> None:
        """Stop every BMC process (idempotent). Events already emitted are still delivered."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        for child in self._children:
            try:
                self._request(child, "stop", timeout=2.0, stopping=True)
            except (BmcFleetError, OSError, EOFError):
                pass
        for child in self._children:
            try:
                child.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                child.proc.terminate()
                try:
                    child.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        if self._pump is not None and self._pump is not threading.current_thread():
            self._pump.join(timeout=5)
        for child in self._children:
            child.cmd.close()
            if self._pump is None or not self._pump.is_alive():
                child.events.close()

    def __enter__(self) -> BmcFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        """Process ids of the BMC processes (for monitoring: memory, CPU)."""
        return [c.proc.pid for c in self._children]

    # -- events -------------------------------------------------------------------------------
    def _pump_events(self) -> None:
        conns = [c.events for c in self._children]
        while conns:
            ready = cast(list[Connection], wait(conns, timeout=1.0))  # the objects it was given
            for conn in ready:
                try:
                    _, host, kind, bootdev, at = conn.recv()
                except (EOFError, OSError):
                    conns.remove(conn)
                    continue
                if self._on_event is None:
                    continue
                try:
                    self._on_event(BmcEvent(host=host, kind=kind, bootdev=bootdev, at=at))
                except Exception:
                    log.exception("on_event failed for %s %s", host, kind)

    # -- commands -----------------------------------------------------------------------------
    def _request(self, child: _Child, op: str, *args: object, timeout: float = COMMAND_TIMEOUT, stopping: bool = False):
        if not stopping and (not self._started or self._stopped):
            raise BmcFleetError(f"the BMC fleet is not running (cannot {op})")
        with child.lock:
            child.seq += 1
            n = child.seq
            try:
                child.cmd.send((n, op, args))
                deadline = time.monotonic() + timeout
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not child.cmd.poll(remaining):
                        raise BmcFleetError(f"{child.describe()} did not answer {op} within {timeout} s")
                    rn, status, value = child.cmd.recv()
                    if rn == n:
                        break
            except (EOFError, OSError) as exc:
                raise BmcFleetError(f"{child.describe()} is gone ({op}: {exc})") from None
        if status == "error":
            kind, message = value
            if kind == "ValueError":
                raise ValueError(message)
            raise BmcFleetError(f"{child.describe()} failed {op}: {kind}: {message}")
        return value

    def _child(self, host: str) -> _Child:
        try:
            return self._owner[host]
        except KeyError:
            if not self._started or self._stopped:
                raise BmcFleetError(f"the BMC fleet is not running (asked about {host!r})") from None
            raise KeyError(f"no BMC for host {host!r} in this fleet") from None

    def state(self, host: str) -> BmcState:
        return self._request(self._child(host), "state", host)

    def states(self) -> dict[str, BmcState]:
        out: dict[str, BmcState] = {}
        for child in self._children:
            out.update(self._request(child, "states"))
        return out

    def set_fault(self, host: str, mode: str = "none", delay: float = 0.0) -> None:
        """``none``, ``silent`` (drop every packet), ``slow`` (delay every reply by ``delay``
        seconds), ``ignore_soft_off``, ``reject_auth`` (every login fails as with a wrong
        password). Sessions already open stay open."""
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown BMC fault mode {mode!r} for {host}; one of {', '.join(FAULT_MODES)}")
        if delay < 0:
            raise ValueError(f"BMC fault delay must be >= 0 for {host}, got {delay}")
        self._request(self._child(host), "set_fault", host, mode, float(delay))

    def set_power(self, host: str, on: bool) -> None:
        """Change power behind the BMC's back (the power button): emits an event when the
        state changes, as IPMI power commands do; powering on consumes a next-boot override."""
        self._request(self._child(host), "set_power", host, bool(on))
