"""Arista EOS: the Cisco switchport words and templates (see ``cisco``); what differs is the
port grammar (``Ethernet1``, ``Ethernet1/1``) and the read-back command's plural
``interfaces``."""

from __future__ import annotations

from metalflow.integrations.switches.dialects.cisco import CiscoStyle


class AristaEOS(CiscoStyle):
    name = "arista_eos"
    aliases = ("AristaEOS", "arista_eos", "eos", "arista")
    netmiko_device_type = "arista_eos"
    port_number = r"\d{1,3}(?:/\d{1,3}){0,2}"
    kinds = {"ethernet": "Ethernet", "eth": "Ethernet", "et": "Ethernet"}
    port_example = "Ethernet1"
    read_commands = ("show running-config interfaces {port}",)
