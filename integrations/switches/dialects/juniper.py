"""Juniper Junos (ELS: EX/QFX): ``set``/``delete`` statements in a private candidate, one
``commit`` at the end of the session instead of a save.

Every port is a trunk: tagged VLANs are ``vlan members``; the untagged one is the
interface's ``native-vlan-id`` and also a member. The whole session runs in configuration
mode (``configure private``: our candidate is invisible to others and discarded if the
session dies), so read-backs show the candidate. VLAN members must be numeric ids of VLANs
that exist under ``vlans``: Junos cannot add a port to a VLAN it does not know.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from metalflow.integrations.switches.dialect import COMMON_RETRYABLE, Dialect
from metalflow.integrations.switches.model import PortVlans, parse_vlan_list

_ES = "set interfaces {port} unit 0 family ethernet-switching"
_DEL = "delete interfaces {port} unit 0 family ethernet-switching"


class JuniperJunos(Dialect):
    name = "juniper_junos"
    aliases = ("Junos", "juniper_junos", "juniper", "JuniperJunos")
    netmiko_device_type = "juniper_junos"
    port_number = r"\d{1,2}/\d{1,2}/\d{1,3}(?::\d{1,2})?"
    kinds = {"ge": "ge", "xe": "xe", "et": "et", "mge": "mge"}
    port_format = "{kind}-{number}"
    port_example = "ge-0/0/1"
    templates = {
        "add_tagged": (f"{_ES} interface-mode trunk", f"{_ES} vlan members {{vlan}}"),
        "add_untagged": (
            f"{_ES} interface-mode trunk",
            "set interfaces {port} native-vlan-id {vlan}",
            f"{_ES} vlan members {{vlan}}",
        ),
        "remove_tagged": (f"{_DEL} vlan members {{vlan}}",),
        "remove_untagged": ("delete interfaces {port} native-vlan-id", f"{_DEL} vlan members {{vlan}}"),
    }
    read_commands = ("show interfaces {port} | display set",)  # in configuration mode: the candidate
    config_enter = "configure private"
    config_exit = "exit configuration-mode"
    save_command = "commit"
    save_success = r"commit complete"
    transactional = True
    retryable_errors = COMMON_RETRYABLE + (re.compile(r"database (?:is )?(?:locked|modified)"),)
    fatal_errors = (re.compile(r"(?mi)^\s*(?:error:|syntax error|unknown command|missing argument)"),)

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        mode, native, members = "access", None, set[int]()
        prefix = f"set interfaces {port} "
        for line in outputs[0].splitlines():
            line = line.strip()
            if not line.startswith(prefix):
                continue
            rest = line[len(prefix) :].replace("unit 0 family ethernet-switching ", "")
            if m := re.fullmatch(r"(?:interface|port)-mode (\S+)", rest):
                mode = m.group(1)
            elif m := re.fullmatch(r"native-vlan-id (\d+)", rest):
                native = int(m.group(1))
            elif m := re.fullmatch(r"vlan members (\S+)", rest):
                if m.group(1) != "default":
                    if not re.fullmatch(r"[\d,-]+", m.group(1)):
                        raise ValueError(f"VLAN member by name ({m.group(1)}): use VLAN ids")
                    members |= parse_vlan_list(m.group(1))
        if mode != "trunk":
            if len(members) > 1:
                raise ValueError(f"access port with several VLANs: {sorted(members)}")
            return PortVlans(next(iter(members), None), frozenset())
        return PortVlans(native if native in members else None, frozenset(members - {native}))
