"""Brocade / Ruckus FastIron (ICX), as the original CloudStack fork drove it: membership on
the VLAN (``vlan N`` then ``tagged ethernet <port>``); the untagged VLAN is a tagged
membership plus ``dual-mode N`` on the interface, which lets one port carry an untagged VLAN
and tagged ones at once. So an untagged add may build on an existing tagged membership.

Read-back: ``show running-config vlan`` (tagged/untagged port lists with ``to`` ranges) and
``show running-config interface ethernet <port>`` (the dual-mode VLAN). A port made untagged
with plain ``untagged ethernet`` (not by us) reads correctly, but removing it needs an
operator: our removal template undoes dual-mode.

netmiko's ``brocade_fastiron`` session set-up reads with a 2 s quiet timer and checks config
mode the same way; ``FastFastIron`` waits for the prompt pattern instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from netmiko.ruckus.ruckus_fastiron import RuckusFastironSSH

from metalflow.integrations.switches.dialect import Dialect
from metalflow.integrations.switches.model import PortVlans
from metalflow.integrations.switches.portlist import expand_fastiron


class FastFastIron(RuckusFastironSSH):
    def session_preparation(self) -> None:
        self._test_channel_read(pattern=r"[>#]")
        self.set_base_prompt()
        self.enable()
        self.disable_paging(command="skip-page-display")

    def check_config_mode(self, check_string: str = ")#", pattern: str = r"[>#]", force_regex: bool = False) -> bool:
        return super().check_config_mode(check_string=check_string, pattern=pattern)


class FastIron(Dialect):
    name = "brocade_fastiron"
    aliases = ("FastIron", "Brocade", "brocade_fastiron", "ruckus_fastiron", "icx")
    netmiko_device_type = "brocade_fastiron"
    netmiko_class = FastFastIron
    port_number = r"\d{1,2}/\d{1,2}/\d{1,3}"
    kinds = {"ethernet": "", "ethe": "", "eth": "", "e": ""}
    default_kind = ""
    port_format = "{number}"
    port_example = "ethernet 1/1/1"
    templates = {
        "add_tagged": ("vlan {vlan}", "tagged ethernet {port}"),
        "add_untagged": (
            "vlan {vlan}",
            "tagged ethernet {port}",
            "exit",
            "interface ethernet {port}",
            "dual-mode {vlan}",
        ),
        "remove_tagged": ("vlan {vlan}", "no tagged ethernet {port}"),
        "remove_untagged": (
            "interface ethernet {port}",
            "no dual-mode {vlan}",
            "exit",
            "vlan {vlan}",
            "no tagged ethernet {port}",
        ),
    }
    read_commands = ("show running-config vlan", "show running-config interface ethernet {port}")
    fatal_errors = (re.compile(r"(?mi)^\s*(?:Invalid input|Error\b|Incomplete command|Ambiguous input)"),)
    untagged_builds_on_tagged = True

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        tagged, untagged, vid = set[int](), set[int](), None
        for line in outputs[0].splitlines():
            if m := re.match(r"vlan (\d+)\b", line):
                vid = int(m.group(1))
            elif line.startswith("!") or not line.strip():
                vid = None
            elif vid is not None and (m := re.fullmatch(r"\s+(tagged|untagged) (.+)", line)):
                if port in expand_fastiron(m.group(2)):
                    (tagged if m.group(1) == "tagged" else untagged).add(vid)
        dual = None
        if m := re.search(rf"(?ms)^interface ethernet {re.escape(port)}\s*$(.*?)^\S", outputs[1] + "\n!"):
            if d := re.search(r"(?m)^\s+dual-mode (\d+)\s*$", m.group(1)):
                dual = int(d.group(1))
        untagged.discard(1)
        if dual in tagged:
            return PortVlans(dual, frozenset(tagged - {dual}))
        if len(untagged) > 1:
            raise ValueError(f"port untagged in several VLANs: {sorted(untagged)}")
        return PortVlans(next(iter(untagged), None), frozenset(tagged))
