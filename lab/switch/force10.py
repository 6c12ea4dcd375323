"""Dell Force10 FTOS / OS9, the seed's "Force10" (netmiko ``dell_force10``).

Ports are ``1/1/N`` written ``TenGigabitEthernet 1/1/N`` (any unique prefix of the type,
``Te 1/1/N``, ``tengig 1/1/N``). VLAN membership is configured under the VLAN interface::

    tor-1(conf)#interface vlan 100
    tor-1(conf-if-vl-100)#untagged TenGigabitEthernet 1/1/1
    tor-1(conf-if-vl-100)#tagged TenGigabitEthernet 1/1/2-3,1/1/5

Port record to ``PortVlans``: a port is untagged in at most one non-default VLAN
(``untagged``; None means it is an untagged member of the default VLAN 1) and tagged in any
number (``tagged``).

How strict the simulator is (FTOS rules kept, and where it is lenient):

- A port must be in Layer 2 mode (``switchport``) to join a VLAN. Ports start in Layer 2
  mode, no shutdown, untagged in the default VLAN (a lab switch cabled and prepared for its
  hosts); ``no switchport`` makes one Layer 3, after which ``untagged``/``tagged`` fail with
  ``% Error: Port is not in Layer 2 mode Te 1/1/1.`` (``switchport`` again is a no-op on an
  L2 port). ``no switchport`` on a port in a non-default VLAN fails.
- A port is untagged in only one VLAN besides the default one:
  ``% Error: Port is untagged in another Vlan.``
- A port cannot be both tagged and untagged in one VLAN (``% Error: Port is already tagged
  in this Vlan.`` and the converse); the default VLAN cannot be tagged.
- Lenient: ``portmode hybrid`` (needed on real FTOS before a port may be untagged in one VLAN
  and tagged in others) is accepted and shown but not required. ``no untagged``/``no
  tagged`` of a port that is not a member is a silent no-op.
- Transient error of the "busy" fault: ``% Error: Config DB is locked by another session.
  Try again later.``

Output formats: ``show vlan`` and ``show vlan id N`` (Codes/Q table; ports compressed as
``Te 1/1/1-3,1/1/5``, continuation lines repeat the Q column),
``show running-config interface vlan N`` (``tagged``/``untagged`` lines in the same list
notation; the default VLAN shows its members as a ``!untagged`` comment),
``show running-config interface tengigabitethernet 1/1/1``,
``show interfaces switchport tengigabitethernet 1/1/1`` (U/T membership table).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .dialect import CONFIG, ENABLE, USER, CliError, Dialect, wrap_items
from .grammar import Command, Line, Num, ParseError, Port, PortList, Word, cmd
from .model import DEFAULT_VLAN, Config, PortVlans, format_vlan_list, ranges

if TYPE_CHECKING:  # pragma: no cover
    from .session import CliSession

IF_TE = "if-te"
IF_VL = "if-vl"

PORT_TYPE = "TenGigabitEthernet"
# Interface types the parser knows (so abbreviations are judged among all of them); only
# TenGigabitEthernet ports exist on the simulated switch.
INTERFACE_TYPES = ("TenGigabitEthernet", "GigabitEthernet", "fortyGigE", "hundredGigE")
SHORT = {"TenGigabitEthernet": "Te", "GigabitEthernet": "Gi", "fortyGigE": "Fo", "hundredGigE": "Hu"}


@dataclass(frozen=True)
class F10Port:
    switchport: bool = True
    shutdown: bool = False
    untagged: int | None = None  # the non-default VLAN it is untagged in; None: default VLAN
    tagged: frozenset[int] = field(default_factory=frozenset)
    hybrid: bool = False
    description: str = ""


def _port_key(number: str) -> tuple[int, ...]:
    return tuple(int(x) for x in number.split("/"))


def compress_ports(numbers: Sequence[str]) -> list[str]:
    """["1/1/1", "1/1/2", "1/1/3", "1/1/5"] -> ["1/1/1-3", "1/1/5"] (FTOS range notation)."""
    groups: dict[str, list[int]] = {}
    for n in sorted(numbers, key=_port_key):
        prefix, _, last = n.rpartition("/")
        groups.setdefault(prefix, []).append(int(last))
    items = []
    for prefix, lasts in groups.items():
        for a, b in ranges(lasts):
            items.append(f"{prefix}/{a}" if a == b else f"{prefix}/{a}-{b}")
    return items


class Force10(Dialect):
    name = "force10"
    netmiko_device_type = "dell_force10"
    port_type = PORT_TYPE
    submodes = (IF_TE, IF_VL)
    busy_lines = ("% Error: Config DB is locked by another session. Try again later.",)

    # ---- grammar -------------------------------------------------------------------------

    def exec_commands(self, privileged: bool) -> list[Command]:
        cmds = super().exec_commands(privileged)
        if privileged:
            cmds.append(cmd("configure", "configure", config=False))
        return cmds

    def show_commands(self, privileged: bool) -> list[Command]:
        cmds = [
            cmd("show vlan", "show_vlan", config=False),
            cmd("show vlan id <vid>", "show_vlan", config=False, vid=Num(1, 4094)),
        ]
        for t in INTERFACE_TYPES:
            cmds.append(cmd(f"show interfaces switchport {t} <port>", "show_switchport", config=False, port=Port(t)))
            if privileged:
                cmds.append(
                    cmd(f"show running-config interface {t} <port>", "show_running_port", config=False, port=Port(t))
                )
        if privileged:
            cmds.append(
                cmd("show running-config interface vlan <vid>", "show_running_vlan", config=False, vid=Num(1, 4094))
            )
        return cmds

    def config_commands(self) -> list[Command]:
        cmds = [cmd(f"interface {t} <port>", "interface_port", port=Port(t)) for t in INTERFACE_TYPES]
        cmds += [
            cmd("interface vlan <vid>", "interface_vlan", vid=Num(1, 4094)),
            cmd("no interface vlan <vid>", "no_interface_vlan", vid=Num(1, 4094)),
        ]
        return cmds

    def submode_commands(self, mode: str) -> list[Command]:
        common = [
            cmd("shutdown", "shutdown"),
            cmd("no shutdown", "no_shutdown"),
            cmd("description <text>", "description", text=Line()),
            cmd("no description", "no_description"),
            cmd("no ip address", "noop"),
        ]
        if mode == IF_TE:
            return common + [
                cmd("switchport", "switchport"),
                cmd("no switchport", "no_switchport"),
                cmd("portmode hybrid", "portmode_hybrid"),
                cmd("no portmode hybrid", "no_portmode_hybrid"),
            ]
        cmds = common + [
            cmd("name <text>", "description", text=Word()),
            cmd("no name", "no_description"),
        ]
        for t in INTERFACE_TYPES:
            for verb in ("untagged", "tagged"):
                cmds.append(cmd(f"{verb} {t} <ports>", verb, ports=PortList(t)))
                cmds.append(cmd(f"no {verb} {t} <ports>", "no_" + verb, ports=PortList(t)))
        return cmds

    # ---- texts ---------------------------------------------------------------------------

    def prompt(self, hostname: str, mode: str, ctx: Any) -> str:
        if mode == USER:
            return f"{hostname}>"
        if mode == ENABLE:
            return f"{hostname}#"
        if mode == CONFIG:
            return f"{hostname}(conf)#"
        if mode == IF_TE:
            return f"{hostname}(conf-if-te-{ctx})#"
        if mode == IF_VL:
            return f"{hostname}(conf-if-vl-{ctx})#"
        raise ValueError(mode)

    def parse_error_lines(self, err: ParseError, caret_col: int, line: str) -> list[str]:
        if err.kind == "incomplete":
            return ["% Error: Incomplete command."]
        if err.kind == "ambiguous":
            return ["% Error: Ambiguous command."]
        return [" " * caret_col + "^", '% Error: Invalid input at "^" marker.']

    def saved_lines(self) -> list[str]:
        return [
            "!",
            f"{self.timestamp()}: %STKUNIT1-M:CP %FILEMGR-5-FILESAVED: Copied running-config to "
            "startup-config in flash by default",
        ]

    def do_copy_run_start(self, s: CliSession) -> list[str]:
        s.ask("Proceed to copy the file [confirm yes/no]: ", self._confirm_copy)
        return ["", "File with same name already exist."]

    def _confirm_copy(self, s: CliSession, answer: str) -> list[str]:
        if answer.lower() in ("y", "ye", "yes"):
            s.save()
            text = self.render_running(s.startup(), s.hostname)
            return ["!", f"{sum(len(x) + 1 for x in text)} bytes successfully copied"]
        return []

    # ---- ports ---------------------------------------------------------------------------

    def canonical_port(self, type_name: str, number: str) -> str:
        if type_name != PORT_TYPE:
            return f"{type_name}{number}"  # never a front-panel port name
        return number

    def short_port(self, canonical: str) -> str:
        return f"Te {canonical}"

    def port_aliases(self, name: str) -> str | None:
        m = re.match(r"^\s*(?:([A-Za-z]+)\s*)?(\d+/\d+/\d+)\s*$", name)
        if not m:
            return None
        kind = (m.group(1) or "te").lower()
        return m.group(2) if PORT_TYPE.lower().startswith(kind) else None

    def default_port(self) -> F10Port:
        return F10Port()

    def port_vlans(self, port: F10Port) -> PortVlans:
        return PortVlans(port.untagged, port.tagged)

    def with_port_vlans(self, config: Config, name: str, vlans: PortVlans) -> Config:
        if DEFAULT_VLAN in vlans.tagged:
            raise ValueError(f"FTOS cannot tag the default VLAN on port {name}")
        port = replace(config.ports[name], switchport=True, untagged=vlans.untagged, tagged=vlans.tagged)
        config = config.with_port(name, port)
        for vid in sorted(({vlans.untagged} if vlans.untagged else set()) | vlans.tagged):
            if vid not in config.vlans:
                config = config.with_vlan(vid)
        return config

    # ---- config handlers -----------------------------------------------------------------

    def do_interface_port(self, s: CliSession, port: str) -> list[str]:
        s.enter(IF_TE, port)
        return []

    def do_interface_vlan(self, s: CliSession, vid: int) -> list[str]:
        if vid not in s.config.vlans:
            s.commit(s.config.with_vlan(vid))
        s.enter(IF_VL, vid)
        return []

    def do_no_interface_vlan(self, s: CliSession, vid: int) -> list[str]:
        if vid == DEFAULT_VLAN:
            raise CliError("% Error: Default VLAN cannot be deleted.")
        config = s.config
        if vid not in config.vlans:
            raise CliError(f"% Error: No such interface Vlan {vid}.")
        changes = {}
        for name, p in config.ports.items():
            if p.untagged == vid or vid in p.tagged:
                changes[name] = replace(p, untagged=None if p.untagged == vid else p.untagged, tagged=p.tagged - {vid})
        s.commit(config.with_ports(changes).without_vlan(vid))
        return []

    def _update_port(self, s: CliSession, **values: Any) -> list[str]:
        port = s.ctx
        s.commit(s.config.with_port(port, replace(s.config.ports[port], **values)))
        return []

    def _update_vlan_name(self, s: CliSession, text: str) -> list[str]:
        s.commit(s.config.with_vlan(s.ctx, text))
        return []

    def do_noop(self, s: CliSession) -> list[str]:
        return []

    def do_shutdown(self, s: CliSession) -> list[str]:
        return self._update_port(s, shutdown=True) if s.mode == IF_TE else []

    def do_no_shutdown(self, s: CliSession) -> list[str]:
        return self._update_port(s, shutdown=False) if s.mode == IF_TE else []

    def do_description(self, s: CliSession, text: str) -> list[str]:
        if s.mode == IF_TE:
            return self._update_port(s, description=text)
        return self._update_vlan_name(s, text)

    def do_no_description(self, s: CliSession) -> list[str]:
        if s.mode == IF_TE:
            return self._update_port(s, description="")
        return self._update_vlan_name(s, "")

    def do_switchport(self, s: CliSession) -> list[str]:
        return self._update_port(s, switchport=True)

    def do_no_switchport(self, s: CliSession) -> list[str]:
        p = s.config.ports[s.ctx]
        if p.untagged is not None or p.tagged:
            raise CliError("% Error: Port is part of a non-default VLAN.")
        return self._update_port(s, switchport=False)

    def do_portmode_hybrid(self, s: CliSession) -> list[str]:
        return self._update_port(s, hybrid=True)

    def do_no_portmode_hybrid(self, s: CliSession) -> list[str]:
        return self._update_port(s, hybrid=False)

    def _member_ports(self, s: CliSession, ports: tuple[str, ...]) -> dict[str, F10Port]:
        found = {name: s.config.ports[name] for name in ports}
        for name, p in found.items():
            if not p.switchport:
                raise CliError(f"% Error: Port is not in Layer 2 mode {self.short_port(name)}.")
        return found

    def do_untagged(self, s: CliSession, ports: tuple[str, ...]) -> list[str]:
        vid: int = s.ctx
        found = self._member_ports(s, ports)
        changes = {}
        for name, p in found.items():
            if vid in p.tagged:
                raise CliError("% Error: Port is already tagged in this Vlan.")
            if p.untagged is not None and p.untagged != vid:
                raise CliError("% Error: Port is untagged in another Vlan.")
            if vid != DEFAULT_VLAN:
                changes[name] = replace(p, untagged=vid)
        s.commit(s.config.with_ports(changes))
        return []

    def do_tagged(self, s: CliSession, ports: tuple[str, ...]) -> list[str]:
        vid: int = s.ctx
        if vid == DEFAULT_VLAN:
            raise CliError("% Error: Default VLAN cannot be tagged.")
        found = self._member_ports(s, ports)
        changes = {}
        for name, p in found.items():
            if p.untagged == vid:
                raise CliError("% Error: Port is already untagged in this Vlan.")
            changes[name] = replace(p, tagged=p.tagged | {vid})
        s.commit(s.config.with_ports(changes))
        return []

    def do_no_untagged(self, s: CliSession, ports: tuple[str, ...]) -> list[str]:
        vid: int = s.ctx
        changes = {n: replace(p, untagged=None) for n in ports if (p := s.config.ports[n]).untagged == vid}
        s.commit(s.config.with_ports(changes))
        return []

    def do_no_tagged(self, s: CliSession, ports: tuple[str, ...]) -> list[str]:
        vid: int = s.ctx
        changes = {n: replace(p, tagged=p.tagged - {vid}) for n in ports if vid in (p := s.config.ports[n]).tagged}
        s.commit(s.config.with_ports(changes))
        return []

    # ---- show ----------------------------------------------------------------------------

    def _members(self, config: Config, vid: int) -> tuple[list[str], list[str]]:
        untagged, tagged = [], []
        for name, p in config.ports.items():
            if not p.switchport:
                continue
            if (p.untagged or DEFAULT_VLAN) == vid:
                untagged.append(name)
            if vid in p.tagged:
                tagged.append(name)
        return untagged, tagged

    def do_show_vlan(self, s: CliSession, vid: int | None = None) -> list[str]:
        config = s.view()
        lines = [
            "",
            "Codes: * - Default VLAN, G - GVRP VLANs, R - Remote Port Mirroring VLANs, P - Primary, "
            "C - Community, I - Isolated",
            "       O - Openflow, Vx - Vxlan",
            "Q: U - Untagged, T - Tagged",
            "   x - Dot1x untagged, X - Dot1x tagged",
            "   o - OpenFlow untagged, O - OpenFlow tagged",
            "   G - GVRP tagged, M - Vlan-stack",
            "   i - Internal untagged, I - Internal tagged, v - VLT untagged, V - VLT tagged",
            "",
            "    NUM    Status    Description                     Q Ports",
        ]
        for v in sorted(config.vlans):
            if vid is not None and v != vid:
                continue
            untagged, tagged = self._members(config, v)
            active = any(not config.ports[n].shutdown for n in untagged + tagged)
            head = (
                f"{'*' if v == DEFAULT_VLAN else '':<4}{v:<7}{'Active' if active else 'Inactive':<10}"
                f"{config.vlans[v][:31]:<32}"
            )
            rows = [("U", chunk) for chunk in wrap_items(compress_ports(untagged), 40)]
            rows += [("T", chunk) for chunk in wrap_items(compress_ports(tagged), 40)]
            if not rows:
                lines.append(head.rstrip())
            for i, (q, chunk) in enumerate(rows):
                lines.append(f"{head if i == 0 else ' ' * len(head)}{q} Te {chunk}")
        return lines

    def do_show_switchport(self, s: CliSession, port: str) -> list[str]:
        p = s.view().ports[port]
        if not p.switchport:
            return []
        tagged_mode = "False" if not p.tagged else ("Hybrid" if p.untagged is not None else "True")
        lines = [
            "Codes:  U - Untagged, T - Tagged",
            "        x - Dot1x untagged, X - Dot1x tagged",
            "        G - GVRP tagged, M - Trunk",
            "        i - Internal untagged, I - Internal tagged, v - VLT untagged, V - VLT tagged",
            "",
            f"Name: {PORT_TYPE} {port}",
            f"802.1QTagged: {tagged_mode}",
            "Vlan membership:",
            "Q       Vlans",
            f"U       {p.untagged or DEFAULT_VLAN}",
        ]
        if p.tagged:
            lines.append(f"T       {format_vlan_list(p.tagged)}")
        lines += ["", f"Native VlanId:     {p.untagged or DEFAULT_VLAN}."]
        return lines

    def _port_block(self, name: str, p: F10Port) -> list[str]:
        lines = ["!", f"interface {PORT_TYPE} {name}"]
        if p.description:
            lines.append(f" description {p.description}")
        lines.append(" no ip address")
        if p.hybrid:
            lines.append(" portmode hybrid")
        if p.switchport:
            lines.append(" switchport")
        lines.append(" shutdown" if p.shutdown else " no shutdown")
        return lines

    def _vlan_block(self, config: Config, vid: int) -> list[str]:
        untagged, tagged = self._members(config, vid)
        lines = ["!", f"interface Vlan {vid}"]
        if config.vlans[vid]:
            lines.append(f" description {config.vlans[vid]}")
        lines.append(" no ip address")
        if vid == DEFAULT_VLAN:
            if untagged:
                lines.append(f" !untagged {PORT_TYPE} {','.join(compress_ports(untagged))}")
        else:
            if tagged:
                lines.append(f" tagged {PORT_TYPE} {','.join(compress_ports(tagged))}")
            if untagged:
                lines.append(f" untagged {PORT_TYPE} {','.join(compress_ports(untagged))}")
        lines.append(" no shutdown")
        return lines

    def do_show_running_port(self, s: CliSession, port: str) -> list[str]:
        return self._port_block(port, s.view().ports[port])

    def do_show_running_vlan(self, s: CliSession, vid: int) -> list[str]:
        config = s.view()
        return self._vlan_block(config, vid) if vid in config.vlans else []

    def render_running(self, config: Config, hostname: str) -> list[str]:
        lines = ["Current Configuration ...", "! Version 9.14(2.0)", "!", f"hostname {hostname}"]
        for name in sorted(config.ports, key=_port_key):
            lines += self._port_block(name, config.ports[name])
        for vid in sorted(config.vlans):
            lines += self._vlan_block(config, vid)
        return lines + ["!", "end"]
