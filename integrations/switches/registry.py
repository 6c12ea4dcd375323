"""Every dialect, by name, and the lookup from a rack config's switch type."""

from __future__ import annotations

from types import MappingProxyType

from metalflow.integrations.common.values import show
from metalflow.integrations.switches.dialect import Dialect
from metalflow.integrations.switches.dialects.arista import AristaEOS
from metalflow.integrations.switches.dialects.cisco import CiscoIOS, CiscoNXOS
from metalflow.integrations.switches.dialects.dell_os6 import DellOS6
from metalflow.integrations.switches.dialects.dell_os10 import DellOS10
from metalflow.integrations.switches.dialects.fastiron import FastIron
from metalflow.integrations.switches.dialects.force10 import Force10
from metalflow.integrations.switches.dialects.juniper import JuniperJunos
from metalflow.integrations.switches.errors import UnknownSwitchType

#: name -> dialect (read-only; dialects are stateless, one instance each).
DIALECTS: MappingProxyType[str, Dialect] = MappingProxyType(
    {
        d.name: d
        for d in (Force10(), DellOS10(), DellOS6(), CiscoIOS(), CiscoNXOS(), AristaEOS(), JuniperJunos(), FastIron())
    }
)

_BY_ALIAS = MappingProxyType(
    {key.lower(): d for d in DIALECTS.values() for key in (d.name, d.netmiko_device_type, *d.aliases)}
)


def dialect_for(switch_type: str) -> Dialect:
    """The dialect for a rack-config type (``Force10``, ``CiscoIOS``...) or a netmiko device
    type (``dell_force10``), case-insensitive, as written (``"Force10\\n"`` is no type)."""
    if not isinstance(switch_type, str) or switch_type.lower() not in _BY_ALIAS:
        known = ", ".join(sorted({a for d in DIALECTS.values() for a in d.aliases if a[:1].isupper()}))
        raise UnknownSwitchType(
            f"unknown switch type {show(switch_type)}: use one of {known} (or a netmiko device type "
            f"such as {', '.join(sorted(d.netmiko_device_type for d in DIALECTS.values()))})",
            operation="choose dialect",
        )
    return _BY_ALIAS[switch_type.lower()]
