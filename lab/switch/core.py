"""One switch's state, counters and fault knobs, independent of SSH.

Every CLI session of a switch works on the same ``SwitchCore`` under its lock, so sessions
see each other's changes at once, as on a real switch. Faults are knobs on the core, not on a
session: "drop the session after two more configuration commands" counts commands from any
session.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .dialect import Dialect
from .model import Config, PortVlans

FAULT_MODES = ("none", "drop_session", "reject_login", "slow", "wrong_readback", "busy")


@dataclass
class _Fault:
    mode: str = "none"
    after: int = 0
    delay: float = 0.0
    count: int = 1
    countdown: int = 0  # drop_session: configuration commands still let through before the next drop


class SwitchCore:
    def __init__(
        self, name: str, ports: tuple[str, ...], dialect: Dialect, initial: Mapping[str, PortVlans] | None = None
    ) -> None:
        self.name = name
        self.dialect = dialect
        self.lock = threading.RLock()
        self.port_names = tuple(ports)
        self._port_set = frozenset(ports)
        config: Config = Config(dialect.default_vlans(), {p: dialect.default_port() for p in ports})
        for port, vlans in (initial or {}).items():
            config = dialect.with_port_vlans(config, self.canonical(port), vlans)
        self.running: Config = config
        self.startup: Config = config
        self.previous: Config = config  # the running config before the last change
        self.counters = {
            "logins": 0,
            "login_failures": 0,
            "sessions": 0,
            "active_sessions": 0,
            "commands": 0,
            "config_commands": 0,
            "saves": 0,
            "drops": 0,
        }
        self._fault = _Fault()

    # ---- ports ---------------------------------------------------------------------------

    def canonical(self, port: str) -> str:
        """The canonical name of a port given as in ``spec.ports`` (or a CLI spelling of it)."""
        if port in self._port_set:
            return port
        name = self.dialect.port_aliases(port)
        if name is None or name not in self._port_set:
            raise KeyError(f"switch {self.name} has no port {port!r}")
        return name

    def has_port(self, canonical: str) -> bool:
        return canonical in self._port_set

    def port_vlans(self, port: str) -> PortVlans:
        with self.lock:
            return self.dialect.port_vlans(self.running.ports[self.canonical(port)])

    def set_port_vlans(self, port: str, vlans: PortVlans) -> None:
        with self.lock:
            self.commit(self.dialect.with_port_vlans(self.running, self.canonical(port), vlans))

    # ---- configuration -------------------------------------------------------------------

    def commit(self, config: Config) -> None:
        with self.lock:
            if config == self.running:
                return
            self.previous = self.running
            self.running = config

    def save(self) -> None:
        with self.lock:
            self.startup = self.running
            self.counters["saves"] += 1

    @property
    def saved(self) -> bool:
        with self.lock:
            return self.running == self.startup

    def view(self) -> Config:
        """The configuration a show command reports (the wrong_readback fault lies here)."""
        with self.lock:
            f = self._fault
            if f.mode == "wrong_readback" and f.count > 0:
                f.count -= 1
                if f.count == 0:
                    self._fault = _Fault()
                return self.previous
            return self.running

    # ---- faults --------------------------------------------------------------------------

    def set_fault(self, mode: str = "none", *, after: int = 0, delay: float = 0.0, count: int = 1) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {', '.join(FAULT_MODES)}")
        if after < 0 or delay < 0 or count < 1:
            raise ValueError("fault needs after >= 0, delay >= 0 and count >= 1")
        with self.lock:
            self._fault = _Fault(mode, after, delay, count, countdown=after)

    def fault_state(self) -> dict[str, Any]:
        with self.lock:
            f = self._fault
            return {"mode": f.mode, "after": f.after, "delay": f.delay, "count": f.count}

    def admit_login(self) -> bool:
        """Decide one login (one SSH connection's authentication); False: reject it."""
        with self.lock:
            f = self._fault
            if f.mode == "reject_login" and f.count > 0:
                f.count -= 1
                if f.count == 0:
                    self._fault = _Fault()
                return False
            return True

    def note_login(self, ok: bool) -> None:
        with self.lock:
            self.counters["logins" if ok else "login_failures"] += 1

    def command_delay(self) -> float:
        with self.lock:
            return self._fault.delay if self._fault.mode == "slow" else 0.0

    def config_command_fault(self) -> str | None:
        """Called before each configuration command: "drop", "busy" or None (go ahead)."""
        with self.lock:
            self.counters["config_commands"] += 1
            f = self._fault
            if f.mode == "busy" and f.count > 0:
                f.count -= 1
                if f.count == 0:
                    self._fault = _Fault()
                return "busy"
            if f.mode == "drop_session" and f.count > 0:
                if f.countdown > 0:
                    f.countdown -= 1
                    return None
                f.count -= 1
                f.countdown = f.after
                if f.count == 0:
                    self._fault = _Fault()
                self.counters["drops"] += 1
                return "drop"
            return None

    def count(self, counter: str, delta: int = 1) -> None:
        with self.lock:
            self.counters[counter] += delta

    # ---- read-out ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            running = self.running
            return {
                "name": self.name,
                "dialect": self.dialect.name,
                "ports": {p: self.dialect.port_vlans(running.ports[p]).to_json() for p in self.port_names},
                "vlans": {str(v): n for v, n in sorted(running.vlans.items())},
                "saved": running == self.startup,
                "counters": dict(self.counters),
                "fault": self.fault_state(),
            }
