"""Cisco IOS (Catalyst access switch), netmiko ``cisco_ios``.

Ports are ``GigabitEthernet1/0/N``; the parser accepts the type joined or spaced and
abbreviated (``Gi1/0/1``, ``gi 1/0/1``). VLANs are created with ``vlan N`` (+ ``name``), and
ports join them through ``switchport`` commands in interface mode.

Port record to ``PortVlans``:

- access (or the factory default ``dynamic auto``, which runs as access without a trunking
  neighbour): ``untagged`` = the access VLAN (None when 1), ``tagged`` = {};
- trunk: ``untagged`` = the native VLAN (None when 1), ``tagged`` = allowed VLANs minus the
  native one. "Allowed all" (the default, or ``switchport trunk allowed vlan all``) maps to an
  empty tagged set: the neutral model only lists VLANs the port was explicitly given. Note
  that, as on IOS, ``allowed vlan add N`` on an "all" trunk leaves it "all"; a client that
  wants exactly N tagged sets ``allowed vlan N`` (or ``none`` first).

Writing ``PortVlans`` (drift, initial state): tagged VLANs make the port a trunk with that
native and allowed list; no tagged VLANs make it an access port in the untagged VLAN.
Missing VLANs are created.

Messages: ``% Invalid input detected at '^' marker.`` (with the caret line),
``% Incomplete command.``, ``% Ambiguous command: "..."``, ``% Access VLAN does not exist.
Creating vlan N``, ``Command rejected: Bad VLAN list - ...`` (``vlan 4095``, bad allowed
lists), ``VLAN id N not found in current VLAN database``. Transient error of the "busy"
fault: ``% Configuration mode is locked by process '312' user 'netops' from terminal '2'.
Please try later.`` ``copy running-config startup-config`` asks
``Destination filename [startup-config]?`` as IOS does (netmiko's default save is
``write mem``, which does not ask).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .dialect import CONFIG, ENABLE, USER, CliError, Dialect
from .grammar import Command, Line, Num, ParseError, Port, Token, VlanText, Word, cmd
from .model import (
    DEFAULT_VLAN,
    VLAN_MAX,
    VLAN_MIN,
    Config,
    PortVlans,
    VlanListError,
    format_vlan_list,
    parse_vlan_list,
)

if TYPE_CHECKING:  # pragma: no cover
    from .session import CliSession

IF = "if"
VLAN = "vlan"

PORT_TYPE = "GigabitEthernet"
INTERFACE_TYPES = ("GigabitEthernet", "TenGigabitEthernet", "FastEthernet", "FortyGigabitEthernet", "TwentyFiveGigE")
SHORT = {
    "GigabitEthernet": "Gi",
    "TenGigabitEthernet": "Te",
    "FastEthernet": "Fa",
    "FortyGigabitEthernet": "Fo",
    "TwentyFiveGigE": "Twe",
}
RESERVED_VLANS = {1002: "fddi-default", 1003: "token-ring-default", 1004: "fddinet-default", 1005: "trnet-default"}
ALL_VLANS = frozenset(range(VLAN_MIN, VLAN_MAX + 1))
_JOINED = re.compile(r"^([A-Za-z][A-Za-z-]*?)(\d[\d/.:]*)$")


@dataclass(frozen=True)
class IosPort:
    mode: str = "dynamic"  # "dynamic" (dynamic auto, the default), "access" or "trunk"
    access_vlan: int = DEFAULT_VLAN
    native_vlan: int = DEFAULT_VLAN
    allowed: frozenset[int] | None = None  # None: ALL
    encapsulation: str = ""  # "" (not configured), "dot1q", "isl", "negotiate"
    nonegotiate: bool = False
    shutdown: bool = False
    description: str = ""


def vlan_name(config: Config, vid: int) -> str:
    return config.vlans.get(vid) or f"VLAN{vid:04d}"


def _port_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


class CiscoIos(Dialect):
    name = "cisco_ios"
    netmiko_device_type = "cisco_ios"
    port_type = PORT_TYPE
    submodes = (IF, VLAN)
    busy_lines = ("% Configuration mode is locked by process '312' user 'netops' from terminal '2'. Please try later.",)

    # ---- grammar -------------------------------------------------------------------------

    def exec_commands(self, privileged: bool) -> list[Command]:
        cmds = super().exec_commands(privileged)
        if privileged:
            cmds += [
                cmd("configure", "configure_ask", config=False),
                cmd("write", "write_memory", config=False),
            ]
        return cmds

    def show_commands(self, privileged: bool) -> list[Command]:
        cmds = [
            cmd("show vlan", "show_vlan", config=False),
            cmd("show vlan brief", "show_vlan_brief", config=False),
            cmd("show vlan id <vid>", "show_vlan_id", config=False, vid=Num(1, 4094)),
        ]
        for t in INTERFACE_TYPES:
            cmds.append(cmd(f"show interfaces {t} <port> switchport", "show_switchport", config=False, port=Port(t)))
            if privileged:
                cmds.append(
                    cmd(f"show running-config interface {t} <port>", "show_running_port", config=False, port=Port(t))
                )
        return cmds

    def config_commands(self) -> list[Command]:
        cmds = [cmd(f"interface {t} <port>", "interface", port=Port(t)) for t in INTERFACE_TYPES]
        cmds += [
            cmd("vlan <vlans>", "vlan", vlans=VlanText()),
            cmd("no vlan <vlans>", "no_vlan", vlans=VlanText()),
        ]
        return cmds

    def submode_commands(self, mode: str) -> list[Command]:
        if mode == VLAN:
            return [
                cmd("name <text>", "name", text=Word(r"^\S{1,32}$")),
                cmd("no name", "no_name"),
            ]
        v = Num(1, 4094)
        return [
            cmd("switchport", "noop"),
            cmd("switchport mode access", "mode_access"),
            cmd("switchport mode trunk", "mode_trunk"),
            cmd("no switchport mode", "no_mode"),
            cmd("switchport access vlan <vid>", "access_vlan", vid=v),
            cmd("no switchport access vlan", "no_access_vlan"),
            cmd("switchport trunk native vlan <vid>", "native_vlan", vid=v),
            cmd("no switchport trunk native vlan", "no_native_vlan"),
            cmd("switchport trunk allowed vlan <vlans>", "allowed_set", vlans=VlanText()),
            cmd("switchport trunk allowed vlan add <vlans>", "allowed_add", vlans=VlanText()),
            cmd("switchport trunk allowed vlan remove <vlans>", "allowed_remove", vlans=VlanText()),
            cmd("switchport trunk allowed vlan except <vlans>", "allowed_except", vlans=VlanText()),
            cmd("switchport trunk allowed vlan all", "allowed_all"),
            cmd("switchport trunk allowed vlan none", "allowed_none"),
            cmd("no switchport trunk allowed vlan", "allowed_all"),
            cmd("switchport trunk encapsulation dot1q", "encap_dot1q"),
            cmd("switchport trunk encapsulation isl", "encap_isl"),
            cmd("switchport trunk encapsulation negotiate", "encap_negotiate"),
            cmd("no switchport trunk encapsulation", "no_encapsulation"),
            cmd("switchport nonegotiate", "nonegotiate"),
            cmd("no switchport nonegotiate", "no_nonegotiate"),
            cmd("shutdown", "shutdown"),
            cmd("no shutdown", "no_shutdown"),
            cmd("description <text>", "description", text=Line()),
            cmd("no description", "no_description"),
        ]

    def split_token(self, tok: Token) -> Sequence[Token]:
        """ "Gi1/0/1" is two words to IOS: an interface type and its number."""
        m = _JOINED.match(tok.text)
        if m and len(m.group(1)) >= 2 and any(t.lower().startswith(m.group(1).lower()) for t in INTERFACE_TYPES):
            return (Token(m.group(1), tok.col), Token(m.group(2), tok.col + len(m.group(1))))
        return (tok,)

    # ---- texts ---------------------------------------------------------------------------

    def prompt(self, hostname: str, mode: str, ctx: Any) -> str:
        if mode == USER:
            return f"{hostname}>"
        if mode == ENABLE:
            return f"{hostname}#"
        if mode == CONFIG:
            return f"{hostname}(config)#"
        if mode == IF:
            return f"{hostname}(config-if)#"
        if mode == VLAN:
            return f"{hostname}(config-vlan)#"
        raise ValueError(mode)

    def parse_error_lines(self, err: ParseError, caret_col: int, line: str) -> list[str]:
        if err.kind == "incomplete":
            return ["% Incomplete command.", ""]
        if err.kind == "ambiguous":
            return [f'% Ambiguous command: "{line.strip()}"']
        return [" " * caret_col + "^", "% Invalid input detected at '^' marker.", ""]

    def unknown_exec_lines(self, line: str) -> list[str] | None:
        return ["% Unknown command or computer name, or unable to find computer address"]

    def configure_banner(self) -> list[str]:
        return ["Enter configuration commands, one per line.  End with CNTL/Z."]

    def saved_lines(self) -> list[str]:
        return ["Building configuration...", "[OK]"]

    def do_configure_ask(self, s: CliSession) -> list[str]:
        s.ask("Configuring from terminal, memory, or network [terminal]? ", self._configure_from)
        return []

    def _configure_from(self, s: CliSession, answer: str) -> list[str]:
        if answer == "" or "terminal".startswith(answer.lower()):
            return self.do_configure(s)
        return ['?Must be "terminal", "memory" or "network"']

    def do_copy_run_start(self, s: CliSession) -> list[str]:
        s.ask("Destination filename [startup-config]? ", self._copy_to)
        return []

    def _copy_to(self, s: CliSession, answer: str) -> list[str]:
        if answer in ("", "startup-config"):
            s.save()
            return self.saved_lines()
        return [f"%Error opening flash:{answer} (Permission denied)"]

    # ---- ports ---------------------------------------------------------------------------

    def canonical_port(self, type_name: str, number: str) -> str:
        return f"{type_name}{number}"

    def short_port(self, canonical: str) -> str:
        for t in INTERFACE_TYPES:
            if canonical.startswith(t):
                return SHORT[t] + canonical[len(t) :]
        return canonical

    def port_aliases(self, name: str) -> str | None:
        m = re.match(r"^\s*([A-Za-z-]+)\s*(\d+/\d+/\d+)\s*$", name)
        if not m or len(m.group(1)) < 2 or not PORT_TYPE.lower().startswith(m.group(1).lower()):
            return None
        return PORT_TYPE + m.group(2)

    def default_port(self) -> IosPort:
        return IosPort()

    def default_vlans(self) -> dict[int, str]:
        return {DEFAULT_VLAN: "default", **RESERVED_VLANS}

    def port_vlans(self, port: IosPort) -> PortVlans:
        if port.mode == "trunk":
            native = port.native_vlan
            tagged = frozenset() if port.allowed is None else port.allowed - {native}
            return PortVlans(None if native == DEFAULT_VLAN else native, tagged)
        access = port.access_vlan
        return PortVlans(None if access == DEFAULT_VLAN else access, frozenset())

    def with_port_vlans(self, config: Config, name: str, vlans: PortVlans) -> Config:
        old = config.ports[name]
        native = vlans.untagged or DEFAULT_VLAN
        if vlans.tagged:
            port = replace(old, mode="trunk", native_vlan=native, allowed=vlans.tagged | {native})
        else:
            port = replace(
                old,
                mode="access" if old.mode == "trunk" else old.mode,
                access_vlan=native,
                native_vlan=DEFAULT_VLAN,
                allowed=None,
            )
        config = config.with_port(name, port)
        for vid in sorted(vlans.tagged | {native}):
            if vid not in config.vlans:
                config = config.with_vlan(vid)
        return config

    # ---- config handlers -----------------------------------------------------------------

    @staticmethod
    def _vlan_list(text: str) -> frozenset[int]:
        result = parse_vlan_list(text)
        if isinstance(result, VlanListError):
            if result.out_of_range:
                raise CliError(
                    f"Command rejected: Bad VLAN list - character #{result.position} ({result.delimiter}) "
                    f"delimits a VLAN number which is out of the range 1..4094."
                )
            raise CliError(
                f"Command rejected: Bad VLAN list - character #{result.position} ('{result.delimiter}') "
                "is a non-numeric character."
            )
        return result

    def do_interface(self, s: CliSession, port: str) -> list[str]:
        s.enter(IF, port)
        return []

    def do_vlan(self, s: CliSession, vlans: str) -> list[str]:
        ids = self._vlan_list(vlans)
        config = s.config
        for vid in sorted(ids):
            if vid not in config.vlans:
                config = config.with_vlan(vid)
        s.commit(config)
        s.enter(VLAN, tuple(sorted(ids)))
        return []

    def do_no_vlan(self, s: CliSession, vlans: str) -> list[str]:
        ids = self._vlan_list(vlans)
        for vid in sorted(ids):
            if vid == DEFAULT_VLAN or vid in RESERVED_VLANS:
                raise CliError(f"%Default VLAN {vid} may not be deleted.")
        config = s.config
        for vid in ids:
            config = config.without_vlan(vid)
        s.commit(config)
        return []

    def do_name(self, s: CliSession, text: str) -> list[str]:
        config = s.config
        for vid in s.ctx:
            if vid == DEFAULT_VLAN or vid in RESERVED_VLANS:
                raise CliError(f"%Default VLAN {vid} may not have its name changed.")
            config = config.with_vlan(vid, text)
        s.commit(config)
        return []

    def do_no_name(self, s: CliSession) -> list[str]:
        config = s.config
        for vid in s.ctx:
            if vid != DEFAULT_VLAN and vid not in RESERVED_VLANS:
                config = config.with_vlan(vid, "")
        s.commit(config)
        return []

    def _update(self, s: CliSession, **values: Any) -> list[str]:
        port = s.ctx
        s.commit(s.config.with_port(port, replace(s.config.ports[port], **values)))
        return []

    def do_noop(self, s: CliSession) -> list[str]:
        return []

    def do_mode_access(self, s: CliSession) -> list[str]:
        return self._update(s, mode="access")

    def do_mode_trunk(self, s: CliSession) -> list[str]:
        return self._update(s, mode="trunk")

    def do_no_mode(self, s: CliSession) -> list[str]:
        return self._update(s, mode="dynamic")

    def do_access_vlan(self, s: CliSession, vid: int) -> list[str]:
        out = []
        if vid not in s.config.vlans:
            s.commit(s.config.with_vlan(vid))
            out = [f"% Access VLAN does not exist. Creating vlan {vid}"]
        self._update(s, access_vlan=vid)
        return out

    def do_no_access_vlan(self, s: CliSession) -> list[str]:
        return self._update(s, access_vlan=DEFAULT_VLAN)

    def do_native_vlan(self, s: CliSession, vid: int) -> list[str]:
        return self._update(s, native_vlan=vid)

    def do_no_native_vlan(self, s: CliSession) -> list[str]:
        return self._update(s, native_vlan=DEFAULT_VLAN)

    def _set_allowed(self, s: CliSession, allowed: frozenset[int] | None) -> list[str]:
        if allowed is not None and allowed == ALL_VLANS:
            allowed = None
        return self._update(s, allowed=allowed)

    def _current_allowed(self, s: CliSession) -> frozenset[int]:
        allowed = s.config.ports[s.ctx].allowed
        return ALL_VLANS if allowed is None else allowed

    def do_allowed_set(self, s: CliSession, vlans: str) -> list[str]:
        return self._set_allowed(s, self._vlan_list(vlans))

    def do_allowed_add(self, s: CliSession, vlans: str) -> list[str]:
        return self._set_allowed(s, self._current_allowed(s) | self._vlan_list(vlans))

    def do_allowed_remove(self, s: CliSession, vlans: str) -> list[str]:
        return self._set_allowed(s, self._current_allowed(s) - self._vlan_list(vlans))

    def do_allowed_except(self, s: CliSession, vlans: str) -> list[str]:
        return self._set_allowed(s, ALL_VLANS - self._vlan_list(vlans))

    def do_allowed_all(self, s: CliSession) -> list[str]:
        return self._set_allowed(s, None)

    def do_allowed_none(self, s: CliSession) -> list[str]:
        return self._set_allowed(s, frozenset())

    def do_encap_dot1q(self, s: CliSession) -> list[str]:
        return self._update(s, encapsulation="dot1q")

    def do_encap_isl(self, s: CliSession) -> list[str]:
        return self._update(s, encapsulation="isl")

    def do_encap_negotiate(self, s: CliSession) -> list[str]:
        return self._update(s, encapsulation="negotiate")

    def do_no_encapsulation(self, s: CliSession) -> list[str]:
        return self._update(s, encapsulation="")

    def do_nonegotiate(self, s: CliSession) -> list[str]:
        return self._update(s, nonegotiate=True)

    def do_no_nonegotiate(self, s: CliSession) -> list[str]:
        return self._update(s, nonegotiate=False)

    def do_shutdown(self, s: CliSession) -> list[str]:
        return self._update(s, shutdown=True)

    def do_no_shutdown(self, s: CliSession) -> list[str]:
        return self._update(s, shutdown=False)

    def do_description(self, s: CliSession, text: str) -> list[str]:
        return self._update(s, description=text)

    def do_no_description(self, s: CliSession) -> list[str]:
        return self._update(s, description="")

    # ---- show ----------------------------------------------------------------------------

    def _brief_rows(self, config: Config, only: int | None = None) -> list[str]:
        lines = [
            "",
            "VLAN Name                             Status    Ports",
            "---- -------------------------------- --------- -------------------------------",
        ]
        for vid in sorted(config.vlans):
            if only is not None and vid != only:
                continue
            status = "act/unsup" if vid in RESERVED_VLANS else "active"
            ports = sorted(
                (n for n, p in config.ports.items() if p.mode != "trunk" and p.access_vlan == vid),
                key=_port_key,
            )
            shorts = [self.short_port(n) for n in ports]
            chunks = [", ".join(shorts[i : i + 4]) for i in range(0, len(shorts), 4)] or [""]
            head = f"{vid:<4} {vlan_name(config, vid)[:32]:<32} {status:<9} "
            for i, chunk in enumerate(chunks):
                lines.append((head if i == 0 else " " * len(head)) + chunk)
        return lines

    def do_show_vlan_brief(self, s: CliSession) -> list[str]:
        return self._brief_rows(s.view())

    def _type_rows(self, config: Config, vids: list[int]) -> list[str]:
        lines = [
            "",
            "VLAN Type  SAID       MTU   Parent RingNo BridgeNo Stp  BrdgMode Trans1 Trans2",
            "---- ----- ---------- ----- ------ ------ -------- ---- -------- ------ ------",
        ]
        for vid in vids:
            kind = {1002: "fddi", 1003: "tr", 1004: "fdnet", 1005: "trnet"}.get(vid, "enet")
            lines.append(f"{vid:<4} {kind:<5} {100000 + vid:<10} 1500  -      -      -        -    -        0      0")
        return lines

    def do_show_vlan(self, s: CliSession) -> list[str]:
        config = s.view()
        return self._brief_rows(config) + self._type_rows(config, sorted(config.vlans))

    def do_show_vlan_id(self, s: CliSession, vid: int) -> list[str]:
        config = s.view()
        if vid not in config.vlans:
            return [f"VLAN id {vid} not found in current VLAN database"]
        return self._brief_rows(config, vid) + self._type_rows(config, [vid])

    def do_show_switchport(self, s: CliSession, port: str) -> list[str]:
        config = s.view()
        p = config.ports[port]
        admin = {"dynamic": "dynamic auto", "access": "static access", "trunk": "trunk"}[p.mode]
        oper = "down" if p.shutdown else ("trunk" if p.mode == "trunk" else "static access")

        def describe(vid: int) -> str:
            if vid not in config.vlans:
                return f"{vid} (Inactive)"
            return f"{vid} ({vlan_name(config, vid)})"

        if p.allowed is None:
            enabled = "ALL"
        elif not p.allowed:
            enabled = "NONE"
        else:
            enabled = format_vlan_list(p.allowed)
        return [
            f"Name: {self.short_port(port)}",
            "Switchport: Enabled",
            f"Administrative Mode: {admin}",
            f"Operational Mode: {oper}",
            f"Administrative Trunking Encapsulation: {p.encapsulation or 'negotiate'}",
            f"Operational Trunking Encapsulation: {'dot1q' if p.mode == 'trunk' else 'native'}",
            f"Negotiation of Trunking: {'Off' if p.nonegotiate or p.mode == 'access' else 'On'}",
            f"Access Mode VLAN: {describe(p.access_vlan)}",
            f"Trunking Native Mode VLAN: {describe(p.native_vlan)}",
            "Administrative Native VLAN tagging: enabled",
            "Voice VLAN: none",
            "Administrative private-vlan host-association: none",
            "Administrative private-vlan mapping: none",
            "Administrative private-vlan trunk native VLAN: none",
            "Administrative private-vlan trunk Native VLAN tagging: enabled",
            "Administrative private-vlan trunk encapsulation: dot1q",
            "Administrative private-vlan trunk normal VLANs: none",
            "Administrative private-vlan trunk associations: none",
            "Administrative private-vlan trunk mappings: none",
            "Operational private-vlan: none",
            f"Trunking VLANs Enabled: {enabled}",
            "Pruning VLANs Enabled: 2-1001",
            "Capture Mode Disabled",
            "Capture VLANs Allowed: ALL",
            "",
            "Protected: false",
            "Unknown unicast blocked: disabled",
            "Unknown multicast blocked: disabled",
            "Appliance trust: none",
        ]

    def _port_block(self, name: str, p: IosPort) -> list[str]:
        lines = [f"interface {name}"]
        if p.description:
            lines.append(f" description {p.description}")
        if p.access_vlan != DEFAULT_VLAN:
            lines.append(f" switchport access vlan {p.access_vlan}")
        if p.encapsulation:
            lines.append(f" switchport trunk encapsulation {p.encapsulation}")
        if p.native_vlan != DEFAULT_VLAN:
            lines.append(f" switchport trunk native vlan {p.native_vlan}")
        if p.allowed is not None:
            lines.append(f" switchport trunk allowed vlan {format_vlan_list(p.allowed) or 'none'}")
        if p.mode != "dynamic":
            lines.append(f" switchport mode {p.mode}")
        if p.nonegotiate:
            lines.append(" switchport nonegotiate")
        if p.shutdown:
            lines.append(" shutdown")
        return lines

    @staticmethod
    def _building(body: list[str]) -> list[str]:
        size = sum(len(line) + 1 for line in body)
        return ["Building configuration...", "", f"Current configuration : {size} bytes"] + body + [""]

    def do_show_running_port(self, s: CliSession, port: str) -> list[str]:
        return self._building(["!"] + self._port_block(port, s.view().ports[port]) + ["end"])

    def render_running(self, config: Config, hostname: str) -> list[str]:
        body = ["!", "version 15.2", "hostname " + hostname, "!"]
        for vid in sorted(config.vlans):
            if vid == DEFAULT_VLAN or vid in RESERVED_VLANS:
                continue
            body.append(f"vlan {vid}")
            if config.vlans[vid]:
                body.append(f" name {config.vlans[vid]}")
            body.append("!")
        for name in sorted(config.ports, key=_port_key):
            body += self._port_block(name, config.ports[name]) + ["!"]
        return self._building(body + ["end"])
