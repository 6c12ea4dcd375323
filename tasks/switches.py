"""Switch steps: bring a host's cabled ports to a target VLAN state, read ports back."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

from integrations.inventory import HostInfo
from integrations.switches import PortVlans
from tasks import clients
from tasks.common import logger, runbook_task
from tasks.locks import switch_lock


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
        raise ValueError(f"{target.switch} {target.port} is a trunk that allows (nearly) every VLAN; give it "
                         "an explicit allowed list before metalflow manages it")
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


@runbook_task(system="switch", name="converge-ports", run_name="converge-ports {host.name}")
def converge_ports(host: HostInfo, targets: list[PortTarget]) -> list[str]:
    """One SSH session per switch, the only one on that switch while it lasts (``switch_lock``);
    every port read first, only the difference sent, every change verified by the driver, one
    save per switch. Returns the CLI lines sent."""
    log = logger()
    sent: list[str] = []
    inv = clients.inventory()
    for sw_name, group in groupby(sorted(targets, key=lambda t: (t.switch, t.port)), key=lambda t: t.switch):
        sw = inv.get_switch(sw_name)
        driver = clients.switch(sw)
        try:
            with switch_lock(sw_name), driver.session() as s:
                for t in group:
                    current = s.port_vlans(t.port)
                    steps = plan_port(current, t)
                    if not steps:
                        log.info("%s %s already as wanted (%s)", sw_name, t.port, t)
                        continue
                    for op, vlan, tagged in steps:
                        if op == "remove":
                            s.remove_vlan(t.port, vlan)
                        else:
                            s.add_vlan(t.port, vlan, tagged)
                    log.info("%s %s: %s", sw_name, t.port, ", ".join(
                        f"{op} {vlan}{' tagged' if tg else ' untagged'}" for op, vlan, tg in steps))
                sent.extend(f"{sw_name}: {line}" for line in s.commands)
        finally:
            driver.close()
    return sent


@runbook_task(system="switch", name="read-ports", run_name="read-ports {host.name}", journal=False)
def read_ports(host: HostInfo, ports: list[tuple[str, str]]) -> dict[str, PortVlans]:
    """Read ports back from the switches (``"switch port"`` → VLANs), one session per switch."""
    out: dict[str, PortVlans] = {}
    inv = clients.inventory()
    for sw_name, group in groupby(sorted(ports), key=lambda p: p[0]):
        driver = clients.switch(inv.get_switch(sw_name))
        try:
            with switch_lock(sw_name), driver.session() as s:
                for _, port in group:
                    out[f"{sw_name} {port}"] = s.port_vlans(port)
        finally:
            driver.close()
    return out
