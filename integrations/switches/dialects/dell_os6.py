"""Dell EMC Networking OS6 (N-series): general mode, where one port holds any mix of tagged
and untagged VLANs: ``switchport general allowed vlan add N tagged|untagged`` plus
``switchport general pvid N`` for the untagged one. The read-back counts a VLAN as the
port's untagged one only when it is both the PVID and an untagged member, so a change that
stopped half-way reads as not done and a rerun completes it.

netmiko's ``dell_os6`` checks config mode with timing-based reads (about 2 s each, several
per session, ~10 s in all); ``FastDellOS6`` checks with a prompt pattern instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from netmiko.dell.dell_dnos6 import DellDNOS6SSH

from metalflow.integrations.switches.dialect import Dialect, interface_block, parse_switchport, switchport_mode
from metalflow.integrations.switches.model import DEFAULT_VLAN, PortVlans, parse_vlan_list

_GENERAL = re.compile(r"switchport general allowed vlan (add|remove) (\S+)(?: (tagged|untagged))?")


class FastDellOS6(DellDNOS6SSH):
    def check_config_mode(
        self, check_string: str = "(config", pattern: str = r"[>#]", force_regex: bool = False
    ) -> bool:
        return super().check_config_mode(check_string=check_string, pattern=pattern)


class DellOS6(Dialect):
    name = "dell_os6"
    aliases = ("DellOS6", "dell_os6", "os6", "dnos6")
    netmiko_device_type = "dell_os6"
    netmiko_class = FastDellOS6
    port_number = r"\d/\d/\d{1,2}"
    kinds = {
        "gi": "Gi",
        "gigabitethernet": "Gi",
        "te": "Te",
        "tengigabitethernet": "Te",
        "tw": "Tw",
        "twentyfivegigabitethernet": "Tw",
        "fo": "Fo",
        "fortygigabitethernet": "Fo",
        "hu": "Hu",
        "hundredgigabitethernet": "Hu",
    }
    port_example = "Te1/0/1"
    templates = {
        "add_tagged": (
            "interface {port}",
            "switchport mode general",
            "switchport general allowed vlan add {vlan} tagged",
        ),
        "add_untagged": (
            "interface {port}",
            "switchport mode general",
            "switchport general allowed vlan add {vlan} untagged",
            "switchport general pvid {vlan}",
        ),
        "remove_tagged": ("interface {port}", "switchport general allowed vlan remove {vlan}"),
        "remove_untagged": (
            "interface {port}",
            "switchport general allowed vlan remove {vlan}",
            "no switchport general pvid",
        ),
    }
    read_commands = ("show running-config interface {port}",)
    config_enter = "configure"
    save_command = "copy running-config startup-config"
    save_confirm = (r"\(y/n\)", "y")
    fatal_errors = (
        re.compile(r"(?m)^\s*%\s*(?:Invalid|Incomplete|Ambiguous|Error)"),
        re.compile(r"(?m)VLAN was not created by user|Failure Information|^\s*Error"),
    )

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        header = re.compile(rf"interface\s+{re.escape(port)}", re.I)
        lines = interface_block(outputs[0], header, indented=False)  # OS6 does not indent
        if switchport_mode(lines) != "general":
            return parse_switchport(lines)
        pvid, untagged, tagged = DEFAULT_VLAN, {DEFAULT_VLAN}, set[int]()
        for line in lines:
            if m := re.fullmatch(r"switchport general pvid (\d+)", line):
                pvid = int(m.group(1))
            elif m := _GENERAL.fullmatch(line):
                vlans = parse_vlan_list(m.group(2))
                untagged, tagged = untagged - vlans, tagged - vlans
                if m.group(1) == "add":
                    (tagged if m.group(3) == "tagged" else untagged).update(vlans)
        return PortVlans(pvid if pvid in untagged else None, frozenset(tagged))
