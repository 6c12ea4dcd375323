"""The one switch driver: every dialect's mechanics live here.

- Input is validated before any connection (port grammar, VLAN range, never VLAN 1).
- The connection is lazy and retried with backoff inside a deadline when the switch refuses
  or resets it; a rejected password is never retried.
- Every change reads the port first and does nothing when it already holds (a rerun is a
  no-op), then sends the dialect's lines one by one, scanning each answer for the dialect's
  error patterns (retryable: locked/busy, retried with backoff after re-reading the port;
  fatal: the offending line is reported), then reads the port back and compares.
- ``session()`` keeps one SSH session for many changes and saves (``write memory``,
  ``commit``) once at the end, only if something changed. Without ``session()`` each call
  is its own session.

Rule for untagged VLANs: a port has at most one untagged VLAN besides the default. Adding an
untagged VLAN to a port that already has another one raises SwitchWrongState naming the
present one, on every dialect, rather than silently moving the port: metalflow's flows
remove the PXE VLAN before adding the guest VLAN, and an unexpected untagged VLAN is a sign
that the inventory and the switch disagree. Likewise a VLAN cannot be tagged and untagged on
one port at once (except where the dialect builds untagged on top of tagged: FastIron).

If a session fails after configuration lines were sent (a command refused, a verify
mismatch), the driver still saves, so running and startup configs agree and a rerun that
finds everything in place has nothing left to save. If the session itself is lost it
cannot; the error's ``applied`` lists what is in the running config unsaved, and a rerun
with ``session(force_save=True)`` saves it. Junos is transactional: a failed session's
candidate is discarded, so nothing was applied.

Switch-level VLAN definitions (for the audit): ``vlan_table()`` reads every defined VLAN and
the ports that carry it; ``delete_vlan(vlan)`` reads the table, refuses a VLAN a port still
carries (SwitchWrongState naming the ports), deletes the definition, reads the table back
(SwitchVerifyFailed if it is still there) and saves like any change. Both exist only for the
dialects that declare the commands (SwitchNotSupported otherwise, before any connection).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from metalflow.integrations.common import Backoff, Clock, Deadline, MonotonicClock, Secret, retry
from metalflow.integrations.common.secrets import scrubber
from metalflow.integrations.switches.cli import Cli, open_netmiko
from metalflow.integrations.switches.dialect import Dialect
from metalflow.integrations.switches.errors import (
    InvalidSwitchSettings,
    SwitchCommandFailed,
    SwitchError,
    SwitchParseError,
    SwitchSessionLost,
    SwitchUnreachable,
    SwitchVerifyFailed,
    SwitchWrongState,
)
from metalflow.integrations.switches.model import PortVlans
from metalflow.integrations.switches.registry import dialect_for

log = logging.getLogger(__name__)
_T = TypeVar("_T")

CONNECT_BACKOFF = Backoff(first=0.3, factor=2.0, cap=3.0, attempts=4)
BUSY_BACKOFF = Backoff(first=0.3, factor=2.0, cap=3.0, attempts=6)

#: Opens a logged-in CLI within ``timeout`` seconds (netmiko in real life).
CliFactory = Callable[[float], Cli]


def _unreachable(exc: BaseException) -> float | None:
    """Connect retries: refused, reset, timed out (never a rejected password)."""
    return 0.0 if isinstance(exc, SwitchUnreachable) else None


def _busy(exc: BaseException) -> float | None:
    """In-session retries: only a command the switch called retryable (locked, busy). A lost
    session is not retried here: the caller reruns, and every change re-reads first."""
    return 0.0 if isinstance(exc, SwitchCommandFailed) and exc.transient else None


class SwitchDriver:
    """One switch. Cheap to create (nothing connects until the first operation); safe to
    share between threads (one session at a time, the others wait)."""

    def __init__(
        self,
        dialect: Dialect,
        host: str,
        username: str,
        password: str | Secret,
        port: int = 22,
        *,
        enable_secret: str | Secret | None = None,
        timeout: float = 30,
        connect_backoff: Backoff = CONNECT_BACKOFF,
        busy_backoff: Backoff = BUSY_BACKOFF,
        cli_factory: CliFactory | None = None,
        clock: Clock | None = None,
    ):
        if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
            raise InvalidSwitchSettings(
                f"switch address {host!r} is not a host name or IP address", operation="connect"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise InvalidSwitchSettings(
                f"SSH port {port!r} must be an integer 1-65535", target=host, operation="connect"
            )
        if not isinstance(username, str) or not re.fullmatch(r"[^\s;]{1,64}", username):
            raise InvalidSwitchSettings(
                "username must be 1-64 characters without spaces", target=host, operation="connect"
            )
        if not timeout or timeout <= 0:
            raise InvalidSwitchSettings(
                "timeout must be a positive number of seconds", target=host, operation="connect"
            )
        self.dialect = dialect
        self.host, self.port, self.username = host, port, username
        self._password = Secret(password)
        self._enable_secret = Secret(enable_secret) if enable_secret else None
        self.timeout = float(timeout)
        self.connect_backoff, self.busy_backoff = connect_backoff, busy_backoff
        self._clock = clock or MonotonicClock()
        self._cli_factory = cli_factory or self._open_netmiko
        self._lock = threading.RLock()
        self._session: Session | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<SwitchDriver {self.dialect.name} {self.username}@{self.target}>"

    # ----- the interface the runbook uses --------------------------------------------------

    def add_vlan(self, port: str, vlan: int, tagged: bool) -> None:
        self._call(lambda s: s.add_vlan(port, vlan, tagged), port, vlan)

    def remove_vlan(self, port: str, vlan: int) -> None:
        self._call(lambda s: s.remove_vlan(port, vlan), port, vlan)

    def port_vlans(self, port: str) -> PortVlans:
        return self._call(lambda s: s.port_vlans(port), port)

    def vlan_table(self) -> dict[int, frozenset[str]]:
        self.dialect.vlan_table_commands_for()  # SwitchNotSupported here, before any connection
        return self._in_session(lambda s: s.vlan_table())

    def delete_vlan(self, vlan: int) -> None:
        self.dialect.delete_vlan_commands(vlan)  # unsupported dialect, VLAN 1: refused here
        self._in_session(lambda s: s.delete_vlan(vlan))

    @contextmanager
    def session(self, *, force_save: bool = False) -> Iterator[Session]:
        """One SSH session for many changes and one save at the end (only if something
        changed, or ``force_save``). Connects at the first operation, not here."""
        with self._lock:
            if self._session is not None:
                raise RuntimeError(f"a session on {self.target} is already open in this thread")
            session = self._session = Session(self, force_save=force_save)
            try:
                yield session
                session._finish()
            except BaseException as exc:
                session._abort(exc)
                raise
            finally:
                self._session = None
                session._close()

    def close(self) -> None:
        """Close a session left open (normally every session closes itself)."""
        with self._lock:
            if self._session is not None:
                self._session._close()

    # ----- mechanics ------------------------------------------------------------------------

    def _call(self, fn: Callable[[Session], _T], port: str, vlan: int | None = None) -> _T:
        self.dialect.validate_port(port)  # bad input fails here, before any connection
        if vlan is not None:
            self.dialect.validate_vlan(vlan)
        return self._in_session(fn)

    def _in_session(self, fn: Callable[[Session], _T]) -> _T:
        """``fn`` in the session open in this thread, or in a session of its own."""
        with self._lock:
            if self._session is not None:
                return fn(self._session)
            with self.session() as s:
                return fn(s)

    def _deadline(self) -> Deadline:
        return Deadline(self.timeout, clock=self._clock)

    def _open_netmiko(self, timeout: float) -> Cli:
        d = self.dialect
        return open_netmiko(
            d.netmiko_class,
            d.netmiko_device_type,
            self.host,
            self.port,
            self.username,
            self._password,
            self._enable_secret,
            timeout,
        )

    def _connect(self) -> Cli:
        deadline = self._deadline()
        tries = []

        def attempt() -> Cli:
            tries.append(1)
            return self._cli_factory(deadline.remaining())

        def note(n: int, exc: BaseException, delay: float) -> None:
            log.info("switch %s: connect attempt %d failed (%s); retrying in %.1f s", self.target, n, exc, delay)

        try:
            return retry(
                attempt, transient=_unreachable, deadline=deadline, backoff=self.connect_backoff, on_retry=note
            )
        except SwitchUnreachable as exc:
            raise SwitchUnreachable(
                f"{exc.message} (gave up after {len(tries)} attempt(s))",
                target=self.target,
                operation=exc.operation or "connect",
                evidence=exc.evidence,
            ) from None

    def _scrub(self, text: str) -> str:
        """``text`` without the switch's passwords or any other secret the process knows."""
        s = scrubber()
        s.learn_all((self._password, self._enable_secret))
        return s.scrub(text)


class Session:
    """Changes on one switch over one SSH session. Get one from ``SwitchDriver.session()``.

    ``applied`` lists the verified changes, ``commands`` every configuration line sent, in
    order: the story of the run, for an artifact."""

    def __init__(self, driver: SwitchDriver, *, force_save: bool = False):
        self._d = driver
        self._force_save = force_save
        self._cli: Cli | None = None
        self._lost = False
        self.applied: list[str] = []
        self.commands: list[str] = []
        self.saved = False
        self._save_tried = False
        self._dirty = False  # a configuration line was sent (verified or not)

    # ----- public ---------------------------------------------------------------------------

    def add_vlan(self, port: str, vlan: int, tagged: bool) -> None:
        port, vlan = self._d.dialect.validate_port(port), self._d.dialect.validate_vlan(vlan)
        self._change("add", port, vlan, bool(tagged))

    def remove_vlan(self, port: str, vlan: int) -> None:
        port, vlan = self._d.dialect.validate_port(port), self._d.dialect.validate_vlan(vlan)
        self._change("remove", port, vlan, False)  # a remove takes the VLAN off either way

    def port_vlans(self, port: str) -> PortVlans:
        port = self._d.dialect.validate_port(port)
        self._open()  # the connect has its own deadline; the read gets a whole one
        return self._read(port, self._d._deadline(), "read port VLANs")

    def vlan_table(self) -> dict[int, frozenset[str]]:
        """Every VLAN defined on the switch (VLAN 1 and the dialect's other reserved VLANs
        left out) -> the ports that carry it, untagged or tagged (trunks included), named as
        the dialect's ``validate_port`` names them (a port-channel as the switch prints it).
        An empty set: defined, and no port carries it."""
        self._d.dialect.vlan_table_commands_for()  # SwitchNotSupported before connecting
        self._open()
        return self._read_table(self._d._deadline(), "read VLAN table")

    def delete_vlan(self, vlan: int) -> None:
        """Delete VLAN ``vlan``'s definition from the switch, if it is defined (a rerun finds
        it gone and does nothing). Refuses VLAN 1 and reserved VLANs (InvalidVlan) and a
        VLAN that any port still carries (SwitchWrongState naming the ports, nothing sent);
        reads the table back after the change (SwitchVerifyFailed if it is still defined).
        Saved at the end of the session, as every change is."""
        d, target = self._d.dialect, self._d.target
        lines = d.delete_vlan_commands(vlan)  # NotSupported, InvalidVlan: before connecting
        what = f"delete VLAN {vlan}"
        self._open()
        deadline = self._d._deadline()

        def attempt() -> None:
            before = self._read_table(deadline, what)
            if vlan not in before:
                log.info("switch %s: %s: already so (not defined)", target, what)
                return
            if before[vlan]:
                ports = ", ".join(sorted(before[vlan]))
                raise SwitchWrongState(
                    f"VLAN {vlan} is still carried by port(s) {ports}: take it off them (or let the "
                    "audit leave it) before deleting its definition",
                    target=target,
                    operation=what,
                    evidence=f"VLAN {vlan}: {ports}",
                )
            self._configure(lines, deadline, what, "")
            after = self._read_table(deadline, what)
            if vlan in after:
                raise SwitchVerifyFailed(
                    f"VLAN {vlan} is still defined after {' / '.join(lines)!r}",
                    target=target,
                    operation=what,
                    evidence=f"VLAN {vlan} read back with ports: {', '.join(sorted(after[vlan])) or 'none'}",
                    expected="not defined",
                    observed=after[vlan],
                )
            self.applied.append(what)
            log.info("switch %s: %s (verified: no longer defined)", target, what)

        def note(n: int, exc: BaseException, delay: float) -> None:
            log.info("switch %s: %s: %s; retrying in %.1f s", target, what, exc, delay)

        retry(attempt, transient=_busy, deadline=deadline, backoff=self._d.busy_backoff, on_retry=note)

    # ----- one change -----------------------------------------------------------------------

    def _change(self, op: str, port: str, vlan: int, tagged: bool) -> None:
        dialect, target = self._d.dialect, self._d.target
        what = f"remove VLAN {vlan}"
        if op == "add":
            what = f"add VLAN {vlan} {'tagged' if tagged else 'untagged'}"
        self._open()  # the connect has its own deadline; the change gets a whole one
        deadline = self._d._deadline()

        def attempt() -> None:
            current = self._read(port, deadline, what)
            plan = self._plan(op, port, vlan, tagged, current, what)
            if plan is None:
                log.info("switch %s port %s: %s: already so (%s)", target, port, what, current)
                return
            as_tagged, expected = plan
            lines = dialect.commands_for(op, port, vlan, as_tagged, current)
            self._configure(lines, deadline, what, port)
            observed = self._read(port, deadline, what)
            if observed != expected:
                raise SwitchVerifyFailed(
                    f"port {port} does not read back as expected after the change",
                    target=f"{target} port {port}",
                    operation=what,
                    evidence=f"expected {expected}; observed {observed}",
                    port=port,
                    expected=expected,
                    observed=observed,
                )
            self.applied.append(f"{what} on {port}")
            log.info("switch %s port %s: %s (%d lines, verified: %s)", target, port, what, len(lines), observed)

        def note(n: int, exc: BaseException, delay: float) -> None:
            log.info("switch %s port %s: %s: %s; retrying in %.1f s", target, port, what, exc, delay)

        retry(attempt, transient=_busy, deadline=deadline, backoff=self._d.busy_backoff, on_retry=note)

    def _plan(
        self, op: str, port: str, vlan: int, tagged: bool, current: PortVlans, what: str
    ) -> tuple[bool, PortVlans] | None:
        """(send as tagged?, expected state), or None when there is nothing to do."""
        where = f"{self._d.target} port {port}"
        if op == "remove":
            if current.untagged == vlan:
                return False, current.with_removed(vlan)
            return (True, current.with_removed(vlan)) if vlan in current.tagged else None
        if current.has(vlan, tagged):
            return None
        if tagged and current.untagged == vlan:
            raise SwitchWrongState(
                f"VLAN {vlan} is the port's untagged VLAN: remove it before adding it tagged",
                target=where,
                operation=what,
                evidence=str(current),
            )
        if not tagged and current.untagged is not None:
            raise SwitchWrongState(
                f"port {port} is already untagged in VLAN {current.untagged}: remove that VLAN "
                f"first (a port has one untagged VLAN)",
                target=where,
                operation=what,
                evidence=str(current),
            )
        if not tagged and vlan in current.tagged and not self._d.dialect.untagged_builds_on_tagged:
            raise SwitchWrongState(
                f"VLAN {vlan} is tagged on the port: remove it before adding it untagged",
                target=where,
                operation=what,
                evidence=str(current),
            )
        return tagged, current.with_added(vlan, tagged)

    # ----- CLI plumbing -----------------------------------------------------------------------

    def _open(self) -> Cli:
        if self._cli is None:
            if self._lost:
                raise SwitchSessionLost(
                    "the session was lost; open a new one", target=self._d.target, applied=tuple(self.applied)
                )
            self._cli = self._d._connect()
            if self._d.dialect.transactional:
                deadline = self._d._deadline()
                enter = self._d.dialect.config_enter
                retry(
                    lambda: self._send(enter, deadline, "enter configuration mode"),
                    transient=_busy,
                    deadline=deadline,
                    backoff=self._d.busy_backoff,
                )
        return self._cli

    def _send(
        self,
        line: str,
        deadline: Deadline,
        what: str,
        port: str = "",
        *,
        confirm: tuple[str, str] | None = None,
        scan: str = "all",
    ) -> str:
        """Send one line and scan the answer: ``all`` patterns for configuration lines,
        ``fatal`` only for show commands (their output is data and may say "busy")."""
        cli = self._open()
        target = f"{self._d.target} port {port}" if port else self._d.target
        try:
            out = self._d._scrub(cli.send(line, timeout=deadline.remaining(), confirm=confirm))
        except SwitchSessionLost as exc:
            self._lost = True
            transactional = self._d.dialect.transactional
            applied = () if transactional else tuple(self.applied)
            note = (
                "; uncommitted changes are discarded"
                if transactional
                else (f"; applied but not saved: {', '.join(applied)}" if applied else "; nothing applied")
            )
            raise SwitchSessionLost(
                f"{exc.message}{note}", target=target, operation=what, evidence=exc.evidence, applied=applied
            ) from None
        if scan != "none":
            found = self._d.dialect.scan(out, retryable=scan == "all")
            if found is not None:
                raise SwitchCommandFailed(
                    f"the switch refused {line!r}" + (" (retryable)" if found.transient else ""),
                    target=target,
                    operation=what,
                    evidence=found.text,
                    line=line,
                    transient=found.transient,
                )
        return out

    def _configure(self, lines: list[str], deadline: Deadline, what: str, port: str) -> None:
        d = self._d.dialect
        if not d.transactional:
            self._send(d.config_enter, deadline, what, port)
        self._dirty = True
        try:
            for line in lines:
                self.commands.append(line)
                self._send(line, deadline, what, port)
        except SwitchCommandFailed:
            if not d.transactional:  # leave config mode so the next read works
                self._send(d.config_exit, deadline, what, port, scan="none")
            raise
        if not d.transactional:
            self._send(d.config_exit, deadline, what, port, scan="none")

    def _read(self, port: str, deadline: Deadline, what: str) -> PortVlans:
        d = self._d.dialect
        outputs = [self._send(c, deadline, what, port, scan="fatal") for c in d.read_commands_for(port)]
        try:
            return d.parse(port, outputs)
        except ValueError as exc:
            excerpt = " | ".join(" ".join(o.split())[:150] for o in outputs)
            raise SwitchParseError(
                f"could not read the VLANs of port {port}: {exc}",
                target=f"{self._d.target} port {port}",
                operation=what,
                evidence=excerpt,
            ) from None

    def _read_table(self, deadline: Deadline, what: str) -> dict[int, frozenset[str]]:
        d = self._d.dialect
        outputs = [self._send(c, deadline, what, scan="fatal") for c in d.vlan_table_commands_for()]
        try:
            return d.parse_vlan_table(outputs)
        except ValueError as exc:
            excerpt = " | ".join(" ".join(o.split())[:150] for o in outputs)
            raise SwitchParseError(
                f"could not read the VLAN table: {exc}", target=self._d.target, operation=what, evidence=excerpt
            ) from None

    def _save(self) -> None:
        d = self._d.dialect
        deadline = self._d._deadline()
        self._save_tried = True

        def attempt() -> None:
            out = self._send(d.save_command, deadline, "save configuration", confirm=d.save_confirm)
            if d.save_success and not re.search(d.save_success, out):
                raise SwitchCommandFailed(
                    f"{d.save_command!r} did not report success",
                    target=self._d.target,
                    operation="save configuration",
                    evidence=" ".join(out.split())[:200],
                    line=d.save_command,
                    transient=False,
                )

        retry(attempt, transient=_busy, deadline=deadline, backoff=self._d.busy_backoff)
        self.saved = True
        log.info("switch %s: saved (%d change(s))", self._d.target, len(self.applied))

    # ----- session end ------------------------------------------------------------------------

    def _finish(self) -> None:
        if self._cli is not None and (self._dirty or self._force_save):
            self._save()
        elif self._cli is None and self._force_save:
            self._open()
            self._save()

    def _abort(self, exc: BaseException) -> None:
        if self._cli is None or self._lost or self._d.dialect.transactional:
            return
        if self._dirty and not self._save_tried:
            try:
                self._save()
            except SwitchError as save_exc:
                log.warning(
                    "switch %s: could not save after a failure (%s); verified but unsaved: %s",
                    self._d.target,
                    save_exc,
                    ", ".join(self.applied) or "none",
                )

    def _close(self) -> None:
        cli, self._cli = self._cli, None
        if cli is None:
            return
        d = self._d.dialect
        if d.transactional and not self._lost:
            try:  # leaving private configuration mode discards an uncommitted candidate
                cli.send(d.config_exit, timeout=min(5.0, self._d.timeout), confirm=(r"\[yes,no\]", "yes"))
            except SwitchError:
                pass
        cli.close(graceful=not self._lost)


def connect(
    switch_type: str,
    host: str,
    username: str,
    password: str | Secret,
    port: int = 22,
    *,
    enable_secret: str | Secret | None = None,
    timeout: float = 30,
    connect_backoff: Backoff = CONNECT_BACKOFF,
    busy_backoff: Backoff = BUSY_BACKOFF,
    cli_factory: CliFactory | None = None,
    clock: Clock | None = None,
) -> SwitchDriver:
    """A driver for one switch; ``switch_type`` is the rack config's type (``Force10``,
    ``CiscoIOS``...) or a netmiko device type. Nothing connects until the first operation.
    ``timeout`` bounds each operation (connect with its retries, one change, the save)."""
    return SwitchDriver(
        dialect_for(switch_type),
        host,
        username,
        password,
        port,
        enable_secret=enable_secret,
        timeout=timeout,
        connect_backoff=connect_backoff,
        busy_backoff=busy_backoff,
        cli_factory=cli_factory,
        clock=clock,
    )
