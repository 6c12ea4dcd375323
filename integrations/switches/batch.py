"""The switch group commit: one SSH session per switch shared by the requests of one process.

Group commit per switch, per process. Under ``metalflow serve`` every flow run is a thread of
one process, and a bulk provision has about ten runs converging ports on each switch at the
same moment. Rather than queue ten SSH sessions on the switch lock one after another, the
first of them leads: it takes the switch lock, opens one session and applies every request
queued for that switch, in arrival order, including those that arrive while the session is
open, up to ``SESSION_REQUESTS`` requests or ``SESSION_SECONDS``; then it saves once, closes,
and hands the lead to the next request still waiting. The others wait for their own outcome:
the lines sent for their ports, or their own error. A port change that fails fails only its
own request; a session that breaks (no connection, the connection lost, the save refused)
fails every request it had taken.

Plain Python, no Prefect: the process's ``SwitchBatches`` is a part of its ``Runtime``
(``tasks.runtime``), and ``tasks.switches.converge_switch`` submits each run's ports here and
logs the outcome in that run. The session opener is handed in (``SwitchDriver.session()``
under the switch's lock), so this module neither connects nor locks by itself.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from metalflow.integrations.switches.errors import SwitchAuthFailed, SwitchUnreachable
from metalflow.integrations.switches.model import PortVlans

#: A session serves at most this many requests, or takes new ones for at most this many
#: seconds, before it closes and hands the lead on: no request waits behind an endless one.
SESSION_REQUESTS = 64
SESSION_SECONDS = 60.0
#: Errors after which a session is of no use to the requests behind: it could not connect or
#: log in, or the connection was lost (SwitchSessionLost is a SwitchUnreachable).
SESSION_ERRORS = (SwitchUnreachable, SwitchAuthFailed)


@dataclass(frozen=True)
class PortTarget:
    """What one switch port should carry: one untagged VLAN (or none) and tagged VLANs."""

    switch: str
    port: str
    untagged: int | None
    tagged: tuple[int, ...] = ()

    def __str__(self) -> str:
        tags = ",".join(map(str, self.tagged)) or "-"
        return f"{self.switch} {self.port}: untagged {self.untagged or '-'} tagged {tags}"


def plan_port(current: PortVlans, target: PortTarget) -> list[tuple[str, int, bool]]:
    """The changes that take a port from ``current`` to ``target``: removals first (a port
    holds one untagged VLAN, so the old one must go before the new one comes), then additions."""
    if len(current.tagged) > 1024:
        raise ValueError(
            f"{target.switch} {target.port} is a trunk that allows (nearly) every VLAN; give it "
            "an explicit allowed list before metalflow manages it"
        )
    want_tagged = set(target.tagged)
    steps: list[tuple[str, int, bool]] = []
    if current.untagged is not None and current.untagged != target.untagged:
        steps.append(("remove", current.untagged, False))
    for v in sorted(current.tagged - want_tagged):
        steps.append(("remove", v, True))
    if target.untagged is not None and current.untagged != target.untagged:
        steps.append(("add", target.untagged, False))
    for v in sorted(want_tagged - current.tagged):
        steps.append(("add", v, True))
    return steps


@dataclass(frozen=True)
class PortChange:
    """One port of a request as found: the changes sent to it (none: already as wanted)."""

    target: PortTarget
    steps: tuple[tuple[str, int, bool], ...]

    def __str__(self) -> str:
        return ", ".join(f"{op} {vlan}{' tagged' if tg else ' untagged'}" for op, vlan, tg in self.steps)


@dataclass(frozen=True)
class SwitchOutcome:
    """One request's outcome: its ports (those done before an error, if any), the CLI lines
    sent for them, the hosts whose requests its session served (the leader's first), whether
    this request's thread led the session, and its error (None: done and saved)."""

    ports: tuple[PortChange, ...]
    commands: tuple[str, ...]
    hosts: tuple[str, ...]
    led: bool
    error: BaseException | None


class PortSession(Protocol):
    """What the batch uses of ``integrations.switches.Session``."""

    commands: list[str]

    def port_vlans(self, port: str) -> PortVlans: ...

    def add_vlan(self, port: str, vlan: int, tagged: bool) -> None: ...

    def remove_vlan(self, port: str, vlan: int) -> None: ...


class VlanSession(PortSession, Protocol):
    """What the VLAN audit uses of ``integrations.switches.Session`` besides the port
    operations: the switch's VLAN table and the deletion of one unused VLAN definition
    (``SwitchNotSupported`` on dialects without them). The group commit does not use these."""

    def vlan_table(self) -> dict[int, frozenset[str]]: ...

    def delete_vlan(self, vlan: int) -> None: ...


#: Opens a session on the switch, holding the switch while it lasts; the session saves when
#: the block ends without an error, or in any case with ``force_save=True``
#: (``SwitchDriver.session()`` under the switch lock: ``tasks.locks.switch_lock``).
SessionOpener = Callable[..., AbstractContextManager[PortSession]]


class SessionAbandoned(RuntimeError):
    """The run leading a session stopped (interrupted, cancelled) before this request was
    saved. Transient: a retry reads the ports again and converges."""

    transient = True


class _Request:
    """One host's ports on one switch, from queued to done (compared by identity)."""

    def __init__(self, host: str, targets: tuple[PortTarget, ...]) -> None:
        self.host, self.targets = host, targets
        self.queued_at = time.monotonic()
        self.taken_at: float | None = None  # when a session took it
        self.done = False
        self.ports: list[PortChange] = []
        self.commands: list[str] = []
        self.hosts: tuple[str, ...] = ()
        self.error: BaseException | None = None


class SwitchBatch:
    """This process's group commit on one switch (see the module docstring). Thread-safe:
    every run of the process that converges ports on the switch goes through ``submit``."""

    def __init__(
        self, switch: str, *, max_requests: int = SESSION_REQUESTS, max_seconds: float = SESSION_SECONDS
    ) -> None:
        self.switch = switch
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._leader: str | None = None  # the host whose run leads the session, if one does
        # A session was lost after sending changes: they may be in the running config only,
        # and a retry that finds its ports right sends nothing, so the next session saves anyway.
        self._unsaved = False

    @property
    def pending(self) -> int:
        """Requests queued and not yet taken by a session."""
        with self._cond:
            return len(self._queue)

    def submit(self, host: str, targets: list[PortTarget], open_session: SessionOpener, wait: float) -> SwitchOutcome:
        """Converge ``targets`` (ports of this switch) for ``host``; returns once they are done
        and saved or failed. Waits at most ``wait`` seconds for a session to take them (then
        withdraws them, unchanged) and ``wait`` more for that session to end; ``open_session``
        is used only if this request ends up leading a session."""
        req = _Request(host, tuple(targets))
        with self._cond:
            self._queue.append(req)
            try:
                while not req.done and not self._take_lead(req):
                    left = (req.taken_at or req.queued_at) + wait - time.monotonic()
                    if left <= 0:
                        raise self._timed_out(req, wait)
                    self._cond.wait(left)
            except BaseException:
                if req in self._queue:  # withdrawn before any session took it: nothing was sent
                    self._queue.remove(req)
                    self._cond.notify_all()
                raise
        led = not req.done
        if led:
            self._lead(req, open_session)
        error = req.error if led or req.error is None else _own_copy(req.error)
        return SwitchOutcome(tuple(req.ports), tuple(req.commands), req.hosts, led, error)

    # ----- the leader -------------------------------------------------------------------------

    def _take_lead(self, req: _Request) -> bool:
        """Under the condition: lead when no one does and ``req`` is first in line."""
        if self._leader is None and self._queue and self._queue[0] is req:
            self._leader = req.host
            return True
        return False

    def _lead(self, me: _Request, open_session: SessionOpener) -> None:
        """One session: take queued requests one by one (``me`` first), apply each, save when
        the session ends; then give every request taken its outcome and hand the lead on.
        Whatever happens, no request taken is left without an outcome."""
        taken: list[_Request] = []
        sent = False
        try:
            with open_session(force_save=self._unsaved) as s:
                opened = time.monotonic()
                while (req := self._take(taken, opened)) is not None:
                    self._apply(s, req)
                    sent = sent or bool(s.commands)
                    if isinstance(req.error, SESSION_ERRORS):
                        raise req.error  # no use going on: the requests behind get a new session
            self._unsaved = False  # saved, or nothing was left to save
        except Exception as exc:  # noqa: BLE001 - the session did not open, broke, or its save failed
            self._unsaved = self._unsaved or sent
            if not taken:  # it did not open: every request waiting for it fails alike
                taken = self._take_all()
            for r in taken:
                if r.error is None:
                    r.error = exc
        except BaseException as exc:
            self._unsaved = self._unsaved or sent
            stopped = SessionAbandoned(
                f"switch {self.switch}: the session applying these ports stopped ({type(exc).__name__} "
                f"in {me.host}'s run) before it saved; a retry reads the ports again"
            )
            for r in taken:
                if r.error is None and r is not me:
                    r.error = stopped
            raise
        finally:
            hosts = tuple(r.host for r in taken)
            with self._cond:
                for r in taken:
                    r.hosts, r.done = hosts, True
                if me in self._queue:  # interrupted before its session took it: withdrawn
                    self._queue.remove(me)
                self._leader = None
                self._cond.notify_all()

    def _take(self, taken: list[_Request], opened: float) -> _Request | None:
        """The next request for the open session, or None: the queue is empty or the session
        has served its share."""
        with self._cond:
            if (
                not self._queue
                or len(taken) >= self.max_requests
                or (taken and time.monotonic() - opened >= self.max_seconds)
            ):
                return None
            req = self._queue.popleft()
            req.taken_at = time.monotonic()
            taken.append(req)
            return req

    def _take_all(self) -> list[_Request]:
        with self._cond:
            taken = [self._queue.popleft() for _ in range(min(len(self._queue), self.max_requests))]
        return taken

    @staticmethod
    def _apply(s: PortSession, req: _Request) -> None:
        """One request's ports: read each, send only the difference (removals first), the
        driver verifying every change. An error ends the request, not the session."""
        before = len(s.commands)
        try:
            for t in req.targets:
                steps = plan_port(s.port_vlans(t.port), t)
                for op, vlan, tagged in steps:
                    if op == "remove":
                        s.remove_vlan(t.port, vlan)
                    else:
                        s.add_vlan(t.port, vlan, tagged)
                req.ports.append(PortChange(t, tuple(steps)))
        except Exception as exc:  # noqa: BLE001 - the request's outcome, raised in its own run
            req.error = exc
        finally:
            req.commands = s.commands[before:]

    def _timed_out(self, req: _Request, wait: float) -> TimeoutError:
        leader = f"led by {self._leader}'s run" if self._leader else "between sessions"
        if req.taken_at is None:
            return TimeoutError(
                f"switch {self.switch}: {req.host}'s ports waited {wait:.0f} s for a session of this "
                f"process and were withdrawn unchanged (the switch is busy: session {leader})"
            )
        return TimeoutError(
            f"switch {self.switch}: the session that took {req.host}'s ports ({leader}) has not ended "
            f"after {wait:.0f} s; its changes may still land, and a retry reads the ports again"
        )


def _own_copy(exc: BaseException) -> BaseException:
    """A copy of an error that the leader's thread raised, for a waiting thread to raise: one
    exception object raised in several threads at once gets its traceback mixed up. The
    original (with the leader's traceback) is the copy's cause."""
    try:
        mine = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception class that cannot be rebuilt: share it
        return exc
    mine.__cause__ = exc
    return mine


class SwitchBatches:
    """This process's ``SwitchBatch`` per switch, made on first use (one per process: a part of
    its ``Runtime``, so every run of the process that converges ports on a switch meets the
    others in the same queue)."""

    def __init__(self, *, max_requests: int = SESSION_REQUESTS, max_seconds: float = SESSION_SECONDS) -> None:
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self._guard = threading.Lock()
        self._batches: dict[str, SwitchBatch] = {}

    def of(self, switch: str) -> SwitchBatch:
        with self._guard:
            if switch not in self._batches:
                self._batches[switch] = SwitchBatch(
                    switch, max_requests=self.max_requests, max_seconds=self.max_seconds
                )
            return self._batches[switch]
