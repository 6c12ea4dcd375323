"""Switch dialects offline: registry completeness, port/VLAN validation, golden command lines,
read-back parsers on vendor-format output, error classification, and the driver's mechanics
for the dialects the lab does not simulate (a small scripted Junos stands in there)."""

from __future__ import annotations

import pickle
import re

import pytest
from netmiko.ssh_dispatcher import CLASS_MAPPER

from metalflow.integrations.common import Backoff, Secret
from metalflow.integrations.switches import (
    DIALECTS,
    OPS,
    InvalidPort,
    InvalidSwitchSettings,
    InvalidVlan,
    PortVlans,
    SwitchCommandFailed,
    SwitchError,
    SwitchSessionLost,
    SwitchVerifyFailed,
    UnknownSwitchType,
    connect,
    dialect_for,
    format_vlan_list,
    parse_vlan_list,
)
from metalflow.integrations.switches.dialect import Dialect, interface_block
from metalflow.integrations.switches.portlist import expand_fastiron, expand_ports

PV = PortVlans


# ----- registry ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_every_dialect_is_complete(name):
    """A dialect that lacks a template, error patterns, a read-back or a port grammar fails
    here, not on a switch."""
    d = DIALECTS[name]
    assert d.name == name
    missing = set(d.required_templates) - set(d.templates)
    assert not missing, f"{name} lacks templates {missing}"
    assert all(d.templates[k] for k in d.required_templates)
    assert d.fatal_errors and d.retryable_errors, f"{name} lacks error patterns"
    assert d.read_commands and all(c.strip() for c in d.read_commands)
    assert type(d).parse is not Dialect.parse, f"{name} has no read-back parser"
    assert d.save_command and d.config_enter and d.config_exit
    # port grammar: the example validates and is its own canonical form
    assert d.validate_port(d.port_example) == d.validate_port(d.validate_port(d.port_example))
    # every op renders, with every field its templates use
    for op in OPS:
        for tagged in (True, False):
            for current in (PV(), PV(100, frozenset({200})), PV(None, frozenset({100, 300}))):
                lines = d.commands_for(op, d.port_example, 100, tagged, current)
                assert lines and all(line and "{" not in line and "\n" not in line for line in lines)
    # netmiko knows the device type; a speed override is a subclass of netmiko's class
    assert d.netmiko_device_type in CLASS_MAPPER
    if d.netmiko_class is not None:
        assert issubclass(d.netmiko_class, CLASS_MAPPER[d.netmiko_device_type])


@pytest.mark.parametrize(
    "switch_type,name",
    [
        ("Force10", "force10"),
        ("force10", "force10"),
        ("dell_force10", "force10"),
        ("DELLOS9", "force10"),
        ("DellOS10", "dell_os10"),
        ("dell_os10", "dell_os10"),
        ("DellOS6", "dell_os6"),
        ("dell_os6", "dell_os6"),
        ("CiscoIOS", "cisco_ios"),
        ("cisco_ios", "cisco_ios"),
        ("CiscoNXOS", "cisco_nxos"),
        ("AristaEOS", "arista_eos"),
        ("Junos", "juniper_junos"),
        ("juniper_junos", "juniper_junos"),
        ("FastIron", "brocade_fastiron"),
        ("Brocade", "brocade_fastiron"),
        ("brocade_fastiron", "brocade_fastiron"),
    ],
)
def test_dialect_for_accepts_rack_config_and_netmiko_names(switch_type, name):
    assert dialect_for(switch_type).name == name


def test_unknown_switch_type_names_the_choices():
    with pytest.raises(UnknownSwitchType) as ei:
        dialect_for("Netgear")
    assert "Netgear" in str(ei.value) and "Force10" in str(ei.value) and "CiscoIOS" in str(ei.value)
    assert isinstance(ei.value, ValueError)


# ----- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,given,canonical",
    [
        ("force10", "1/1/1", "TenGigabitEthernet 1/1/1"),
        ("force10", "TenGigabitEthernet 1/1/1", "TenGigabitEthernet 1/1/1"),
        ("force10", "tengigabitethernet 1/1/12", "TenGigabitEthernet 1/1/12"),
        ("force10", "Te 0/4", "TenGigabitEthernet 0/4"),
        ("force10", "fortyGigE 1/49", "fortyGigE 1/49"),
        ("force10", "hundredGigE 1/1/50", "hundredGigE 1/1/50"),
        ("dell_os10", "ethernet1/1/1", "ethernet1/1/1"),
        ("dell_os10", "1/1/7:1", "ethernet1/1/7:1"),
        ("dell_os6", "Te1/0/1", "Te1/0/1"),
        ("dell_os6", "gigabitethernet1/0/3", "Gi1/0/3"),
        ("cisco_ios", "GigabitEthernet1/0/1", "GigabitEthernet1/0/1"),
        ("cisco_ios", "Gi1/0/24", "GigabitEthernet1/0/24"),
        ("cisco_ios", "te1/1/1", "TenGigabitEthernet1/1/1"),
        ("cisco_nxos", "Eth1/1", "Ethernet1/1"),
        ("arista_eos", "Et12", "Ethernet12"),
        ("arista_eos", "Ethernet3/1", "Ethernet3/1"),
        ("juniper_junos", "ge-0/0/1", "ge-0/0/1"),
        ("juniper_junos", "XE-0/0/47", "xe-0/0/47"),
        ("brocade_fastiron", "1/1/1", "1/1/1"),
        ("brocade_fastiron", "ethe 1/2/3", "1/2/3"),
    ],
)
def test_ports_are_canonicalised(name, given, canonical):
    assert DIALECTS[name].validate_port(given) == canonical


INJECTIONS = [
    "1/1/1\nreload",
    "1/1/1\r\nwrite erase",
    "1/1/1;reload",
    "1/1/1 ; reload",
    "1/1/1|include x",
    "1/1/1 1/1/2",
    "1/1/1,1/1/2",
    "1/1/1-3",
    "",
    "   ",
    "1/1/1\x00",
    "$(reboot)",
    "1/1/1\tx",
]


@pytest.mark.parametrize("name", sorted(DIALECTS))
@pytest.mark.parametrize("bad", INJECTIONS)
def test_no_separator_reaches_a_cli_line(name, bad):
    with pytest.raises(InvalidPort) as ei:
        DIALECTS[name].validate_port(bad)
    msg = str(ei.value)
    assert "expected" in msg and DIALECTS[name].port_example in msg  # names the grammar and the fix


#: Digits that str.isdigit() and an un-flagged \\d accept, and no switch CLI reads as a number.
FOREIGN_DIGITS = {
    "arabic-indic": "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669",
    "fullwidth": "\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19",
    "devanagari": "\u0966\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e\u096f",
}


def _foreign(port: str, digits: str) -> str:
    """``port`` with its last ASCII digit written in another script."""
    i = max(k for k, c in enumerate(port) if c in "0123456789")
    return port[:i] + digits[int(port[i])] + port[i + 1 :]


@pytest.mark.parametrize("name", sorted(DIALECTS))
@pytest.mark.parametrize("script", sorted(FOREIGN_DIGITS))
def test_only_ascii_digits_make_a_port(name, script):
    """``1/1/\u0661`` is refused by every dialect: the grammar is compiled with re.ASCII."""
    d = DIALECTS[name]
    good = d.port_example
    assert d.validate_port(good)  # the example itself is a port
    with pytest.raises(InvalidPort) as ei:
        d.validate_port(_foreign(good, FOREIGN_DIGITS[script]))
    assert d.port_example in str(ei.value)


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_every_dialect_grammar_is_ascii_and_nothing_is_stripped(name):
    d = DIALECTS[name]
    assert d._port_re.flags & re.ASCII
    for padded in (f" {d.port_example}", f"{d.port_example} ", f"{d.port_example}\n"):
        with pytest.raises(InvalidPort):
            d.validate_port(padded)


def test_port_error_names_the_grammar_and_the_field():
    with pytest.raises(InvalidPort) as ei:
        dialect_for("CiscoIOS").validate_port("1/0/1")  # IOS needs the interface type
    msg = str(ei.value)
    assert "'1/0/1'" in msg and "GigabitEthernet1/0/1" in msg and "rack config" in msg


@pytest.mark.parametrize("name", sorted(DIALECTS))
@pytest.mark.parametrize("vlan", [0, 1, 4095, -5, "100", 100.0, True, False, None])
def test_bad_vlans_are_refused(name, vlan):
    with pytest.raises(InvalidVlan) as ei:
        DIALECTS[name].validate_vlan(vlan)
    assert "VLAN" in str(ei.value)


def test_the_dialect_vlan_check_is_the_vocabulary_s():
    """One bound for every VLAN check (values.parse_vlan, 2-4094): the dialect wraps its BadValue."""
    from metalflow.integrations.common.values import BadValue

    for vlan in (1, 4095, True):
        with pytest.raises(InvalidVlan) as ei:
            DIALECTS["juniper_junos"].validate_vlan(vlan)
        assert isinstance(ei.value.__cause__, BadValue)
    assert [DIALECTS["cisco_ios"].validate_vlan(v) for v in (2, 4094)] == [2, 4094]


def test_vlan_1_is_refused_with_the_reason():
    with pytest.raises(InvalidVlan, match="default VLAN"):
        DIALECTS["cisco_ios"].commands_for("add", "Gi1/0/1", 1, tagged=True)


def test_validation_happens_before_any_connection():
    def no_connection(timeout):
        raise AssertionError("connected despite bad input")

    drv = connect("Force10", "127.160.9.9", "admin", "pw", cli_factory=no_connection)
    with pytest.raises(InvalidPort):
        drv.add_vlan("1/1/1\nreload", 100, tagged=False)
    with pytest.raises(InvalidVlan):
        drv.add_vlan("1/1/1", 4095, tagged=False)
    with pytest.raises(InvalidVlan):
        drv.remove_vlan("1/1/1", 1)
    with pytest.raises(InvalidPort):
        drv.port_vlans("ethernet1/1/1")
    with drv.session() as s:  # a session connects lazily: an invalid first call sends nothing
        with pytest.raises(InvalidPort):
            s.add_vlan("x", 100, tagged=True)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"host": "10.0.0.1\nx"}, "address"),
        ({"host": ""}, "address"),
        ({"port": 0}, "SSH port"),
        ({"port": "22"}, "SSH port"),
        ({"username": "ad min"}, "username"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_switch_settings_are_checked(kwargs, field):
    args = {"host": "10.0.0.1", "username": "admin", "password": "pw", "port": 22, "timeout": 30} | kwargs
    with pytest.raises(InvalidSwitchSettings, match=field):
        connect("Force10", args.pop("host"), args.pop("username"), args.pop("password"), **args)


def test_driver_repr_and_errors_never_show_the_password():
    drv = connect("CiscoIOS", "127.160.9.9", "admin", Secret("hunter22"), enable_secret="en4ble!")
    assert "hunter22" not in repr(drv) and "en4ble" not in repr(drv)
    assert "hunter22" not in repr(vars(drv))
    assert drv._scrub("error near hunter22 and en4ble!") == "error near *** and ***"


# ----- golden command lines -------------------------------------------------------------------

GOLDEN = {
    # (dialect, op, tagged, current) -> lines
    ("force10", "add", True, PV()): [
        "interface TenGigabitEthernet 1/1/1",
        "switchport",
        "interface vlan 100",
        "tagged TenGigabitEthernet 1/1/1",
    ],
    ("force10", "add", False, PV()): [
        "interface TenGigabitEthernet 1/1/1",
        "switchport",
        "interface vlan 100",
        "untagged TenGigabitEthernet 1/1/1",
    ],
    ("force10", "remove", True, PV(None, frozenset({100}))): [
        "interface vlan 100",
        "no tagged TenGigabitEthernet 1/1/1",
    ],
    ("force10", "remove", False, PV(100)): ["interface vlan 100", "no untagged TenGigabitEthernet 1/1/1"],
    ("dell_os10", "add", True, PV()): [
        "interface ethernet1/1/1",
        "switchport mode trunk",
        "switchport trunk allowed vlan 100",
    ],
    ("dell_os10", "add", False, PV()): ["interface ethernet1/1/1", "switchport access vlan 100"],
    ("dell_os10", "remove", True, PV(None, frozenset({100}))): [
        "interface ethernet1/1/1",
        "no switchport trunk allowed vlan 100",
    ],
    ("dell_os10", "remove", False, PV(100)): ["interface ethernet1/1/1", "no switchport access vlan"],
    ("dell_os6", "add", True, PV()): [
        "interface Te1/0/1",
        "switchport mode general",
        "switchport general allowed vlan add 100 tagged",
    ],
    ("dell_os6", "add", False, PV()): [
        "interface Te1/0/1",
        "switchport mode general",
        "switchport general allowed vlan add 100 untagged",
        "switchport general pvid 100",
    ],
    ("dell_os6", "remove", True, PV(None, frozenset({100}))): [
        "interface Te1/0/1",
        "switchport general allowed vlan remove 100",
    ],
    ("dell_os6", "remove", False, PV(100)): [
        "interface Te1/0/1",
        "switchport general allowed vlan remove 100",
        "no switchport general pvid",
    ],
    ("cisco_ios", "add", True, PV()): [
        "interface GigabitEthernet1/0/1",
        "switchport trunk native vlan 1",
        "switchport trunk allowed vlan 1,100",
        "switchport mode trunk",
    ],
    ("cisco_ios", "add", False, PV()): [
        "interface GigabitEthernet1/0/1",
        "switchport mode access",
        "switchport access vlan 100",
    ],
    ("cisco_ios", "add", True, PV(10, frozenset({300}))): [
        "interface GigabitEthernet1/0/1",
        "switchport trunk native vlan 10",
        "switchport trunk allowed vlan 10,100,300",
        "switchport mode trunk",
    ],
    ("cisco_ios", "add", False, PV(None, frozenset({200}))): [
        "interface GigabitEthernet1/0/1",
        "switchport trunk native vlan 100",
        "switchport trunk allowed vlan 100,200",
        "switchport mode trunk",
    ],
    ("cisco_ios", "remove", True, PV(10, frozenset({100}))): [
        "interface GigabitEthernet1/0/1",
        "switchport mode access",
        "switchport access vlan 10",
    ],
    ("cisco_ios", "remove", False, PV(100)): [
        "interface GigabitEthernet1/0/1",
        "switchport mode access",
        "switchport access vlan 1",
    ],
    ("cisco_nxos", "add", True, PV()): [
        "interface Ethernet1/1",
        "switchport",
        "switchport trunk native vlan 1",
        "switchport trunk allowed vlan 1,100",
        "switchport mode trunk",
    ],
    ("cisco_nxos", "add", False, PV()): [
        "interface Ethernet1/1",
        "switchport",
        "switchport mode access",
        "switchport access vlan 100",
    ],
    ("cisco_nxos", "remove", False, PV(100, frozenset({200}))): [
        "interface Ethernet1/1",
        "switchport",
        "switchport trunk native vlan 1",
        "switchport trunk allowed vlan 1,200",
        "switchport mode trunk",
    ],
    ("arista_eos", "add", True, PV()): [
        "interface Ethernet1",
        "switchport trunk native vlan 1",
        "switchport trunk allowed vlan 1,100",
        "switchport mode trunk",
    ],
    ("arista_eos", "add", False, PV()): ["interface Ethernet1", "switchport mode access", "switchport access vlan 100"],
    ("arista_eos", "remove", True, PV(None, frozenset({100, 101, 102}))): [
        "interface Ethernet1",
        "switchport trunk native vlan 1",
        "switchport trunk allowed vlan 1,101-102",
        "switchport mode trunk",
    ],
    ("juniper_junos", "add", True, PV()): [
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk",
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 100",
    ],
    ("juniper_junos", "add", False, PV()): [
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk",
        "set interfaces ge-0/0/1 native-vlan-id 100",
        "set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 100",
    ],
    ("juniper_junos", "remove", True, PV(None, frozenset({100}))): [
        "delete interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 100"
    ],
    ("juniper_junos", "remove", False, PV(100)): [
        "delete interfaces ge-0/0/1 native-vlan-id",
        "delete interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 100",
    ],
    ("brocade_fastiron", "add", True, PV()): ["vlan 100", "tagged ethernet 1/1/1"],
    ("brocade_fastiron", "add", False, PV()): [
        "vlan 100",
        "tagged ethernet 1/1/1",
        "exit",
        "interface ethernet 1/1/1",
        "dual-mode 100",
    ],
    ("brocade_fastiron", "remove", True, PV(None, frozenset({100}))): ["vlan 100", "no tagged ethernet 1/1/1"],
    ("brocade_fastiron", "remove", False, PV(100)): [
        "interface ethernet 1/1/1",
        "no dual-mode 100",
        "exit",
        "vlan 100",
        "no tagged ethernet 1/1/1",
    ],
}


@pytest.mark.parametrize("key", list(GOLDEN), ids=lambda k: f"{k[0]}-{k[1]}-{'tagged' if k[2] else 'untagged'}-{k[3]}")
def test_golden_command_lines(key):
    name, op, tagged, current = key
    d = DIALECTS[name]
    assert d.commands_for(op, d.port_example, 100, tagged, current) == GOLDEN[key]


def test_every_dialect_has_golden_lines_for_add_tagged_add_untagged_and_remove():
    for name in DIALECTS:
        kinds = {(op, tagged) for (n, op, tagged, _) in GOLDEN if n == name}
        assert {("add", True), ("add", False)} <= kinds and any(op == "remove" for op, _ in kinds), name


# ----- read-back parsers (vendor output formats) ----------------------------------------------

OS9_SHOW_VLAN = """
Codes: * - Default VLAN, G - GVRP VLANs, R - Remote Port Mirroring VLANs, P - Primary, C - Community, I - Isolated
       O - Openflow, Vx - Vxlan
Q: U - Untagged, T - Tagged
   x - Dot1x untagged, X - Dot1x tagged
   o - OpenFlow untagged, O - OpenFlow tagged
   G - GVRP tagged, M - Vlan-stack
   i - Internal untagged, I - Internal tagged, v - VLT untagged, V - VLT tagged

    NUM    Status    Description                     Q Ports
*   1      Active                                    U Te 1/1/2-1/1/4,1/1/6-1/1/48
    10     Active    pxe                             U Te 1/1/5
    100    Active    guest-100                       U Te 1/1/1
                                                     T Te 1/1/5
    200    Active                                    T Te 1/1/1,1/1/3
                                                     T Fo 1/1/49
    300    Active    tagged-range                    T Te 1/1/10-12,1/1/40
    400    Inactive
"""


@pytest.mark.parametrize(
    "port,expected",
    [
        ("TenGigabitEthernet 1/1/1", PV(100, frozenset({200}))),
        ("TenGigabitEthernet 1/1/2", PV()),
        ("TenGigabitEthernet 1/1/3", PV(None, frozenset({200}))),
        ("TenGigabitEthernet 1/1/5", PV(10, frozenset({100}))),
        ("TenGigabitEthernet 1/1/11", PV(None, frozenset({300}))),
        ("fortyGigE 1/1/49", PV(None, frozenset({200}))),
        ("GigabitEthernet 1/1/1", PV()),  # same number, other type
    ],
)
def test_force10_show_vlan(port, expected):
    assert DIALECTS["force10"].parse(port, [OS9_SHOW_VLAN]) == expected


def test_force10_refuses_output_without_a_vlan_table():
    with pytest.raises(ValueError, match="VLAN table"):
        DIALECTS["force10"].parse("TenGigabitEthernet 1/1/1", ['% Error: Invalid input at "^" marker.'])


IOS_TRUNK = """Building configuration...

Current configuration : 214 bytes
!
interface GigabitEthernet1/0/1
 description host-001 eth0
 switchport trunk native vlan 100
 switchport trunk allowed vlan 100,200-202
 switchport mode trunk
 spanning-tree portfast edge trunk
end
"""
IOS_WRAPPED = """!
interface GigabitEthernet1/0/2
 switchport trunk allowed vlan 1,10,20,30,40,50,60,70,80,90,100,110,120,130,140,150
 switchport trunk allowed vlan add 160,170,180-185
 switchport trunk allowed vlan remove 50
 switchport mode trunk
end
"""
IOS_ACCESS = """!
interface GigabitEthernet1/0/3
 switchport access vlan 10
 switchport trunk native vlan 99
 switchport mode access
end
"""
IOS_ALL = """!
interface GigabitEthernet1/0/4
 switchport trunk native vlan 100
 switchport mode trunk
end
"""
IOS_DEFAULT = """!
interface GigabitEthernet1/0/5
end
"""


def test_cisco_ios_running_config():
    d = DIALECTS["cisco_ios"]
    assert d.parse("GigabitEthernet1/0/1", [IOS_TRUNK]) == PV(100, frozenset({200, 201, 202}))
    wrapped = d.parse("GigabitEthernet1/0/2", [IOS_WRAPPED])
    assert wrapped.untagged is None
    assert wrapped.tagged == frozenset(range(10, 160, 10)) - {50} | {160, 170, 180, 181, 182, 183, 184, 185}
    assert d.parse("GigabitEthernet1/0/3", [IOS_ACCESS]) == PV(10)  # trunk settings ignored in access mode
    all_trunk = d.parse("GigabitEthernet1/0/4", [IOS_ALL])  # no allowed line: every VLAN is carried
    assert all_trunk.untagged == 100 and len(all_trunk.tagged) == 4092 and 100 not in all_trunk.tagged
    assert d.parse("GigabitEthernet1/0/5", [IOS_DEFAULT]) == PV()
    with pytest.raises(ValueError):
        d.parse("GigabitEthernet1/0/9", [IOS_TRUNK])  # the output is about another port


def test_cisco_nxos_and_arista_running_config():
    nxos = """
!Command: show running-config interface Ethernet1/1
!Running configuration last done at: Mon Nov 25 12:00:00 2024

version 9.3(8) Bios:version 05.45

interface Ethernet1/1
  description host-001
  switchport
  switchport mode trunk
  switchport trunk native vlan 100
  switchport trunk allowed vlan 100,200
  no shutdown
"""
    assert DIALECTS["cisco_nxos"].parse("Ethernet1/1", [nxos]) == PV(100, frozenset({200}))
    eos = """interface Ethernet1
   description host-001
   switchport access vlan 300
   switchport trunk native vlan 100
   switchport trunk allowed vlan 1,100,200
   switchport mode trunk
"""
    assert DIALECTS["arista_eos"].parse("Ethernet1", [eos]) == PV(100, frozenset({200}))
    assert DIALECTS["arista_eos"].parse("Ethernet1", [eos.replace("mode trunk", "mode access")]) == PV(300)


def test_dell_os10_running_configuration():
    out = """!
interface ethernet1/1/1
 no shutdown
 switchport mode trunk
 switchport access vlan 100
 switchport trunk allowed vlan 200,300-301
 flowcontrol receive on
!
interface ethernet1/1/2
 no shutdown
 switchport access vlan 100
"""
    d = DIALECTS["dell_os10"]
    assert d.parse("ethernet1/1/1", [out]) == PV(100, frozenset({200, 300, 301}))
    assert d.parse("ethernet1/1/2", [out]) == PV(100)
    assert d.parse("ethernet1/1/1", ["interface ethernet1/1/1\n no switchport\n ip address 10.0.0.1/31"]) == PV()


def test_dell_os6_running_config():
    general = """!Current Configuration:
!
interface Te1/0/1
switchport mode general
switchport general pvid 100
switchport general allowed vlan add 100 untagged
switchport general allowed vlan add 200,300 tagged
exit
"""
    d = DIALECTS["dell_os6"]
    assert d.parse("Te1/0/1", [general]) == PV(100, frozenset({200, 300}))
    half_done = general.replace("switchport general pvid 100\n", "")  # untagged member, PVID not set
    assert d.parse("Te1/0/1", [half_done]) == PV(None, frozenset({200, 300}))
    trunk = (
        "interface Te1/0/2\nswitchport mode trunk\nswitchport trunk native vlan 10\n"
        "switchport trunk allowed vlan 10,20\nexit\n"
    )
    assert d.parse("Te1/0/2", [trunk]) == PV(10, frozenset({20}))
    access = "interface Gi1/0/3\nswitchport access vlan 30\nexit\n"
    assert d.parse("Gi1/0/3", [access]) == PV(30)


def test_dell_os6_save_question_is_answered():
    question = (
        "This operation may take a few minutes.\nManagement interfaces will not be available "
        "during this time.\n\nAre you sure you want to save? (y/n) "
    )
    pattern, answer = DIALECTS["dell_os6"].save_confirm
    assert re.search(pattern, question) and answer == "y"


def test_junos_display_set():
    out = """set interfaces ge-0/0/1 description host-001
set interfaces ge-0/0/1 native-vlan-id 100
set interfaces ge-0/0/1 unit 0 family ethernet-switching interface-mode trunk
set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 100
set interfaces ge-0/0/1 unit 0 family ethernet-switching vlan members 200-202
set interfaces ge-0/0/10 unit 0 family ethernet-switching vlan members 999

[edit]"""
    d = DIALECTS["juniper_junos"]
    assert d.parse("ge-0/0/1", [out]) == PV(100, frozenset({200, 201, 202}))
    access = "set interfaces ge-0/0/2 unit 0 family ethernet-switching vlan members 30\n"
    assert d.parse("ge-0/0/2", [access]) == PV(30)
    assert d.parse("ge-0/0/3", [""]) == PV()  # an unconfigured interface prints nothing
    with pytest.raises(ValueError, match="by name"):
        d.parse("ge-0/0/4", ["set interfaces ge-0/0/4 unit 0 family ethernet-switching vlan members guests"])


def test_fastiron_running_config():
    vlans = """vlan 1 name DEFAULT-VLAN by port
!
vlan 100 name guest by port
 tagged ethe 1/1/1 to 1/1/4 ethe 1/1/7
 untagged ethe 1/1/10
!
vlan 200 by port
 tagged ethe 1/1/1
 spanning-tree 802-1w
!
"""
    iface = "interface ethernet 1/1/1\n port-name host-001\n dual-mode 100\n!\n"
    d = DIALECTS["brocade_fastiron"]
    assert d.parse("1/1/1", [vlans, iface]) == PV(100, frozenset({200}))
    assert d.parse("1/1/3", [vlans, ""]) == PV(None, frozenset({100}))
    assert d.parse("1/1/10", [vlans, "interface ethernet 1/1/10\n!\n"]) == PV(100)
    assert d.parse("1/1/11", [vlans, ""]) == PV()


def test_vlan_and_port_lists():
    assert parse_vlan_list("1,100-102 200") == {1, 100, 101, 102, 200}
    assert parse_vlan_list("none") == frozenset() and len(parse_vlan_list("ALL")) == 4094
    assert format_vlan_list({1, 100, 101, 102, 200, 5}) == "1,5,100-102,200"
    for bad in ("1-x", "0", "4095", "5-3"):
        with pytest.raises(ValueError):
            parse_vlan_list(bad)
    assert expand_ports("1/1/2-1/1/4,1/1/6") == {"1/1/2", "1/1/3", "1/1/4", "1/1/6"}
    assert expand_ports("0/1-3") == {"0/1", "0/2", "0/3"}
    assert expand_fastiron("ethe 1/1/1 to 1/1/3 ethernet 1/2/1") == {"1/1/1", "1/1/2", "1/1/3", "1/2/1"}
    with pytest.raises(ValueError):
        expand_ports("1/1/4-1/2/1")
    with pytest.raises(ValueError):
        interface_block("interface Gi1/0/1\n", re.compile("interface Gi1/0/2"))


# ----- error classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,answer,transient",
    [
        ("force10", "% Error: Config DB is locked by another session. Try again later.", True),
        ("force10", '                ^\n% Error: Invalid input at "^" marker.', False),
        ("force10", "% Error: Port is untagged in another Vlan.", False),
        (
            "cisco_ios",
            "% Configuration mode is locked by process '312' user 'netops' from terminal '2'. Please try later.",
            True,
        ),
        ("cisco_ios", "        ^\n% Invalid input detected at '^' marker.", False),
        ("cisco_ios", "% Incomplete command.", False),
        ("cisco_ios", "Command rejected: Bad VLAN list - character #5 (-) delimits a VLAN number", False),
        ("cisco_nxos", "ERROR: VLAN 4000 is a reserved VLAN", False),
        ("arista_eos", "% Invalid input", False),
        ("dell_os10", "% Error: Illegal parameter.", False),
        ("dell_os6", "Configuration Database locked by another application - try later", True),
        ("dell_os6", "VLAN was not created by user.", False),
        ("juniper_junos", "error: configuration database locked by:\n  netops terminal p0", True),
        ("juniper_junos", "error: shared configuration database modified", True),
        ("juniper_junos", "syntax error.", False),
        ("brocade_fastiron", "Invalid input -> vlna 100\nType ? for a list", False),
        ("brocade_fastiron", "Error - port 1/1/1 is not a member of vlan 100", False),
        ("brocade_fastiron", "Flash access in progress. Please try later.", True),
    ],
)
def test_error_patterns(name, answer, transient):
    found = DIALECTS[name].scan(answer)
    assert found is not None and found.transient is transient
    assert found.text and "\n" not in found.text


@pytest.mark.parametrize(
    "name,answer",
    [
        ("cisco_ios", "% Access VLAN does not exist. Creating vlan 100"),
        ("cisco_ios", "Building configuration...\n[OK]"),
        ("force10", "!\nNov 25 12:00:00: %STKUNIT1-M:CP %FILEMGR-5-FILESAVED: Copied running-config to startup-config"),
        ("juniper_junos", "warning: statement not found"),
        ("juniper_junos", "commit complete"),
        ("dell_os10", ""),
    ],
)
def test_informational_answers_are_not_errors(name, answer):
    assert DIALECTS[name].scan(answer) is None


def test_show_output_is_scanned_for_fatal_errors_only():
    d = DIALECTS["force10"]
    assert d.scan("    300    Active    busy-net    T Te 1/1/1", retryable=False) is None
    assert d.scan("% Error: No such interface", retryable=False).transient is False


def test_errors_survive_pickling_with_their_details():
    exc = SwitchVerifyFailed(
        "mismatch",
        target="10.0.0.2:22 port 1/1/1",
        operation="add VLAN 100 untagged",
        evidence="expected x",
        port="1/1/1",
        expected=PV(100),
        observed=PV(),
    )
    back = pickle.loads(pickle.dumps(exc))
    assert str(back) == str(exc) and back.expected == PV(100) and back.observed == PV()
    lost = pickle.loads(pickle.dumps(SwitchSessionLost("gone", applied=("a",))))
    assert lost.applied == ("a",) and lost.transient
    failed = pickle.loads(pickle.dumps(SwitchCommandFailed("no", line="x", transient=True)))
    assert failed.transient and failed.line == "x"
    assert SwitchCommandFailed("no", line="x", transient=False).transient is False


# ----- driver mechanics on a transactional dialect (Junos) ---------------------------------------


class ScriptedJunos:
    """A Junos CLI reduced to set/delete statements, a private candidate and commit.

    Mocked because the lab simulates only Force10 and Cisco IOS; this checks the driver's
    transactional path (one ``configure private``, reads of the candidate, one ``commit``)."""

    def __init__(self, fail_on: str = ""):
        self.committed: set[str] = set()
        self.candidate: set[str] | None = None
        self.sent: list[str] = []
        self.fail_on = fail_on
        self.prompt = "admin@qfx>"
        self.closed = False

    def send(self, line, *, timeout, confirm=None):
        self.sent.append(line)
        if line == "configure private":
            self.candidate = set(self.committed)
            return "warning: uncommitted changes will be discarded on exit\nEntering configuration mode"
        if self.fail_on and self.fail_on in line:
            return "error: syntax error: " + line.split()[-1]
        if line.startswith("set "):
            self.candidate.add(line[4:])
            return ""
        if line.startswith("delete "):
            stmt = line[7:]
            self.candidate = {s for s in self.candidate if s != stmt and not s.startswith(stmt + " ")}
            return ""
        if m := re.fullmatch(r"show interfaces (\S+) \| display set", line):
            return "\n".join(f"set {s}" for s in sorted(self.candidate) if s.startswith(f"interfaces {m.group(1)} "))
        if line == "commit":
            self.committed = set(self.candidate)
            return "commit complete"
        if line == "exit configuration-mode":
            self.candidate = None
            return "Exiting configuration mode"
        raise AssertionError(f"unexpected line {line!r}")

    def close(self, *, graceful=True):
        self.closed = True


def junos_driver(fake):
    return connect(
        "Junos",
        "127.160.9.10",
        "admin",
        "pw",
        cli_factory=lambda timeout: fake,
        busy_backoff=Backoff(first=0.01, cap=0.01, attempts=2, jitter=False),
    )


def test_junos_session_configures_privately_and_commits_once():
    fake = ScriptedJunos()
    drv = junos_driver(fake)
    with drv.session() as s:
        s.add_vlan("ge-0/0/1", 100, tagged=False)
        s.add_vlan("ge-0/0/1", 200, tagged=True)
        s.add_vlan("ge-0/0/1", 200, tagged=True)  # already there: no lines
        assert fake.committed == set()  # nothing is live before the commit
        assert s.port_vlans("ge-0/0/1") == PV(100, frozenset({200}))
    assert fake.sent.count("configure private") == 1 and fake.sent.count("commit") == 1
    assert fake.sent[-1] == "exit configuration-mode" and fake.closed
    assert "interfaces ge-0/0/1 native-vlan-id 100" in fake.committed
    assert s.applied == ["add VLAN 100 untagged on ge-0/0/1", "add VLAN 200 tagged on ge-0/0/1"]
    # a rerun reads, finds everything in place and commits nothing
    fake.sent.clear()
    with drv.session() as s:
        s.add_vlan("ge-0/0/1", 100, tagged=False)
    assert "commit" not in fake.sent and not any(x.startswith("set ") for x in fake.sent)


def test_junos_failure_discards_the_candidate():
    fake = ScriptedJunos(fail_on="members 300")
    drv = junos_driver(fake)
    with pytest.raises(SwitchCommandFailed) as ei:
        with drv.session() as s:
            s.add_vlan("ge-0/0/2", 200, tagged=True)
            s.add_vlan("ge-0/0/2", 300, tagged=True)
    assert ei.value.line.endswith("vlan members 300") and not ei.value.transient
    assert "commit" not in fake.sent and fake.committed == set()


def test_verify_mismatch_is_reported_with_expected_and_observed():
    class Deaf(ScriptedJunos):  # accepts every line, changes nothing
        def send(self, line, *, timeout, confirm=None):
            return "" if line.startswith(("set ", "delete ")) else super().send(line, timeout=timeout)

    drv = junos_driver(Deaf())
    with pytest.raises(SwitchVerifyFailed) as ei:
        drv.add_vlan("ge-0/0/3", 100, tagged=True)
    e = ei.value
    assert e.expected == PV(None, frozenset({100})) and e.observed == PV()
    assert "ge-0/0/3" in str(e) and "127.160.9.10:22" in str(e)
    assert isinstance(e, SwitchError) and not e.transient
