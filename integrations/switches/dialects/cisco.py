"""The Cisco family (IOS, NX-OS; Arista EOS speaks the same words): switchport modes.

A port is an access port (one untagged VLAN) or a trunk (a native VLAN plus tagged ones). A
trunk's allowed list defaults to *all* VLANs, so ``allowed vlan add N`` on a fresh trunk
changes nothing; instead the driver renders the port's whole target shape from the state it
just read: access when no tagged VLAN remains, else trunk with an explicit native VLAN and
allowed list (``allowed`` = tagged VLANs plus the native one). The lines are absolute, so a
rerun after a partial failure converges. Native and allowed are set before the mode, so a
port never sits in trunk mode allowing every VLAN.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from metalflow.integrations.switches.dialect import Dialect, interface_block, parse_switchport
from metalflow.integrations.switches.model import PortVlans

_CISCO_ERRORS = (
    re.compile(r"(?m)^\s*%\s*(?:Invalid|Incomplete|Ambiguous|Unrecognized|Bad|Error)"),
    re.compile(r"(?m)^\s*%?\s*ERROR:"),
    re.compile(r"(?m)^Command rejected"),
)


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
