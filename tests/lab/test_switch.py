"""The ToR switch simulator, driven over real SSH by netmiko (and paramiko for low-level cases).

netmiko is the independent client: it knows the real dialects' prompts and commands, so if
its stock drivers work against the simulator without waiting out timeouts, the prompts and
echo are right. Show output is parsed here with small parsers written from the dialects'
formats, not with the simulator's code. Loopback block 127.151.0.0/16.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
import pytest
from netmiko import ConnectHandler
from netmiko.exceptions import NetmikoAuthenticationException, ReadTimeout

from metalflow.lab.spec import SwitchSpec, port_name
from metalflow.lab.switch import PortVlans, SwitchSim

SSH_PORT = 22 if os.geteuid() == 0 else 0  # 0: an ephemeral port when not root
USER, PASSWORD, SECRET = "admin", "s3cret-pw", "en-secret"


def make_spec(dialect: str, octet: int, n_ports: int = 8) -> SwitchSpec:
    return SwitchSpec(
        name="tor-1",
        dialect=dialect,
        address=f"127.151.0.{octet}",
        port=SSH_PORT,
        username=USER,
        password=PASSWORD,
        enable_secret=SECRET,
        ports=tuple(port_name(dialect, i) for i in range(1, n_ports + 1)),
    )


# ---- independent read-back parsers ---------------------------------------------------------


def expand_f10_ports(text: str) -> set[str]:
    """ "1/1/1-3,1/1/5" -> {"1/1/1", "1/1/2", "1/1/3", "1/1/5"}."""
    ports: set[str] = set()
    for item in text.split(","):
        first, _, last = item.partition("-")
        prefix, _, n = first.rpartition("/")
        if last:
            last_n = last.rpartition("/")[2]
            ports.update(f"{prefix}/{i}" for i in range(int(n), int(last_n) + 1))
        else:
            ports.add(first)
    return ports


def parse_f10_show_vlan(text: str) -> dict[int, dict[str, set[str]]]:
    table: dict[int, dict[str, set[str]]] = {}
    current = None
    for line in text.splitlines():
        row = re.match(r"^[* ]\s+(\d+)\s+(Active|Inactive)\b", line)
        if row:
            current = int(row.group(1))
            table[current] = {"U": set(), "T": set()}
        member = re.search(r"\s([UT]) Te (\S+)\s*$", line)
        if member and current is not None:
            table[current][member.group(1)] |= expand_f10_ports(member.group(2))
    return table


def expand_vlans(text: str) -> set[int]:
    out: set[int] = set()
    for item in text.split(","):
        a, _, b = item.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def parse_ios_vlan_brief(text: str) -> dict[int, set[str]]:
    table: dict[int, set[str]] = {}
    current = None
    for line in text.splitlines():
        row = re.match(r"^(\d+)\s+\S+\s+(?:active|act/unsup|suspended)\s*(.*)$", line)
        if row:
            current = int(row.group(1))
            table[current] = set()
            rest = row.group(2)
        elif current is not None and re.match(r"^\s{20,}\S", line):
            rest = line
        else:
            continue
        table[current] |= {p.strip() for p in rest.split(",") if p.strip()}
    return table


def parse_colon_fields(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def f10_readback(conn, port: str) -> PortVlans:
    table = parse_f10_show_vlan(conn.send_command("show vlan"))
    untagged = [v for v, m in table.items() if port in m["U"] and v != 1]
    assert len(untagged) <= 1, table
    return PortVlans(untagged[0] if untagged else None, frozenset(v for v, m in table.items() if port in m["T"]))


def ios_readback(conn, port: str) -> PortVlans:
    fields = parse_colon_fields(conn.send_command(f"show interfaces {port} switchport"))
    if fields["Administrative Mode"] == "trunk":
        native = int(fields["Trunking Native Mode VLAN"].split()[0])
        enabled = fields["Trunking VLANs Enabled"]
        allowed = set() if enabled in ("ALL", "NONE") else expand_vlans(enabled)
        return PortVlans(native, frozenset(allowed - {native}))
    return PortVlans(int(fields["Access Mode VLAN"].split()[0]), frozenset())


@dataclass(frozen=True)
class Case:
    dialect: str
    device_type: str
    octet: int
    readback: Callable
    add_untagged: Callable[[str, int], list[str]]
    add_tagged: Callable[[str, int, int], list[str]]  # (port, tagged vid, current untagged vid)
    remove_tagged: Callable[[str, int], list[str]]
    remove_untagged: Callable[[str, int], list[str]]
    invalid_marker: str
    busy_marker: str


F10 = Case(
    dialect="force10",
    device_type="dell_force10",
    octet=1,
    readback=f10_readback,
    add_untagged=lambda p, v: [
        f"interface TenGigabitEthernet {p}",
        "switchport",
        "no shutdown",
        f"interface vlan {v}",
        f"untagged TenGigabitEthernet {p}",
    ],
    add_tagged=lambda p, v, u: [f"interface vlan {v}", f"tagged TenGigabitEthernet {p}"],
    remove_tagged=lambda p, v: [f"interface vlan {v}", f"no tagged TenGigabitEthernet {p}"],
    remove_untagged=lambda p, v: [f"interface vlan {v}", f"no untagged TenGigabitEthernet {p}"],
    invalid_marker='% Error: Invalid input at "^" marker.',
    busy_marker="% Error: Config DB is locked by another session",
)
IOS = Case(
    dialect="cisco_ios",
    device_type="cisco_ios",
    octet=2,
    readback=ios_readback,
    add_untagged=lambda p, v: [f"interface {p}", "switchport mode access", f"switchport access vlan {v}"],
    add_tagged=lambda p, v, u: [
        f"interface {p}",
        f"switchport trunk native vlan {u}",
        f"switchport trunk allowed vlan {u},{v}",
        "switchport mode trunk",
    ],
    remove_tagged=lambda p, v: [f"interface {p}", f"switchport trunk allowed vlan remove {v}"],
    remove_untagged=lambda p, v: [
        f"interface {p}",
        "no switchport trunk native vlan",
        "no switchport trunk allowed vlan",
        "switchport mode access",
        "no switchport access vlan",
    ],
    invalid_marker="% Invalid input detected at '^' marker.",
    busy_marker="% Configuration mode is locked by process",
)
CASES = [pytest.param(F10, id="force10"), pytest.param(IOS, id="cisco_ios")]


@pytest.fixture(params=CASES)
def case(request) -> Case:
    return request.param


@pytest.fixture
def sim(case):
    s = SwitchSim(make_spec(case.dialect, case.octet))
    s.start()
    yield s
    s.stop()


def connect(case: Case, sim: SwitchSim, **kw):
    host, port = sim.address
    params = dict(
        device_type=case.device_type,
        host=host,
        port=port,
        username=USER,
        password=PASSWORD,
        secret=SECRET,
        conn_timeout=5,
        auth_timeout=5,
        banner_timeout=5,
    )
    params.update(kw)
    return ConnectHandler(**params)


def assert_no_error(out: str) -> None:
    """No error line (IOS's informational "% Access VLAN does not exist. Creating ..." is fine)."""
    assert not re.search(r"^(% (?!Access VLAN does not exist)|Command rejected)", out, re.M), out


def p1(sim: SwitchSim) -> str:
    return sim.spec.ports[0]


# ---- login, prompts, enable ----------------------------------------------------------------


def test_login_enable_and_prompts(case, sim):
    conn = connect(case, sim)
    try:
        assert conn.find_prompt() == "tor-1>"
        conn.enable()
        assert conn.find_prompt() == "tor-1#"
        assert conn.check_enable_mode()
        out = conn.send_config_set(
            [f"interface {'TenGigabitEthernet ' if case is F10 else ''}{p1(sim)}"], exit_config_mode=False
        )
        expected = "tor-1(conf-if-te-1/1/1)#" if case is F10 else "tor-1(config-if)#"
        assert expected in out
        assert conn.check_config_mode()
        conn.exit_config_mode()
        assert conn.find_prompt() == "tor-1#"
    finally:
        conn.disconnect()
    counters = sim.snapshot()["counters"]
    assert counters["logins"] == 1 and counters["sessions"] == 1


def test_vlan_prompt_force10():
    s = SwitchSim(make_spec("force10", 3))
    with s:
        conn = connect(F10, s)
        try:
            conn.enable()
            out = conn.send_config_set(["interface vlan 100"], exit_config_mode=False)
            assert "tor-1(conf-if-vl-100)#" in out
            assert conn.send_config_set(["exit"], exit_config_mode=False).rstrip().endswith("tor-1(conf)#")
        finally:
            conn.disconnect()


def test_wrong_enable_secret_is_refused(case, sim):
    conn = connect(case, sim, secret="not-it")
    try:
        with pytest.raises(ValueError):
            conn.enable()
        assert conn.find_prompt() == "tor-1>"
    finally:
        conn.disconnect()


def test_wrong_password_fails_authentication(case, sim):
    with pytest.raises(NetmikoAuthenticationException):
        connect(case, sim, password="wrong")
    assert sim.snapshot()["counters"]["login_failures"] == 1


# ---- VLAN changes and read-back ------------------------------------------------------------


def test_untagged_and_tagged_add_and_remove(case, sim):
    port = p1(sim)
    conn = connect(case, sim)
    try:
        conn.enable()
        steps = [
            (case.add_untagged(port, 100), PortVlans(100, frozenset())),
            (case.add_tagged(port, 200, 100), PortVlans(100, frozenset({200}))),
            (case.remove_tagged(port, 200), PortVlans(100, frozenset())),
            (case.remove_untagged(port, 100), PortVlans(None, frozenset())),
        ]
        for commands, expected in steps:
            assert_no_error(conn.send_config_set(commands))
            assert sim.port_vlans(port) == expected
            assert case.readback(conn, port) == expected
        # The other ports were never touched.
        assert all(sim.port_vlans(p) == PortVlans() for p in sim.spec.ports[1:])
    finally:
        conn.disconnect()


def test_force10_read_back_views():
    s = SwitchSim(make_spec("force10", 3))
    with s:
        conn = connect(F10, s)
        try:
            conn.enable()
            conn.send_config_set(
                [
                    "interface vlan 100",
                    "untagged TenGigabitEthernet 1/1/1",
                    "tagged Te 1/1/2-3",
                    "interface vlan 200",
                    "tagged Te 1/1/2",
                ]
            )
            by_id = parse_f10_show_vlan(conn.send_command("show vlan id 100"))
            assert by_id == {100: {"U": {"1/1/1"}, "T": {"1/1/2", "1/1/3"}}}
            run = conn.send_command("show running-config interface vlan 100").splitlines()
            assert "interface Vlan 100" in run
            assert " untagged TenGigabitEthernet 1/1/1" in run
            assert " tagged TenGigabitEthernet 1/1/2-3" in run
            default = conn.send_command("show running-config interface vlan 1")
            assert "!untagged TenGigabitEthernet 1/1/2-8" in default
            port_run = conn.send_command("show running-config interface tengigabitethernet 1/1/1").splitlines()
            assert port_run[1:] == [
                "interface TenGigabitEthernet 1/1/1",
                " no ip address",
                " switchport",
                " no shutdown",
            ]
            fields = conn.send_command("show interfaces switchport TenGigabitEthernet 1/1/2")
            assert re.search(r"^U\s+1$", fields, re.M) and re.search(r"^T\s+100,200$", fields, re.M)
            whole = parse_f10_show_vlan(conn.send_command("show vlan"))
            assert whole[1]["U"] == {f"1/1/{i}" for i in range(2, 9)}
            assert whole[200] == {"U": set(), "T": {"1/1/2"}}
        finally:
            conn.disconnect()


def test_ios_read_back_views():
    s = SwitchSim(make_spec("cisco_ios", 4))
    with s:
        conn = connect(IOS, s)
        try:
            conn.enable()
            out = conn.send_config_set(
                [
                    "vlan 300",
                    "name storage",
                    "interface Gi1/0/1",
                    "switchport mode access",
                    "switchport access vlan 300",
                    "interface gi 1/0/2",
                    "switchport mode trunk",
                    "switchport trunk allowed vlan 300,400-401",
                ]
            )
            assert_no_error(out)
            brief = parse_ios_vlan_brief(conn.send_command("show vlan brief"))
            assert brief[300] == {"Gi1/0/1"}
            assert "Gi1/0/2" not in set().union(*brief.values())  # trunks are not listed
            assert brief[1] == {f"Gi1/0/{i}" for i in range(3, 9)}
            assert "storage" in conn.send_command("show vlan id 300")
            assert "VLAN id 999 not found in current VLAN database" in conn.send_command("show vlan id 999")
            run = conn.send_command("show running-config interface GigabitEthernet1/0/1").splitlines()
            assert run[run.index("interface GigabitEthernet1/0/1") + 1 :][:3] == [
                " switchport access vlan 300",
                " switchport mode access",
                "end",
            ]
            fields = parse_colon_fields(conn.send_command("show interfaces GigabitEthernet1/0/2 switchport"))
            assert fields["Administrative Mode"] == "trunk"
            assert fields["Trunking VLANs Enabled"] == "300,400-401"
            assert s.port_vlans("GigabitEthernet1/0/2") == PortVlans(None, frozenset({300, 400, 401}))
        finally:
            conn.disconnect()


def test_ios_trunk_allowed_list_semantics():
    s = SwitchSim(make_spec("cisco_ios", 4))
    with s:
        conn = connect(IOS, s)
        try:
            conn.enable()
            port = "GigabitEthernet1/0/1"
            conn.send_config_set([f"interface {port}", "switchport mode trunk"])
            assert s.port_vlans(port) == PortVlans()  # "allowed all" lists nothing tagged
            conn.send_config_set([f"interface {port}", "switchport trunk allowed vlan add 100"])
            assert s.port_vlans(port) == PortVlans()  # adding to "all" keeps "all", as on IOS
            conn.send_config_set(
                [
                    f"interface {port}",
                    "switchport trunk allowed vlan none",
                    "switchport trunk allowed vlan add 100,200",
                    "switchport trunk native vlan 200",
                ]
            )
            assert s.port_vlans(port) == PortVlans(200, frozenset({100}))
            conn.send_config_set([f"interface {port}", "switchport trunk allowed vlan remove 100"])
            assert s.port_vlans(port) == PortVlans(200, frozenset())
            assert ios_readback(conn, port) == PortVlans(200, frozenset())
        finally:
            conn.disconnect()


def test_ios_access_vlan_that_does_not_exist_is_created():
    s = SwitchSim(make_spec("cisco_ios", 4))
    with s:
        conn = connect(IOS, s)
        try:
            conn.enable()
            out = conn.send_config_set(["interface GigabitEthernet1/0/3", "switchport access vlan 123"])
            assert "% Access VLAN does not exist. Creating vlan 123" in out
            assert "123" in s.snapshot()["vlans"]
            assert 123 in parse_ios_vlan_brief(conn.send_command("show vlan brief"))
        finally:
            conn.disconnect()


def test_write_memory_saves_running_config(case, sim):
    conn = connect(case, sim)
    try:
        conn.enable()
        assert sim.snapshot()["saved"] is True
        conn.send_config_set(case.add_untagged(p1(sim), 100))
        assert sim.snapshot()["saved"] is False
        out = conn.save_config()
        assert ("[OK]" if case is IOS else "FILESAVED") in out
        snap = sim.snapshot()
        assert snap["saved"] is True and snap["counters"]["saves"] == 1
        startup = conn.send_command("show startup-config")
        assert ("switchport access vlan 100" if case is IOS else "untagged TenGigabitEthernet 1/1/1") in startup
        conn.send_config_set(case.remove_untagged(p1(sim), 100))
        assert sim.snapshot()["saved"] is False
        # The other way to save, which asks for confirmation on both systems.
        question = r"\[startup-config\]\? $" if case is IOS else r"\[confirm yes/no\]: $"
        conn.send_command("copy running-config startup-config", expect_string=question)
        conn.send_command("" if case is IOS else "yes", expect_string=r"tor-1#")
        snap = sim.snapshot()
        assert snap["saved"] is True and snap["counters"]["saves"] == 2
    finally:
        conn.disconnect()


# ---- errors in each dialect's words --------------------------------------------------------


def _caret_under(out: str, command: str, token: str) -> bool:
    lines = out.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.endswith(command) and "^" in lines[i + 1]:
            return lines[i + 1].index("^") == line.index(token, len(line) - len(command))
    return False


ERRORS = {
    "force10": [
        ("interface TenGigabitEthernet 1/1/99", "1/1/99", '% Error: Invalid input at "^" marker.'),
        ("interface vlan 4095", "4095", '% Error: Invalid input at "^" marker.'),
        ("interface vlan 0", "0", '% Error: Invalid input at "^" marker.'),
        ("frobnicate the switch", "frobnicate", '% Error: Invalid input at "^" marker.'),
        ("interface vlan", None, "% Error: Incomplete command."),
    ],
    "cisco_ios": [
        ("interface GigabitEthernet1/0/99", "1/0/99", "% Invalid input detected at '^' marker."),
        (
            "vlan 4095",
            None,
            "Command rejected: Bad VLAN list - character #5 (EOL) delimits a VLAN number "
            "which is out of the range 1..4094.",
        ),
        ("vlan 0", None, "Command rejected: Bad VLAN list"),
        ("frobnicate the switch", "frobnicate", "% Invalid input detected at '^' marker."),
        ("interface", None, "% Incomplete command."),
    ],
}


def test_bad_input_errors(case, sim):
    before = sim.snapshot()
    conn = connect(case, sim)
    try:
        conn.enable()
        for command, token, message in ERRORS[case.dialect]:
            out = conn.send_config_set([command])
            assert message in out, (command, out)
            if token is not None:
                assert _caret_under(out, command, token), out
        # Errors inside interface mode too: a VLAN out of range and an incomplete command.
        if case is IOS:
            out = conn.send_config_set(["interface Gi1/0/1", "switchport access vlan 4095", "switchport access", "s"])
            assert _caret_under(out, "switchport access vlan 4095", "4095"), out
            assert "% Incomplete command." in out and '% Ambiguous command: "s"' in out
            assert "% Unknown command or computer name" in conn.send_command("frobnicate")
        else:
            out = conn.send_config_set(["interface vlan 100", "untagged TenGigabitEthernet 1/1/99"])
            assert _caret_under(out, "untagged TenGigabitEthernet 1/1/99", "1/1/99"), out
            assert case.invalid_marker in conn.send_command("frobnicate")
    finally:
        conn.disconnect()
    after = sim.snapshot()
    assert after["ports"] == before["ports"]


def test_force10_untagged_in_only_one_non_default_vlan():
    s = SwitchSim(make_spec("force10", 3))
    with s:
        conn = connect(F10, s)
        try:
            conn.enable()
            conn.send_config_set(["interface vlan 100", "untagged TenGigabitEthernet 1/1/1"])
            out = conn.send_config_set(["interface vlan 200", "untagged TenGigabitEthernet 1/1/1"])
            assert "% Error: Port is untagged in another Vlan." in out
            assert s.port_vlans("1/1/1") == PortVlans(100, frozenset())
            # Tagged in another VLAN is fine; tagged where it is untagged is not.
            out = conn.send_config_set(
                [
                    "interface vlan 200",
                    "tagged TenGigabitEthernet 1/1/1",
                    "interface vlan 100",
                    "tagged TenGigabitEthernet 1/1/1",
                ]
            )
            assert "% Error: Port is already untagged in this Vlan." in out
            assert s.port_vlans("1/1/1") == PortVlans(100, frozenset({200}))
            conn.send_config_set(
                [
                    "interface vlan 100",
                    "no untagged TenGigabitEthernet 1/1/1",
                    "interface vlan 300",
                    "untagged TenGigabitEthernet 1/1/1",
                ]
            )
            assert s.port_vlans("1/1/1") == PortVlans(300, frozenset({200}))
        finally:
            conn.disconnect()


def test_force10_port_must_be_layer2_to_join_a_vlan():
    s = SwitchSim(make_spec("force10", 3))
    with s:
        conn = connect(F10, s)
        try:
            conn.enable()
            out = conn.send_config_set(
                [
                    "interface TenGigabitEthernet 1/1/3",
                    "no switchport",
                    "interface vlan 100",
                    "untagged TenGigabitEthernet 1/1/3",
                ]
            )
            assert "% Error: Port is not in Layer 2 mode Te 1/1/3." in out
            assert s.port_vlans("1/1/3") == PortVlans()
            assert "1/1/3" not in parse_f10_show_vlan(conn.send_command("show vlan"))[1]["U"]
            out = conn.send_config_set(
                [
                    "interface TenGigabitEthernet 1/1/3",
                    "switchport",
                    "interface vlan 100",
                    "untagged TenGigabitEthernet 1/1/3",
                ]
            )
            assert_no_error(out)
            assert s.port_vlans("1/1/3") == PortVlans(100, frozenset())
            out = conn.send_config_set(["interface TenGigabitEthernet 1/1/3", "no switchport"])
            assert "% Error: Port is part of a non-default VLAN." in out
        finally:
            conn.disconnect()


# ---- faults --------------------------------------------------------------------------------


def test_drop_session_mid_config(case, sim):
    port2 = sim.spec.ports[1]
    conn = connect(case, sim)
    conn.enable()
    sim.set_fault("drop_session", after=2)
    if case is F10:
        commands = ["interface vlan 100", "untagged TenGigabitEthernet 1/1/1", "tagged TenGigabitEthernet 1/1/2"]
    else:
        commands = [
            "interface GigabitEthernet1/0/1",
            "switchport access vlan 100",
            "interface GigabitEthernet1/0/2",
            "switchport access vlan 100",
        ]
    # Two configuration commands go through; the third is met by a dropped connection, which
    # netmiko sees as an answer that never comes.
    assert_no_error(conn.send_config_set(commands[:2], exit_config_mode=False))
    with pytest.raises(ReadTimeout):
        conn.send_config_set(commands[2:], read_timeout=1)
    conn.disconnect()
    assert sim.port_vlans(p1(sim)) == PortVlans(100, frozenset())  # before the drop: applied
    assert sim.port_vlans(port2) == PortVlans()  # the dropped command and after: not applied
    snap = sim.snapshot()
    assert snap["counters"]["drops"] == 1 and snap["fault"]["mode"] == "none"
    # The fault fired once; a new session works.
    conn = connect(case, sim)
    try:
        conn.enable()
        conn.send_config_set(commands)
        assert case.readback(conn, port2) == (
            PortVlans(None, frozenset({100})) if case is F10 else PortVlans(100, frozenset())
        )
    finally:
        conn.disconnect()


def test_reject_login(case, sim):
    sim.set_fault("reject_login", count=2)
    for _ in range(2):
        with pytest.raises(NetmikoAuthenticationException):
            connect(case, sim)
    conn = connect(case, sim)
    conn.disconnect()
    counters = sim.snapshot()["counters"]
    assert counters["login_failures"] == 2 and counters["logins"] == 1


def test_slow_delays_every_command(case, sim):
    conn = connect(case, sim)
    try:
        conn.enable()
        sim.set_fault("slow", delay=0.6)
        command = "show vlan" if case is F10 else "show vlan brief"
        with pytest.raises(ReadTimeout):  # the answer cannot come before the delay
            conn.send_command(command, read_timeout=0.2)
        out = conn.send_command(command, read_timeout=10)
        assert ("Te 1/1/1-8" if case is F10 else "Gi1/0/1, Gi1/0/2") in out
        sim.set_fault("none")
        assert ("Te 1/1/1-8" if case is F10 else "Gi1/0/1, Gi1/0/2") in conn.send_command(command)
    finally:
        conn.disconnect()


def test_wrong_readback_reports_the_state_before_the_last_change(case, sim):
    port = p1(sim)
    conn = connect(case, sim)
    try:
        conn.enable()
        conn.send_config_set(case.add_untagged(port, 100))
        assert sim.port_vlans(port) == PortVlans(100, frozenset())
        sim.set_fault("wrong_readback", count=1)
        assert case.readback(conn, port) == PortVlans()  # a lie: the change seems not applied
        assert case.readback(conn, port) == PortVlans(100, frozenset())  # only once
        assert sim.port_vlans(port) == PortVlans(100, frozenset())  # the truth never lied
    finally:
        conn.disconnect()


def test_busy_refuses_configuration_commands(case, sim):
    port = p1(sim)
    conn = connect(case, sim)
    try:
        conn.enable()
        sim.set_fault("busy", count=1)
        # The first line is refused; the port line after it is then not understood in global
        # configuration mode either, so nothing changes (as it would go on a real switch).
        if case is F10:
            commands = ["interface vlan 100", f"untagged TenGigabitEthernet {port}"]
        else:
            commands = [f"interface {port}", "switchport access vlan 100"]
        out = conn.send_config_set(commands)
        assert out.count(case.busy_marker) == 1
        assert sim.port_vlans(port) == PortVlans()
        assert "100" not in sim.snapshot()["vlans"]
        out = conn.send_config_set(commands)  # the lock is gone: a retry succeeds
        assert_no_error(out)
        assert case.readback(conn, port) == PortVlans(100, frozenset())
    finally:
        conn.disconnect()


def test_set_fault_validates():
    s = SwitchSim(make_spec("force10", 3))
    with pytest.raises(ValueError):
        s.set_fault("meltdown")
    with pytest.raises(ValueError):
        s.set_fault("busy", count=0)


# ---- drift, snapshot, lifecycle ------------------------------------------------------------


def test_drift_and_initial_state_show_in_read_back(case):
    spec = make_spec(case.dialect, case.octet)
    initial = {spec.ports[0]: PortVlans(10, frozenset())}
    s = SwitchSim(spec, initial=initial)
    with s:
        assert s.port_vlans(spec.ports[0]) == PortVlans(10, frozenset())
        s.set_port_vlans(spec.ports[1], PortVlans(20, frozenset({30, 31})))
        conn = connect(case, s)
        try:
            conn.enable()
            assert case.readback(conn, spec.ports[0]) == PortVlans(10, frozenset())
            assert case.readback(conn, spec.ports[1]) == PortVlans(20, frozenset({30, 31}))
        finally:
            conn.disconnect()
        snap = s.snapshot()
        json.dumps(snap)
        assert snap["ports"][spec.ports[1]] == {"untagged": 20, "tagged": [30, 31]}
        assert {"10", "20", "30", "31"} <= set(snap["vlans"])
        assert snap["saved"] is False  # drift happened after the initial (startup) state


def test_port_names_accept_cli_spellings():
    s = SwitchSim(make_spec("force10", 3))
    s.set_port_vlans("Te 1/1/2", PortVlans(5, frozenset()))
    assert s.port_vlans("1/1/2") == s.port_vlans("TenGigabitEthernet 1/1/2") == PortVlans(5, frozenset())
    i = SwitchSim(make_spec("cisco_ios", 4))
    assert i.port_vlans("Gi1/0/1") == i.port_vlans("GigabitEthernet1/0/1")
    with pytest.raises(KeyError):
        s.port_vlans("1/1/99")
    with pytest.raises(ValueError):
        PortVlans(4095, frozenset())
    with pytest.raises(ValueError):
        PortVlans(None, frozenset({1}))


def test_sessions_share_state_and_stop_closes_them(case, sim):
    a = connect(case, sim)
    b = connect(case, sim)
    try:
        a.enable()
        b.enable()
        a.send_config_set(case.add_untagged(p1(sim), 100))
        assert case.readback(b, p1(sim)) == PortVlans(100, frozenset())
        assert sim.snapshot()["counters"]["active_sessions"] == 2
    finally:
        a.disconnect()
    sim.stop()
    sim.stop()  # idempotent
    with pytest.raises((OSError, ReadTimeout)):
        b.send_command("show vlan", read_timeout=1)
    b.disconnect()
    with pytest.raises(OSError):
        socket.create_connection(sim.address, timeout=1).close()


# ---- low level: plain paramiko exec and shell ----------------------------------------------


def _client(sim: SwitchSim, **kw) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    host, port = sim.address
    client.connect(
        host, port, USER, kw.pop("password", PASSWORD), look_for_keys=False, allow_agent=False, timeout=5, **kw
    )
    return client


def test_paramiko_exec(case, sim):
    client = _client(sim)
    try:
        _, out, _ = client.exec_command("show vlan id 1" if case is F10 else "show vlan brief")
        text = out.read().decode()
        assert out.channel.recv_exit_status() == 0
        assert ("Te 1/1/1-8" if case is F10 else "Gi1/0/1, Gi1/0/2") in text
        _, out, _ = client.exec_command("show running-config")  # not at the login level
        assert case.invalid_marker in out.read().decode()
        assert out.channel.recv_exit_status() == 1
    finally:
        client.close()


def _read_until(chan: paramiko.Channel, pattern: str, timeout: float = 5.0) -> str:
    chan.settimeout(timeout)
    data = ""
    while not re.search(pattern, data):
        chunk = chan.recv(4096)
        if not chunk:
            break
        data += chunk.decode()
    return data


def test_paramiko_shell_abbreviations_and_cr_line_endings(case, sim):
    client = _client(sim)
    try:
        chan = client.invoke_shell()
        assert _read_until(chan, r"tor-1>$").endswith("tor-1>")
        chan.send("en\r")
        assert _read_until(chan, r"Password: $").endswith("Password: ")
        chan.send(SECRET + "\r")
        got = _read_until(chan, r"tor-1#$")
        assert SECRET not in got  # the secret is not echoed
        chan.send("conf t\r")
        _read_until(chan, r"\)#$")
        if case is F10:
            chan.send("int vl 100\runtag te 1/1/4\rend\r")
        else:
            chan.send("int gi1/0/4\rsw mo acc\rsw acc vl 100\rend\r")
        _read_until(chan, r"end\r\ntor-1#$")
        assert sim.port_vlans(sim.spec.ports[3]) == PortVlans(100, frozenset())
        chan.send("sh vl\r" if case is F10 else "sh vl br\r")
        shown = _read_until(chan, r"\r\ntor-1#$")
        assert "100" in shown
        chan.send("exit\r")
        assert _read_until(chan, r"(?!)").endswith("exit\r\n")  # read to the end: the switch hung up
    finally:
        client.close()


def test_keyboard_interactive_login(case, sim):
    host, port = sim.address
    transport = paramiko.Transport((host, port))
    try:
        transport.connect()
        assert transport.auth_interactive(USER, lambda title, instr, prompts: [PASSWORD for _ in prompts]) == []
        assert transport.is_authenticated()
    finally:
        transport.close()
