"""ToR switch drivers over netmiko: one base driver, dialects as data (after NGS).

    driver = connect("Force10", "10.0.0.2", "admin", Secret(pw))
    driver.add_vlan("1/1/1", 100, tagged=False)      # read, change, verify, save, disconnect
    with driver.session() as s:                      # one SSH session, one save
        s.remove_vlan("1/1/1", 10)
        s.add_vlan("1/1/1", 100, tagged=False)
    dialect_for("CiscoIOS").commands_for("add", "Gi1/0/1", 100, tagged=True)   # offline
    driver.vlan_table()     # {100: frozenset({"TenGigabitEthernet 1/1/1"}), 200: frozenset()}
    driver.delete_vlan(200)  # refused while a port carries it; verified; cisco_ios, force10 only

Never imports Prefect.
"""

from metalflow.integrations.switches.dialect import OPS, Dialect
from metalflow.integrations.switches.driver import Session, SwitchDriver, connect
from metalflow.integrations.switches.errors import (
    InvalidPort,
    InvalidSwitchSettings,
    InvalidVlan,
    SwitchAuthFailed,
    SwitchCommandFailed,
    SwitchError,
    SwitchNotSupported,
    SwitchParseError,
    SwitchSessionLost,
    SwitchUnreachable,
    SwitchVerifyFailed,
    SwitchWrongState,
    UnknownSwitchType,
)
from metalflow.integrations.switches.model import PortVlans, format_vlan_list, parse_vlan_list
from metalflow.integrations.switches.registry import DIALECTS, dialect_for

__all__ = [
    "DIALECTS",
    "OPS",
    "Dialect",
    "InvalidPort",
    "InvalidSwitchSettings",
    "InvalidVlan",
    "PortVlans",
    "Session",
    "SwitchAuthFailed",
    "SwitchCommandFailed",
    "SwitchDriver",
    "SwitchError",
    "SwitchNotSupported",
    "SwitchParseError",
    "SwitchSessionLost",
    "SwitchUnreachable",
    "SwitchVerifyFailed",
    "SwitchWrongState",
    "UnknownSwitchType",
    "connect",
    "dialect_for",
    "format_vlan_list",
    "parse_vlan_list",
]
