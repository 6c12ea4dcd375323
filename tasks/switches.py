"""Switch steps: bring a host's cabled ports to a target VLAN state, read ports back.

Ports are converged through the process's group commit (``integrations.switches.batch``: one
session per switch shared by the runs of this process converging ports on it at the same
time), a part of the process's ``Runtime``; each run logs its own ports, in its own run.

Adding a VLAN to a port creates its definition on the switch when it had none. Before its
first add of a VLAN on a switch, metalflow reads the switch's VLAN table (where the dialect has
one) and records whether the definition was there (``found``: an operator's) or not (``made``:
the add creates it); the first look at a switch records every definition there as found. The
audit deletes only ``made`` definitions that no port carries any more (``vlan_litter``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import groupby
from typing import Any

from metalflow.integrations.inventory import HostInfo, SwitchInfo
from metalflow.integrations.switches import PortVlans, SwitchNotSupported, SwitchParseError
from metalflow.integrations.switches.batch import PortSession, PortTarget, SessionOpener, SwitchBatches
from metalflow.tasks import clients
from metalflow.tasks.common import logger, runbook_task
from metalflow.tasks.locks import SWITCH_LOCK_WAIT, switch_lock
from metalflow.tasks.runtime import runtime


def switch_batches() -> SwitchBatches:
    """The process's group commit, one ``SwitchBatch`` per switch (made on first use)."""
    return runtime().part("switch-batches", SwitchBatches)


def converge_switch(
    switch: str,
    host: str,
    targets: list[PortTarget],
    open_session: SessionOpener,
    *,
    batches: SwitchBatches | None = None,
    wait: float = SWITCH_LOCK_WAIT,
) -> list[str]:
    """Converge ``host``'s ``targets`` on ``switch`` through the process's group commit (or
    ``batches``), and log each port in the calling run. Returns the CLI lines sent for these
    ports (``"<switch>: <line>"``); raises this request's error."""
    log = logger()
    out = (batches or switch_batches()).of(switch).submit(host, targets, open_session, wait)
    if len(out.hosts) > 1:
        if out.led:
            log.info("switch %s: one session for %d hosts' ports (%s)", switch, len(out.hosts), ", ".join(out.hosts))
        else:  # the leader's run says it at info; fifty more lines would only cost the server
            log.debug("switch %s: in the session led by %s's run (%d hosts)", switch, out.hosts[0], len(out.hosts))
    for p in out.ports:
        if p.steps:
            log.info("%s %s: %s", switch, p.target.port, p)
        else:
            log.info("%s %s already as wanted (%s)", switch, p.target.port, p.target)
    if out.error is not None:
        raise out.error
    return [f"{switch}: {line}" for line in out.commands]


class _RecordingSession:
    """A switch session as the group commit uses it, which records who made a VLAN's
    definition before metalflow first adds that VLAN to a port of the switch."""

    def __init__(self, session: Any, switch: str) -> None:
        self._s, self._switch = session, switch
        self._known: dict[int, str] | None = None
        self._table = True  # the dialect has a VLAN table (until it says otherwise)
        self._emptied: set[int] = set()  # VLANs metalflow made that this session took off a port

    def __getattr__(self, name: str) -> Any:  # port_vlans, remove_vlan, commands, applied
        return getattr(self._s, name)

    def add_vlan(self, port: str, vlan: int, tagged: bool) -> None:
        self._note(vlan)
        self._s.add_vlan(port, vlan, tagged)
        self._emptied.discard(vlan)

    def remove_vlan(self, port: str, vlan: int) -> None:
        self._s.remove_vlan(port, vlan)
        if self._table and self._origins().get(vlan) == "made":
            self._emptied.add(vlan)

    def _origins(self) -> dict[int, str]:
        if self._known is None:
            self._known = clients.inventory().ports.vlan_origins(self._switch)
        return self._known

    def delete_unused(self) -> list[int]:
        """At the end of the session: delete the definitions metalflow made of the VLANs this
        session took off ports, when no port carries them any more and the inventory wants
        them on none. Best effort: what is left, the audit finds."""
        if not self._emptied:
            return []
        try:
            table = self._s.vlan_table()
            wanted = {row.vlan for row in clients.inventory().ports.switch_vlans(self._switch)}
            gone = sorted(v for v in self._emptied if v in table and not table[v] and v not in wanted)
            for vlan in gone:
                self._s.delete_vlan(vlan)
            return gone
        except Exception as exc:  # noqa: BLE001 - the port changes are done; the audit lists what is left
            logger().warning(
                "switch %s: unused VLAN definitions not deleted (%s): the audit lists them", self._switch, exc
            )
            return []

    def _note(self, vlan: int) -> None:
        if not self._table:
            return
        inv = clients.inventory()
        known = self._origins()
        if vlan in known:
            return
        try:
            table = self._s.vlan_table()
        except SwitchNotSupported:
            self._table = False  # never recorded, so never deleted: the safe side
            return
        except SwitchParseError as exc:
            logger().warning("switch %s: VLAN table not read (%s): VLAN %d not recorded", self._switch, exc, vlan)
            return
        found = set(table) if not known else {vlan} & set(table)  # first look: all an operator's
        made = set() if vlan in table else {vlan}
        inv.ports.record_vlans(self._switch, found=found, made=made)
        known.update(dict.fromkeys(found, "found") | dict.fromkeys(made, "made"))


def _locked_session(sw: SwitchInfo) -> SessionOpener:
    """Opens one session on ``sw`` under ``switch_lock``; it saves when the block ends."""

    @contextmanager
    def open_session(force_save: bool = False) -> Iterator[PortSession]:
        driver = clients.switch(sw)
        try:
            with switch_lock(sw.name), driver.session(force_save=force_save) as s:
                recording = _RecordingSession(s, sw.name)
                yield recording
                gone = recording.delete_unused()
                if gone:
                    logger().info("switch %s: VLAN definitions metalflow made, now unused, deleted: %s", sw.name, gone)
        finally:
            driver.close()

    return open_session


def vlan_litter(sw: SwitchInfo, *, remove: bool) -> tuple[list[int], list[int]]:
    """The VLAN definitions on ``sw`` that metalflow made and no port carries any more, nor
    is meant to (no desired VLAN of the inventory on the switch), and of those the ones
    deleted (``remove``), in one session under ``switch_lock``. ([], []) for a dialect with no
    VLAN table: nothing recorded, nothing deleted."""
    inv = clients.inventory()
    driver = clients.switch(sw)
    try:
        with switch_lock(sw.name), driver.session() as s:
            try:
                table = s.vlan_table()
            except SwitchNotSupported:
                return [], []
            made = {v for v, origin in inv.ports.vlan_origins(sw.name).items() if origin == "made"}
            wanted = {row.vlan for row in inv.ports.switch_vlans(sw.name)}
            litter = sorted(v for v, ports in table.items() if not ports and v in made and v not in wanted)
            deleted = []
            if remove:
                for vlan in litter:
                    s.delete_vlan(vlan)
                    deleted.append(vlan)
            return litter, deleted
    finally:
        driver.close()


@runbook_task(system="switch", name="converge-ports", run_name="converge-ports {host.name}")
def converge_ports(host: HostInfo, targets: list[PortTarget]) -> list[str]:
    """Per switch: every port read first, only the difference sent (removals before additions),
    every change verified by the driver, one save per session. The session is the only one on
    the switch while it lasts (``switch_lock``) and is shared with the other runs of this
    process converging ports on that switch at the same time (group commit:
    ``integrations.switches.batch``); this run gets the lines sent for its own ports, or its own error. Returns the
    CLI lines sent, each prefixed ``"<switch>: "``."""
    sent: list[str] = []
    inv = clients.inventory()
    for sw_name, group in groupby(sorted(targets, key=lambda t: (t.switch, t.port)), key=lambda t: t.switch):
        sent += converge_switch(sw_name, host.name, list(group), _locked_session(inv.ports.get_switch(sw_name)))
    return sent


def read_ports(sw: SwitchInfo, ports: Iterable[str]) -> dict[str, PortVlans]:
    """Read ports of ``sw`` back (port → VLANs), in one session under ``switch_lock``."""
    out: dict[str, PortVlans] = {}
    driver = clients.switch(sw)
    try:
        with switch_lock(sw.name), driver.session() as s:
            for port in ports:
                out[port] = s.port_vlans(port)
    finally:
        driver.close()
    return out
