"""Dell EMC SmartFabric OS10: ``switchport access vlan`` is the untagged VLAN in both modes,
``switchport trunk allowed vlan N`` *adds* N to the tagged list and ``no ...`` removes it, so
every change is one delta line. Tagged VLANs need trunk mode; untagged does not."""

from __future__ import annotations

import re
from collections.abc import Sequence

from metalflow.integrations.switches.dialect import Dialect, interface_block
from metalflow.integrations.switches.model import PortVlans, parse_vlan_list


class DellOS10(Dialect):
    name = "dell_os10"
    aliases = ("DellOS10", "dell_os10", "os10")
    netmiko_device_type = "dell_os10"
    port_number = r"\d/\d{1,2}/\d{1,3}(?::\d)?"
    kinds = {"ethernet": "ethernet", "eth": "ethernet", "e": "ethernet"}
    default_kind = "ethernet"
    port_example = "ethernet1/1/1"
    templates = {
        "add_tagged": ("interface {port}", "switchport mode trunk", "switchport trunk allowed vlan {vlan}"),
        "add_untagged": ("interface {port}", "switchport access vlan {vlan}"),
        "remove_tagged": ("interface {port}", "no switchport trunk allowed vlan {vlan}"),
        "remove_untagged": ("interface {port}", "no switchport access vlan"),
    }
    read_commands = ("show running-configuration interface {port}",)
    save_command = "copy running-configuration startup-configuration"
    fatal_errors = (re.compile(r"(?m)^\s*%\s*(?:Error|Invalid|Incomplete|Ambiguous)"),)

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        lines = interface_block(outputs[0], re.compile(rf"interface\s+{re.escape(port)}", re.I))
        untagged, tagged, trunk = 1, set[int](), False
        for line in lines:
            if m := re.fullmatch(r"switchport access vlan (\d+)", line):
                untagged = int(m.group(1))
            elif m := re.fullmatch(r"switchport trunk allowed vlan (\S+)", line):
                tagged |= parse_vlan_list(m.group(1))  # OS10 trunks have no implicit "all"
            elif line == "switchport mode trunk":
                trunk = True
            elif line == "no switchport":  # a routed port carries no VLAN
                return PortVlans()
        return PortVlans(untagged, frozenset(tagged) if trunk else frozenset())
