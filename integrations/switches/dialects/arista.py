"""Arista EOS: the Cisco switchport words (see ``cisco``), ``Ethernet1`` style ports."""

from __future__ import annotations

from metalflow.integrations.switches.dialects.cisco import CiscoStyle


class AristaEOS(CiscoStyle):
    name = "arista_eos"
    aliases = ("AristaEOS", "arista_eos", "eos", "arista")
    netmiko_device_type = "arista_eos"
    port_number = r"\d{1,3}(?:/\d{1,3}){0,2}"
    kinds = {"ethernet": "Ethernet", "eth": "Ethernet", "et": "Ethernet"}
    port_example = "Ethernet1"
    templates = {
        "access": ("interface {port}", "switchport mode access", "switchport access vlan {untagged}"),
        "trunk": (
            "interface {port}",
            "switchport trunk native vlan {native}",
            "switchport trunk allowed vlan {allowed}",
            "switchport mode trunk",
        ),
    }
    read_commands = ("show running-config interfaces {port}",)
