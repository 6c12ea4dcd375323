"""Dell Force10 FTOS / OS9, the seed's ``Force10``: membership lives on the VLAN interface.

``interface vlan N`` then ``untagged|tagged <port>``; ``no ...`` removes. OS9 lets a port be
untagged in one VLAN only (taking it out of the default VLAN), so the driver's rule "remove
the old untagged VLAN first" is also the switch's. A bare ``1/1/1`` (the rack config's form)
means a TenGigabitEthernet port. Read-back is ``show vlan``: the Q column says U or T and the
port list uses short type names and ranges (``Te 1/1/2-1/1/4,1/1/6``).

The VLAN table is ``show vlan`` too: it lists every defined VLAN, whether a port is up or not,
with its untagged and tagged members (any Q code counts: a VLT or GVRP member carries it too;
a port-channel ``Po1(Te 1/1/1-2)`` counts as ``Port-channel 1`` and its members).
``no interface vlan N`` deletes a definition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import MappingProxyType

from metalflow.integrations.switches.dialect import Dialect
from metalflow.integrations.switches.model import PortVlans
from metalflow.integrations.switches.portlist import expand_ports

_KINDS = MappingProxyType(
    {
        "gigabitethernet": "GigabitEthernet",
        "gi": "GigabitEthernet",
        "tengigabitethernet": "TenGigabitEthernet",
        "te": "TenGigabitEthernet",
        "twentyfivegige": "twentyFiveGigE",
        "tf": "twentyFiveGigE",
        "fortygige": "fortyGigE",
        "fo": "fortyGigE",
        "fiftygige": "fiftyGigE",
        "fi": "fiftyGigE",
        "hundredgige": "hundredGigE",
        "hu": "hundredGigE",
    }
)
_ROW = re.compile(r"^\s*(?:[*A-Za-z]{1,2}\s+)?(\d{1,4})\s+(?:Active|Inactive|Suspended)\b(.*)$", re.I)
_MEMBERS = re.compile(r"(?:^|\s)([UTxXoOGMiIvVH])\s+([A-Za-z]+)\s+([\d/,\-]+)\s*$")
# A member list in a ``show vlan`` row: a Q code, then ``Te 1/1/1-3,1/1/5`` or ``Po1(Te 1/1/1-2)``.
_TABLE_MEMBERS = re.compile(
    r"(?:^|\s)([UTxXoOGMiIvVH])\s+"
    r"(?:Po\s?(\d+)\s*\(\s*([A-Za-z]+)\s+([\d/,\-]+)\s*\)|([A-Za-z]+)\s+([\d/,\-]+))\s*$"
)


class Force10(Dialect):
    name = "force10"
    aliases = ("Force10", "dell_force10", "DellOS9", "dell_os9", "os9", "ftos")
    netmiko_device_type = "dell_force10"
    port_number = r"\d{1,2}/\d{1,3}(?:/\d{1,3})?"
    kinds = _KINDS
    default_kind = "TenGigabitEthernet"
    port_format = "{kind} {number}"
    port_example = "TenGigabitEthernet 1/1/1"
    templates = {
        "add_tagged": ("interface {port}", "switchport", "interface vlan {vlan}", "tagged {port}"),
        "add_untagged": ("interface {port}", "switchport", "interface vlan {vlan}", "untagged {port}"),
        "remove_tagged": ("interface vlan {vlan}", "no tagged {port}"),
        "remove_untagged": ("interface vlan {vlan}", "no untagged {port}"),
        "delete_vlan": ("no interface vlan {vlan}",),
    }
    read_commands = ("show vlan",)
    vlan_table_commands = ("show vlan",)
    fatal_errors = (re.compile(r"(?m)^\s*%\s*(?:Error|Invalid|Incomplete|Ambiguous)"),)

    def parse_vlan_table(self, outputs: Sequence[str]) -> dict[int, frozenset[str]]:
        lines = outputs[0].splitlines()
        start = next((i for i, ln in enumerate(lines) if re.search(r"\bNUM\b.*\bStatus\b", ln)), None)
        if start is None:
            raise ValueError("no VLAN table (header 'NUM Status ... Q Ports') in the output")
        table: dict[int, set[str]] = {}
        vid: int | None = None
        for line in lines[start + 1 :]:
            if not line.strip():
                continue
            if row := _ROW.match(line):
                vid, rest = int(row.group(1)), row.group(2)
                table[vid] = set()
                m = _TABLE_MEMBERS.search(rest)  # at the end, after the description
            elif vid is not None and line[:1].isspace():
                m = _TABLE_MEMBERS.fullmatch(line.strip())
                if m is None:
                    raise ValueError(f"not a member line of 'show vlan': {line.strip()[:80]!r}")
            else:
                raise ValueError(f"not a VLAN row of 'show vlan': {line.strip()[:80]!r}")
            if m is not None:
                table[vid] |= self._members(m)
        return {v: frozenset(ports) for v, ports in table.items() if v not in self.reserved_vlans}

    def _members(self, m: re.Match[str]) -> set[str]:
        """The ports of one member list: canonical names, or as printed for a kind the port
        grammar does not cover (it carries the VLAN all the same)."""
        channel, kind, numbers = m.group(2), m.group(3) or m.group(5), m.group(4) or m.group(6)
        ports = {self.port_or_printed(f"{kind} {n}") for n in expand_ports(numbers)}
        return ports | {f"Port-channel {channel}"} if channel else ports

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        kind, number = port.split(" ", 1)
        lines = outputs[0].splitlines()
        start = next((i for i, ln in enumerate(lines) if re.search(r"\bNUM\b.*\bStatus\b", ln)), None)
        if start is None:
            raise ValueError("no VLAN table (header 'NUM Status ... Q Ports') in the output")
        untagged, tagged, vid = set[int](), set[int](), None
        for line in lines[start + 1 :]:
            row = _ROW.match(line)
            if row:
                vid, line = int(row.group(1)), row.group(2)
            m = _MEMBERS.search(line)
            if m is None or vid is None or m.group(1) not in "UT":
                continue
            if self.kinds.get(m.group(2).lower()) == kind and number in expand_ports(m.group(3)):
                (untagged if m.group(1) == "U" else tagged).add(vid)
        untagged.discard(1)
        if len(untagged) > 1:
            raise ValueError(f"port untagged in several VLANs: {sorted(untagged)}")
        return PortVlans(next(iter(untagged), None), frozenset(tagged))
