"""The process runtime: everything one metalflow process keeps between the runs it executes.

A metalflow process (``metalflow serve``, a process worker's flow-run process, ``metalflow
demo``, a benchmark) runs many flow runs over its life, and some things must outlive a run:
the inventory's connection pool and its journal group commit, the MAAS session, the switch
group commit (one SSH session per switch shared by the runs converging ports at once), the
lease locks this process holds, one IPMI call guard per BMC, the power-poll watch parked
between two scheduled runs. Each of those used to be a module-level cache or registry of its
own, made on import or first use and never closed. Now they are *parts* of one ``Runtime``:

- made on first use, once per process (thread-safe), under a key that says what they are for
  (the inventory URL, the MAAS settings reference, ...);
- closed by ``Runtime.close()``, newest first, exactly once: ``deployments`` builds the runtime
  when a process starts (serve, worker, demo) and closes it when the process ends; a process
  nobody built one for (a flow run started by a process worker, a test) gets one on first use,
  closed at interpreter exit;
- reachable from anywhere in the process through ``Runtime.current()``: the one process-wide
  slot metalflow keeps (tests/unit/test_architecture.py allows no other module-level state
  in ``integrations/``, ``tasks/`` and ``flows/``).

Plain Python: no Prefect here, so the engines stay testable without a server, and the
Prefect-facing parts are built by ``tasks`` and handed in as factories.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

log = logging.getLogger("metalflow.runtime")


class RuntimeClosed(RuntimeError):
    """A part was asked of a runtime that was already closed (the process is ending)."""


class Runtime:
    """The parts one process keeps between runs (see the module docstring)."""

    _current: ClassVar[Runtime | None] = None
    _slot_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, name: str = "metalflow") -> None:
        self.name = name
        self._lock = threading.RLock()
        self._parts: dict[Hashable, Any] = {}
        self._closers: list[tuple[Hashable, Callable[[], None]]] = []
        self._making: dict[Hashable, threading.Lock] = {}
        self.closed = False

    # ----- the process's one runtime ----------------------------------------------------------

    @classmethod
    def current(cls) -> Runtime:
        """This process's runtime: the one ``install``-ed, or one made now (and closed at exit)."""
        with cls._slot_lock:
            if cls._current is None or cls._current.closed:
                rt = cls()
                atexit.register(rt.close)
                cls._current = rt
            return cls._current

    @classmethod
    def install(cls, rt: Runtime) -> Runtime:
        """Make ``rt`` this process's runtime (``deployments`` does, at process start). A runtime
        installed before is closed: its parts belong to nobody any more."""
        with cls._slot_lock:
            old, cls._current = cls._current, rt
        if old is not None and old is not rt:
            old.close()
        return rt

    @classmethod
    def uninstall(cls, rt: Runtime) -> None:
        """Close ``rt`` and, if it is the process's runtime, empty the slot (tests, process end)."""
        with cls._slot_lock:
            if cls._current is rt:
                cls._current = None
        rt.close()

    # ----- parts ------------------------------------------------------------------------------

    def part(self, key: Hashable, make: Callable[[], T], close: Callable[[T], None] | None = None) -> T:
        """The part ``key``, made with ``make()`` on first use (once, however many threads ask at
        once); ``close(part)`` runs when the runtime closes, newest part first."""
        with self._lock:
            if self.closed:
                raise RuntimeClosed(f"the {self.name} runtime is closed; {key!r} cannot be made now")
            if key in self._parts:
                return self._parts[key]  # type: ignore[no-any-return]
            making = self._making.setdefault(key, threading.Lock())
        with making:  # one maker per key; other keys are made meanwhile
            with self._lock:
                if key in self._parts:
                    return self._parts[key]  # type: ignore[no-any-return]
            value = make()
            with self._lock:
                if self.closed:  # closed while it was being made: it belongs to nobody
                    if close is not None:
                        close(value)
                    raise RuntimeClosed(f"the {self.name} runtime closed while {key!r} was made")
                self._parts[key] = value
                self._making.pop(key, None)
                if close is not None:
                    self._closers.append((key, lambda: close(value)))
            return value

    def has(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._parts

    def forget(self, key: Hashable) -> None:
        """Drop the part ``key`` without closing it (its owner closed it already)."""
        with self._lock:
            self._parts.pop(key, None)
            self._closers = [(k, c) for k, c in self._closers if k != key]

    def close(self) -> None:
        """Close every part, newest first; one that fails to close does not stop the others."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            closers, self._closers = self._closers, []
            self._parts.clear()
        for key, closer in reversed(closers):
            try:
                closer()
            except Exception as exc:  # noqa: BLE001 - the process is ending; close the rest
                log.warning("closing %r failed: %s", key, exc)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
