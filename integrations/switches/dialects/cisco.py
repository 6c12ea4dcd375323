"""The Cisco family (IOS, NX-OS; Arista EOS speaks the same words): switchport modes.

A port is an access port (one untagged VLAN) or a trunk (a native VLAN plus tagged ones). A
trunk's allowed list defaults to *all* VLANs, so ``allowed vlan add N`` on a fresh trunk
changes nothing; instead the driver renders the port's whole target shape from the state it
just read: access when no tagged VLAN remains, else trunk with an explicit native VLAN and
allowed list (``allowed`` = tagged VLANs plus the native one). The lines are absolute, so a
rerun after a partial failure converges. Native and allowed are set before the mode, so a
port never sits in trunk mode allowing every VLAN.

IOS's VLAN table (the lab simulates IOS only): the defined VLANs are ``show vlan brief``'s rows
(the VLAN database, which ``show running-config`` omits in VTP server mode). That command lists
access ports only, so the ports carrying each VLAN come from every interface block of
``show running-config``, read as ``parse_switchport`` reads one port: a trunk carries its
native VLAN and its allowed list (every VLAN when no ``allowed`` line narrows it), whatever its
link state (``show interfaces trunk`` lists operational trunks only). An ``interface VlanN``
(SVI) counts as carrying N. ``no vlan N`` deletes a definition; 1002-1005 are reserved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from metalflow.integrations.switches.dialect import Dialect, interface_block, interface_blocks, parse_switchport
from metalflow.integrations.switches.model import DEFAULT_VLAN, PortVlans

_CISCO_ERRORS = (
    re.compile(r"(?m)^\s*%\s*(?:Invalid|Incomplete|Ambiguous|Unrecognized|Bad|Error)"),
    re.compile(r"(?m)^\s*%?\s*ERROR:"),
    re.compile(r"(?m)^Command rejected"),
)
# ``show vlan brief``: its header, and a row: id, name, status, then the first ports.
_BRIEF_HEADER = re.compile(r"\s*VLAN\s+Name\s+Status\s+Ports\s*")
_BRIEF_ROW = re.compile(r"(\d{1,4})\s+\S.*?\s(?:active|suspended|act/\w+|sus/\w+)(?:\s+(.*))?")
_SVI = re.compile(r"(?i)vlan\s*(\d{1,4})")


class CiscoStyle(Dialect):
    """Shared by IOS, NX-OS and EOS: two templates chosen by the port's target shape. The
    templates are IOS's, which EOS speaks word for word."""

    required_templates = ("access", "trunk")
    templates = {
        "access": ("interface {port}", "switchport mode access", "switchport access vlan {untagged}"),
        "trunk": (
            "interface {port}",
            "switchport trunk native vlan {native}",
            "switchport trunk allowed vlan {allowed}",
            "switchport mode trunk",
        ),
    }
    read_commands = ("show running-config interface {port}",)
    fatal_errors = _CISCO_ERRORS

    def template_key(self, op: str, tagged: bool, target: PortVlans) -> str:
        return "trunk" if target.tagged else "access"

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        header = re.compile(rf"interface\s+{re.escape(port)}", re.I)
        return parse_switchport(interface_block(outputs[0], header))


class CiscoIOS(CiscoStyle):
    name = "cisco_ios"
    aliases = ("CiscoIOS", "cisco_ios", "ios", "cisco")
    netmiko_device_type = "cisco_ios"
    port_number = r"\d{1,2}(?:/\d{1,2}){1,3}"
    kinds = {
        "fastethernet": "FastEthernet",
        "fa": "FastEthernet",
        "gigabitethernet": "GigabitEthernet",
        "gi": "GigabitEthernet",
        "gig": "GigabitEthernet",
        "tengigabitethernet": "TenGigabitEthernet",
        "te": "TenGigabitEthernet",
        "twentyfivegige": "TwentyFiveGigE",
        "twe": "TwentyFiveGigE",
        "fortygigabitethernet": "FortyGigabitEthernet",
        "fo": "FortyGigabitEthernet",
        "hundredgige": "HundredGigE",
        "hu": "HundredGigE",
    }
    port_example = "GigabitEthernet1/0/1"
    templates = {**CiscoStyle.templates, "delete_vlan": ("no vlan {vlan}",)}
    vlan_table_commands = ("show vlan brief", "show running-config")
    reserved_vlans = frozenset({DEFAULT_VLAN, 1002, 1003, 1004, 1005})

    def parse_vlan_table(self, outputs: Sequence[str]) -> dict[int, frozenset[str]]:
        table = self._vlan_brief(outputs[0])
        for name, lines in interface_blocks(outputs[1]).items():
            if svi := _SVI.fullmatch(name):
                carried = {int(svi.group(1))}
            else:
                pv = parse_switchport(lines)
                carried = set(pv.tagged) | ({pv.untagged} if pv.untagged else set())
            port = self.port_or_printed(name)
            for vid in carried & table.keys():
                table[vid].add(port)
        return {vid: frozenset(ports) for vid, ports in table.items() if vid not in self.reserved_vlans}

    def _vlan_brief(self, output: str) -> dict[int, set[str]]:
        """``show vlan brief``: VLAN id -> the (access) ports it lists. Continuation lines
        (indented) carry more ports of the row above; any other line is an error."""
        lines = output.splitlines()
        start = next((i for i, ln in enumerate(lines) if _BRIEF_HEADER.fullmatch(ln)), None)
        if start is None:
            raise ValueError("no VLAN table (header 'VLAN Name Status Ports') in the output")
        table: dict[int, set[str]] = {}
        vid: int | None = None
        for line in lines[start + 1 :]:
            if not line.strip() or re.fullmatch(r"[-\s]+", line):
                continue
            if row := _BRIEF_ROW.fullmatch(line.rstrip()):
                vid, ports = int(row.group(1)), row.group(2) or ""
                table[vid] = set()
            elif vid is not None and line[:1].isspace():
                ports = line.strip()
            else:
                raise ValueError(f"not a VLAN row of 'show vlan brief': {line.strip()[:80]!r}")
            table[vid].update(self.port_or_printed(p.strip()) for p in ports.split(",") if p.strip())
        return table


class CiscoNXOS(CiscoStyle):
    """NX-OS ports may default to routed mode: the family's lines with ``switchport`` first."""

    name = "cisco_nxos"
    aliases = ("CiscoNXOS", "cisco_nxos", "nxos", "nexus")
    netmiko_device_type = "cisco_nxos"
    port_number = r"\d{1,3}/\d{1,3}(?:/\d{1,3})?"
    kinds = {"ethernet": "Ethernet", "eth": "Ethernet", "e": "Ethernet"}
    port_example = "Ethernet1/1"
    templates = {key: (enter, "switchport", *rest) for key, (enter, *rest) in CiscoStyle.templates.items()}
    save_command = "copy running-config startup-config"
