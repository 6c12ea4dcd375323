"""Switch-level VLAN definitions: the VLAN table (every defined VLAN -> the ports carrying it)
and the deletion of one unused definition, against the lab's Force10/OS9 and Cisco IOS
simulators over real SSH; the parsers on recorded vendor-format output; every other dialect
refuses before connecting. Loopback block 127.155.0.0/16.
"""

from __future__ import annotations

import os

import pytest

from metalflow.integrations.common import Backoff, Secret
from metalflow.integrations.switches import (
    DIALECTS,
    InvalidVlan,
    SwitchNotSupported,
    SwitchParseError,
    SwitchWrongState,
    connect,
    dialect_for,
)
from metalflow.integrations.switches.dialect import Dialect
from metalflow.lab.spec import SwitchSpec, port_name
from metalflow.lab.switch import PortVlans as LabPortVlans
from metalflow.lab.switch import SwitchSim

PASSWORD = "Vl4n-table-pw"
ENABLE = "Vl4n-en4ble"
SSH_PORT = 22 if os.geteuid() == 0 else 10022
SWITCHES = {  # lab dialect -> (rack-config type, address)
    "force10": ("Force10", "127.155.0.1"),
    "cisco_ios": ("CiscoIOS", "127.155.0.2"),
}
SIMULATED = frozenset(SWITCHES)
FAST = Backoff(first=0.05, factor=2.0, cap=0.2, attempts=4)
SCRATCH = 16  # a port the tests use only to define a VLAN in the simulator


class Switch:
    def __init__(self, sim: SwitchSim, rack_type: str):
        self.sim, self.rack_type = sim, rack_type
        self.driver = self.connect()
        self.dialect = self.driver.dialect

    def connect(self):
        host, port = self.sim.address
        return connect(
            self.rack_type,
            host,
            "admin",
            Secret(PASSWORD),
            port,
            enable_secret=ENABLE,
            timeout=10,
            connect_backoff=FAST,
            busy_backoff=FAST,
        )

    def port(self, i: int) -> str:
        """Port ``i`` as the lab names it (the rack config's spelling)."""
        return self.sim.spec.ports[i - 1]

    def canonical(self, i: int) -> str:
        """Port ``i`` as the VLAN table names it."""
        return self.dialect.validate_port(self.port(i))

    def define(self, vlan: int) -> None:
        """Define ``vlan`` with no port in it, behind the driver's back (IOS does not create
        a VLAN from a trunk's allowed list, as the real switch does not)."""
        self.sim.set_port_vlans(self.port(SCRATCH), LabPortVlans(vlan))
        self.sim.set_port_vlans(self.port(SCRATCH), LabPortVlans())

    def config_commands(self) -> int:
        return self.sim.snapshot()["counters"]["config_commands"]


@pytest.fixture(scope="module")
def sims():
    started = {}
    try:
        for dialect, (_, address) in SWITCHES.items():
            spec = SwitchSpec(
                name=f"tor-{dialect.replace('_', '-')}",
                dialect=dialect,
                address=address,
                port=SSH_PORT,
                username="admin",
                password=PASSWORD,
                enable_secret=ENABLE,
                ports=tuple(port_name(dialect, i) for i in range(1, 17)),
            )
            sim = SwitchSim(spec)
            sim.start()
            started[dialect] = sim
        yield started
    finally:
        for sim in started.values():
            sim.stop()


@pytest.fixture(params=sorted(SWITCHES))
def sw(request, sims):
    sim = sims[request.param]
    sim.set_fault("none")
    yield Switch(sim, SWITCHES[request.param][0])
    sim.set_fault("none")


# ----- the lab, over SSH ---------------------------------------------------------------------


def test_an_access_vlan_shows_with_its_port_then_with_none_then_is_deleted(sw):
    p1 = sw.canonical(1)
    sw.driver.add_vlan(sw.port(1), 410, tagged=False)
    table = sw.driver.vlan_table()
    assert table[410] == {p1}
    assert 1 not in table  # the default VLAN is never in the table

    sw.driver.remove_vlan(sw.port(1), 410)
    assert sw.driver.vlan_table()[410] == frozenset()  # defined, carried by no port

    with sw.driver.session() as s:
        s.delete_vlan(410)
        assert s.commands == [{"force10": "no interface vlan 410", "cisco_ios": "no vlan 410"}[sw.dialect.name]]
        assert s.applied == ["delete VLAN 410"]
    assert s.saved and sw.sim.snapshot()["saved"]  # saved as every change is
    assert 410 not in sw.driver.vlan_table()

    with sw.driver.session() as again:  # a rerun finds it gone: nothing sent, nothing saved
        again.delete_vlan(410)
    assert again.commands == [] and not again.saved


def test_a_tagged_vlan_counts_on_its_trunk_port(sw):
    p2, p3 = sw.canonical(2), sw.canonical(3)
    sw.define(420)
    sw.driver.add_vlan(sw.port(3), 421, tagged=False)
    with sw.driver.session() as s:
        s.add_vlan(sw.port(2), 420, tagged=True)
        s.add_vlan(sw.port(3), 420, tagged=True)  # a trunk with a native VLAN too
        table = s.vlan_table()
    assert table[420] == {p2, p3}
    assert table[421] == {p3}

    sw.driver.remove_vlan(sw.port(2), 420)
    assert sw.driver.vlan_table()[420] == {p3}
    with pytest.raises(SwitchWrongState, match=rf"VLAN 420 is still carried by port\(s\) {p3}"):
        sw.driver.delete_vlan(420)

    sw.driver.remove_vlan(sw.port(3), 420)
    sw.driver.delete_vlan(420)
    table = sw.driver.vlan_table()
    assert 420 not in table and table[421] == {p3}  # the port's untagged VLAN is untouched
    assert sw.driver.port_vlans(sw.port(3)).untagged == 421


def test_deleting_a_carried_vlan_is_refused_and_changes_nothing(sw):
    p4, p5 = sw.canonical(4), sw.canonical(5)
    sw.driver.add_vlan(sw.port(4), 430, tagged=False)
    sw.driver.add_vlan(sw.port(5), 430, tagged=True)
    before, commands = sw.driver.vlan_table(), sw.config_commands()
    assert before[430] == {p4, p5}

    with sw.driver.session() as s:
        with pytest.raises(SwitchWrongState) as err:
            s.delete_vlan(430)
        assert s.commands == []
    assert "VLAN 430" in str(err.value) and p4 in str(err.value) and p5 in str(err.value)
    assert err.value.operation == "delete VLAN 430"
    assert sw.config_commands() == commands  # not even config mode was entered
    assert sw.driver.vlan_table() == before
    assert sw.driver.port_vlans(sw.port(4)).untagged == 430
    assert 430 in sw.driver.port_vlans(sw.port(5)).tagged


def test_vlan_1_and_reserved_vlans_are_refused_before_any_connection(sw):
    def no_connection(timeout: float):
        raise AssertionError("connected")

    host, port = sw.sim.address
    d = connect(sw.rack_type, host, "admin", Secret(PASSWORD), port, cli_factory=no_connection)
    reserved = sorted(d.dialect.reserved_vlans)
    assert 1 in reserved
    for vlan in reserved:
        with pytest.raises(InvalidVlan, match=f"VLAN {vlan} is reserved"):
            d.delete_vlan(vlan)
    for bad in (0, 4095, True, "100"):
        with pytest.raises(InvalidVlan):
            d.delete_vlan(bad)
    assert not set(sw.driver.vlan_table()) & set(reserved)


def test_a_busy_switch_is_retried_on_delete(sw):
    sw.define(440)
    sw.sim.set_fault("busy", count=1)  # the first configuration line: config DB locked
    sw.driver.delete_vlan(440)
    assert 440 not in sw.driver.vlan_table()


# ----- every other dialect: refused, never guessed ------------------------------------------


@pytest.mark.parametrize("name", sorted(set(DIALECTS) - SIMULATED))
def test_other_dialects_are_not_supported_and_never_connect(name):
    def no_connection(timeout: float):
        raise AssertionError("connected")

    d = connect(name, "127.155.0.99", "admin", Secret("pw"), cli_factory=no_connection)
    message = f"VLAN table not supported for dialect {name}"
    with pytest.raises(SwitchNotSupported, match=message):
        d.vlan_table()
    with pytest.raises(SwitchNotSupported, match=message):
        d.delete_vlan(100)
    with d.session() as s, pytest.raises(SwitchNotSupported, match=message):
        s.vlan_table()
    with pytest.raises(SwitchNotSupported):
        DIALECTS[name].parse_vlan_table([""])
    assert not DIALECTS[name].has_vlan_table


def test_the_simulated_dialects_have_a_vlan_table():
    for name in SIMULATED:
        d = DIALECTS[name]
        assert d.has_vlan_table and type(d).parse_vlan_table is not Dialect.parse_vlan_table
    assert dialect_for("Force10").delete_vlan_commands(100) == ["no interface vlan 100"]
    assert dialect_for("CiscoIOS").delete_vlan_commands(100) == ["no vlan 100"]
    assert dialect_for("CiscoIOS").vlan_table_commands_for() == ["show vlan brief", "show running-config"]
    assert dialect_for("Force10").vlan_table_commands_for() == ["show vlan"]


# ----- parsers on recorded output ------------------------------------------------------------

IOS_SHOW_VLAN_BRIEF = """
VLAN Name                             Status    Ports
---- -------------------------------- --------- -------------------------------
1    default                          active    Gi1/0/3, Gi1/0/4, Gi1/0/5, Gi1/0/6
                                                Gi1/0/7, Gi1/0/8
100  guest-100                        active    Gi1/0/1
200  VLAN0200                         active
300  routed                           act/lshut
400  VLAN0400                         suspended
1002 fddi-default                     act/unsup
1003 token-ring-default               act/unsup
1004 fddinet-default                  act/unsup
1005 trnet-default                    act/unsup
"""

IOS_RUNNING = """Building configuration...

Current configuration : 612 bytes
!
version 15.2
hostname tor-1
!
vlan 100
 name guest-100
!
interface Port-channel1
 switchport trunk allowed vlan 200
 switchport mode trunk
!
interface GigabitEthernet1/0/1
 switchport access vlan 100
 switchport mode access
!
interface GigabitEthernet1/0/2
 switchport trunk native vlan 100
 switchport trunk allowed vlan 100,200
 switchport mode trunk
!
interface GigabitEthernet1/0/3
 switchport mode access
!
interface Vlan300
 ip address 10.0.0.1 255.255.255.0
!
end
"""

IOS_UPLINK = """!
interface TenGigabitEthernet1/1/1
 description uplink: every VLAN
 switchport mode trunk
!
end
"""


def test_ios_table_counts_access_ports_trunks_port_channels_and_svis():
    d = dialect_for("CiscoIOS")
    assert d.parse_vlan_table([IOS_SHOW_VLAN_BRIEF, IOS_RUNNING]) == {
        100: {"GigabitEthernet1/0/1", "GigabitEthernet1/0/2"},
        200: {"Port-channel1", "GigabitEthernet1/0/2"},
        300: {"Vlan300"},
        400: frozenset(),
    }


def test_ios_a_trunk_without_an_allowed_list_carries_every_defined_vlan():
    d = dialect_for("CiscoIOS")
    table = d.parse_vlan_table([IOS_SHOW_VLAN_BRIEF, IOS_RUNNING.replace("end\n", IOS_UPLINK)])
    assert all("TenGigabitEthernet1/1/1" in ports for ports in table.values())
    assert table[400] == {"TenGigabitEthernet1/1/1"}


OS9_SHOW_VLAN = """
Codes: * - Default VLAN, G - GVRP VLANs, R - Remote Port Mirroring VLANs, P - Primary, C - Community, I - Isolated
       O - Openflow, Vx - Vxlan
Q: U - Untagged, T - Tagged
   x - Dot1x untagged, X - Dot1x tagged
   o - OpenFlow untagged, O - OpenFlow tagged
   G - GVRP tagged, M - Vlan-stack
   i - Internal untagged, I - Internal tagged, v - VLT untagged, V - VLT tagged

    NUM    Status    Description                     Q Ports
*   1      Active                                    U Te 1/1/3-1/1/48
    100    Active    guest-100                       U Te 1/1/1
                                                     T Po1(Te 1/1/49-50)
    200    Active                                    T Te 1/1/1-2
                                                     V Fo 1/1/52
    300    Inactive  no members
"""


def test_os9_table_counts_every_member_code_and_port_channels():
    d = dialect_for("Force10")
    assert d.parse_vlan_table([OS9_SHOW_VLAN]) == {
        100: {
            "TenGigabitEthernet 1/1/1",
            "Port-channel 1",
            "TenGigabitEthernet 1/1/49",
            "TenGigabitEthernet 1/1/50",
        },
        200: {"TenGigabitEthernet 1/1/1", "TenGigabitEthernet 1/1/2", "fortyGigE 1/1/52"},
        300: frozenset(),
    }


@pytest.mark.parametrize(
    "name,outputs",
    [
        ("Force10", [OS9_SHOW_VLAN + "    tor-1#\n"]),  # a line that is not a row nor a member list
        ("Force10", [OS9_SHOW_VLAN + "                                                     T Te ?\n"]),
        ("Force10", ["% Error: Invalid input"]),
        ("CiscoIOS", [IOS_SHOW_VLAN_BRIEF + "garbage\n", IOS_RUNNING]),
        ("CiscoIOS", ["", IOS_RUNNING]),
    ],
)
def test_an_unreadable_table_is_an_error_not_a_guess(name, outputs):
    with pytest.raises(ValueError):
        dialect_for(name).parse_vlan_table(outputs)


def test_an_unreadable_table_on_the_wire_is_a_parse_error(sims):
    """A ``show vlan`` that does not parse raises SwitchParseError (never an empty table)."""
    sw = Switch(sims["force10"], "Force10")

    class Garbled(type(sw.dialect)):  # type: ignore[misc]
        vlan_table_commands = ("show running-config",)

    sw.driver.dialect = Garbled()
    with pytest.raises(SwitchParseError, match="could not read the VLAN table"):
        sw.driver.vlan_table()
