"""Switch steps: bring a host's cabled ports to a target VLAN state, read ports back.

Ports are converged through the process's group commit (``integrations.switches.batch``: one
session per switch shared by the runs of this process converging ports on it at the same
time), a part of the process's ``Runtime``; each run logs its own ports, in its own run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import groupby

from metalflow.integrations.inventory import HostInfo, SwitchInfo
from metalflow.integrations.switches import PortVlans
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


def _locked_session(sw: SwitchInfo) -> SessionOpener:
    """Opens one session on ``sw`` under ``switch_lock``; it saves when the block ends."""

    @contextmanager
    def open_session(force_save: bool = False) -> Iterator[PortSession]:
        driver = clients.switch(sw)
        try:
            with switch_lock(sw.name), driver.session(force_save=force_save) as s:
                yield s
        finally:
            driver.close()

    return open_session


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
