"""End-to-end: every knob of the lab's control API, observed through independent clients, and
the ``python -m metalflow.lab`` command line against the running lab.

Uses the session's ``lab`` (``tests.conftest``). Hosts this module uses, each handed back off,
unknown to MAAS, with no fault: host-004 (tor-2 Gi1/0/2 and Gi1/0/3: MAAS fail_next deploy),
host-005 (tor-1 1/1/4: BMC faults and the power button), host-006 (tor-2 Gi1/0/4: the CLI's
BMC fault). Switch faults and drift use uncabled ports (41 and up) only. Every test that sets
a fault clears it (``/reset``), also when it fails.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from netmiko.exceptions import NetmikoAuthenticationException, ReadTimeout

from tests.conftest import REPO
from tests.lab.independent import (
    DEPLOYED,
    DEPLOYING,
    FAILED_DEPLOYMENT,
    PXE_IDLE,
    READY,
    Ipmi,
    IpmiDeadline,
    IpmiError,
    Maas,
    PortView,
    commission,
    configure,
    connect_switch,
    create_form,
    forget,
    show_port,
    switch_of,
    wait_for,
)

DRIFT_VLAN = 300


@pytest.fixture(scope="module")
def maas(lab) -> Maas:
    return Maas(lab.manifest)


@pytest.fixture(scope="module")
def ipmi():
    client = Ipmi()
    yield client
    client.close()


@pytest.fixture(autouse=True)
def no_faults_left(lab):
    yield
    lab.reset_faults()


def manifest_host(lab, name: str) -> dict:
    return next(h for h in lab.manifest["hosts"] if h["name"] == name)


def spare_port(lab, switch: str, n: int = 41) -> str:
    """An uncabled port of ``switch`` in its own dialect."""
    sw = switch_of(lab.manifest, switch)
    return f"1/1/{n}" if sw["type"] == "Force10" else f"GigabitEthernet1/0/{n}"


@pytest.fixture
def host_back(lab, maas, ipmi):
    """``host_back(name)``: the host is handed back off, unknown to MAAS, boot device PXE."""
    used: list[dict] = []

    def take(name: str) -> dict:
        host = manifest_host(lab, name)
        used.append(host)
        forget(maas, host)
        return host

    yield take
    lab.reset_faults()
    for host in used:
        forget(maas, host)
        lab.control("POST", f"/power/{host['name']}", {"on": False})
        ipmi.call(host, "set_bootdev", "network", True)
        wait_for(
            f"{host['name']} off",
            lambda: lab.host(host["name"]),
            lambda s: s["power"] == "off" and s["running"] == "off",
            timeout=10,
        )


def raw_control(lab, method: str, path: str, data: bytes | None = None) -> tuple[int, dict]:
    """A control call that returns (status, JSON body) for errors too."""
    req = urllib.request.Request(
        lab.control_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        assert exc.headers.get("Content-Type") == "application/json", exc.headers
        return exc.code, json.loads(exc.read())


# --- MAAS faults ---------------------------------------------------------------------------------


def test_maas_503_with_retry_after_for_the_next_calls_then_normal(lab, maas):
    lab.control("POST", "/faults/maas", {"mode": "503", "count": 2, "retry_after": 3})
    for _ in range(2):
        r = maas.get("machines/")
        assert (r.status_code, r.headers.get("Retry-After")) == (503, "3"), r.text[:200]
    assert maas.get("machines/").status_code == 200
    assert lab.state()["maas"]["faults"]["count"] == 0


def test_maas_409_with_retry_after_changes_nothing(lab, maas, host_back):
    host = host_back("host-004")
    lab.control("POST", "/faults/maas", {"mode": "409", "count": 1, "retry_after": 5})
    r = maas.post("machines/", data=create_form(host))
    assert (r.status_code, r.headers.get("Retry-After")) == (409, "5"), r.text[:200]
    assert maas.by_mac(host["macs"][0]) == []  # the create never happened


def test_maas_delay_slows_every_answer(lab, maas):
    lab.control("POST", "/faults/maas", {"delay": 0.3})
    started = time.monotonic()
    assert maas.get("machines/").status_code == 200
    assert time.monotonic() - started >= 0.3  # a lower bound: the answer waited for the delay
    assert lab.state()["maas"]["faults"]["delay"] == 0.3


def test_maas_fail_next_deploy_fails_the_deployment(lab, maas, host_back):
    host = host_back("host-004")  # tor-2, two NICs
    sid = commission(maas, host)["system_id"]
    lab.control("POST", "/faults/maas", {"fail_next": "deploy", "count": 1})
    t0 = time.time()
    r = maas.post(f"machines/{sid}/", op="deploy", data={"distro_series": "ubuntu/jammy"})
    assert r.status_code == 200 and r.json()["status"] == DEPLOYING, r.text[:200]
    failed = maas.wait_status(sid, FAILED_DEPLOYMENT, failure=(DEPLOYED,))
    assert "Installation failed" in failed["status_message"]
    # The installer did run (PXE worked) but wrote nothing.
    state = lab.host(host["name"])
    assert [e["running"] for e in state["history"] if e["at"] >= t0] == ["ephemeral:deploying"]
    assert state["disk_image"] is None
    assert lab.state()["maas"]["fail_next"]["deploy"] == 0
    assert maas.post(f"machines/{sid}/", op="release").status_code == 200
    maas.wait_status(sid, READY)


# --- BMC faults and the power button ------------------------------------------------------------------


def test_bmc_silent_makes_pyghmi_time_out_then_reset_recovers(lab, ipmi):
    host = manifest_host(lab, "host-005")
    lab.control("POST", "/faults/bmc/host-005", {"mode": "silent"})
    assert lab.host("host-005")["bmc_fault"] == "silent"
    with pytest.raises((IpmiDeadline, IpmiError)) as info:
        ipmi.power(host, timeout=3)
    if info.type is IpmiError:  # pyghmi gave up on its own, before our deadline
        assert "timeout" in str(info.value).lower(), info.value
    lab.reset_faults()
    assert ipmi.power(host) == "off"


def test_bmc_slow_answers_late_but_right(lab, ipmi):
    host = manifest_host(lab, "host-005")
    lab.control("POST", "/faults/bmc/host-005", {"mode": "slow", "delay": 0.3})
    started = time.monotonic()
    assert ipmi.power(host) == "off"
    assert time.monotonic() - started >= 0.3  # a lower bound: at least one reply waited
    assert lab.host("host-005")["bmc_fault"] == "slow"


def test_bmc_reject_auth_fails_the_login(lab, ipmi):
    host = manifest_host(lab, "host-005")
    lab.control("POST", "/faults/bmc/host-005", {"mode": "reject_auth"})
    with pytest.raises(IpmiError, match="(?i)password"):
        ipmi.power(host)
    lab.reset_faults()
    assert ipmi.power(host) == "off"


def test_power_button_behind_the_back_is_what_the_bmc_reports(lab, ipmi, host_back):
    host = host_back("host-005")
    lab.control("POST", "/power/host-005", {"on": True})
    assert ipmi.power(host) == "on"
    # The server PXE-boots; MAAS does not know its MAC, so nothing is offered to boot.
    wait_for("host-005 to sit at PXE", lambda: lab.host("host-005"), lambda s: s["running"] == PXE_IDLE, timeout=10)
    lab.control("POST", "/power/host-005", {"on": False})
    assert ipmi.power(host) == "off"
    assert lab.host("host-005")["running"] == "off"


# --- switch faults and drift ------------------------------------------------------------------------------


@pytest.mark.parametrize("switch", ["tor-1", "tor-2"])
def test_switch_reject_login_is_a_netmiko_auth_error(lab, switch):
    sw = switch_of(lab.manifest, switch)
    lab.control("POST", f"/faults/switch/{switch}", {"mode": "reject_login", "count": 1})
    with pytest.raises(NetmikoAuthenticationException):
        connect_switch(sw)
    connect_switch(sw).disconnect()  # the fault was for one login


@pytest.mark.parametrize("switch", ["tor-1", "tor-2"])
def test_switch_drop_session_breaks_netmiko_mid_config(lab, switch):
    sw = switch_of(lab.manifest, switch)
    port = spare_port(lab, switch, 42)
    if sw["type"] == "Force10":
        commands = [f"interface vlan {DRIFT_VLAN}", f"tagged TenGigabitEthernet {port}"]
        cleanup = [f"no interface vlan {DRIFT_VLAN}"]
    else:
        commands = [f"interface {port}", f"switchport access vlan {DRIFT_VLAN}"]
        cleanup = [f"no vlan {DRIFT_VLAN}"]
    conn = connect_switch(sw)
    try:
        lab.control("POST", f"/faults/switch/{switch}", {"mode": "drop_session", "after": 1})
        # The transport closes with no reply: netmiko waits for a prompt that never comes
        # (or, if it writes again first, finds the socket closed).
        with pytest.raises((ReadTimeout, OSError, EOFError)):
            conn.send_config_set(commands, read_timeout=1)
    finally:
        conn.disconnect()
    assert lab.state()["switches"][switch]["counters"]["drops"] >= 1
    # The first command went through, the dropped one did not; a new session works.
    assert show_port(sw, port) == PortView(None, frozenset())
    configure(sw, cleanup)


@pytest.mark.parametrize("switch", ["tor-1", "tor-2"])
def test_port_drift_shows_over_ssh(lab, switch):
    sw = switch_of(lab.manifest, switch)
    port = spare_port(lab, switch, 41)
    assert show_port(sw, port) == PortView(None, frozenset())
    try:
        lab.control("POST", f"/ports/{switch}", {"port": port, "untagged": None, "tagged": [DRIFT_VLAN]})
        assert show_port(sw, port) == PortView(None, frozenset({DRIFT_VLAN}))
        lab.control("POST", f"/ports/{switch}", {"port": port, "untagged": DRIFT_VLAN, "tagged": []})
        assert show_port(sw, port) == PortView(DRIFT_VLAN, frozenset())
    finally:
        lab.control("POST", f"/ports/{switch}", {"port": port, "untagged": None, "tagged": []})
    assert show_port(sw, port) == PortView(None, frozenset())
    configure(sw, [f"no interface vlan {DRIFT_VLAN}" if sw["type"] == "Force10" else f"no vlan {DRIFT_VLAN}"])


# --- reset and bad requests ---------------------------------------------------------------------------------


def test_reset_clears_every_fault(lab, maas, ipmi):
    host = manifest_host(lab, "host-005")
    lab.control("POST", "/faults/maas", {"mode": "503", "count": 50, "retry_after": 1})
    lab.control("POST", "/faults/maas", {"delay": 0.1})
    lab.control("POST", "/faults/maas", {"fail_next": "commission", "count": 3})
    lab.control("POST", "/faults/bmc/host-005", {"mode": "reject_auth"})
    for switch in ("tor-1", "tor-2"):
        lab.control("POST", f"/faults/switch/{switch}", {"mode": "reject_login", "count": 5})
    assert maas.get("machines/").status_code == 503

    assert lab.control("POST", "/reset") == {"ok": True}
    state = lab.state()
    faults = state["maas"]["faults"]
    assert (faults["mode"], faults["count"], faults["delay"]) == ("none", 0, 0.0)
    assert set(state["maas"]["fail_next"].values()) == {0}
    assert {h["bmc_fault"] for h in state["hosts"].values()} == {"none"}
    assert {s["fault"]["mode"] for s in state["switches"].values()} == {"none"}
    # And every independent client sees a healthy lab.
    assert maas.get("machines/").status_code == 200
    assert ipmi.power(host) == "off"
    for sw in lab.manifest["switches"]:
        connect_switch(sw).disconnect()


BAD_REQUESTS = [
    ("GET", "/hosts/host-999", None, 404, "host-999"),
    ("GET", "/nothing-here", None, 404, "no such endpoint"),
    ("DELETE", "/reset", None, 404, "no such endpoint"),
    ("POST", "/faults/bmc/host-999", b'{"mode": "silent"}', 404, "host-999"),
    ("POST", "/faults/bmc/host-005", b'{"mode": "explode"}', 400, "explode"),
    ("POST", "/faults/bmc/host-005", b'{"mode": "slow", "delay": -1}', 400, "delay"),
    ("POST", "/faults/bmc/host-005", b"{}", 400, "mode"),
    ("POST", "/faults/maas", b'{"mode": "418"}', 400, "mode"),
    ("POST", "/faults/maas", b'{"mode": "503", "count": -1}', 400, "negative"),
    ("POST", "/faults/maas", b'{"fail_next": "dance"}', 400, "phase"),
    ("POST", "/faults/maas", b"{not json", 400, "JSON"),
    ("POST", "/faults/maas", b"[1, 2]", 400, "object"),
    ("POST", "/faults/switch/tor-9", b'{"mode": "busy"}', 404, "tor-9"),
    ("POST", "/faults/switch/tor-1", b'{"mode": "melt"}', 400, "melt"),
    ("POST", "/power/host-005", b"{}", 400, "on"),
    ("POST", "/power/host-005", b'{"on": "yes"}', 400, "on"),
    ("POST", "/ports/tor-1", b'{"port": "9/9/9"}', 404, "9/9/9"),
    ("POST", "/ports/tor-1", b'{"port": "1/1/41", "untagged": 5000}', 400, "5000"),
    ("POST", "/ports/tor-1", b'{"port": "1/1/41", "tagged": "12"}', 400, "tagged"),
    ("POST", "/ports/tor-1", b'{"untagged": 3}', 400, "port"),
]


def test_bad_control_requests_get_a_json_error_and_change_nothing(lab):
    before = lab.state()
    for method, path, body, status, needle in BAD_REQUESTS:
        got, payload = raw_control(lab, method, path, body)
        assert (got, needle.lower() in payload.get("error", "").lower()) == (status, True), (
            method,
            path,
            body,
            payload,
        )
    after = lab.state()
    assert after["hosts"]["host-005"]["bmc_fault"] == "none"
    assert after["switches"]["tor-1"]["ports"] == before["switches"]["tor-1"]["ports"]
    assert after["maas"]["faults"] == before["maas"]["faults"]


# --- the command line ---------------------------------------------------------------------------------------


def _manifest_path(lab) -> str:
    args = list(lab.proc.args)
    return args[args.index("--manifest") + 1]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="250", METALFLOW_HOME="/nonexistent-metalflow-home")
    env.pop("METALFLOW_LAB_MANIFEST", None)
    return subprocess.run(
        [sys.executable, "-m", "metalflow.lab", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_state_lists_every_host(lab):
    out = cli("state", "--manifest", _manifest_path(lab))
    assert out.returncode == 0, out.stdout + out.stderr
    for h in lab.manifest["hosts"]:
        assert h["name"] in out.stdout
    out = cli("state", "--json", "--manifest", _manifest_path(lab))
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert sorted(data["hosts"]) == [h["name"] for h in lab.manifest["hosts"]]
    assert data["hosts"]["host-006"]["ports"][0]["port"] == "GigabitEthernet1/0/4"


def test_cli_fault_bmc_changes_the_state_and_reset_clears_it(lab, ipmi):
    manifest = _manifest_path(lab)
    out = cli("fault", "bmc", "host-006", "--mode", "silent", "--manifest", manifest)
    assert out.returncode == 0, out.stdout + out.stderr
    assert lab.host("host-006")["bmc_fault"] == "silent"
    out = cli("fault", "reset", "--manifest", manifest)
    assert out.returncode == 0, out.stdout + out.stderr
    assert lab.host("host-006")["bmc_fault"] == "none"
    assert ipmi.power(manifest_host(lab, "host-006")) == "off"


def test_cli_unknown_host_is_a_clear_failure(lab):
    out = cli("fault", "bmc", "host-999", "--mode", "silent", "--manifest", _manifest_path(lab))
    assert out.returncode == 1
    assert "no host 'host-999'" in out.stdout + out.stderr
    out = cli("state", "host-999", "--manifest", _manifest_path(lab))
    assert out.returncode == 1
    assert "host-999" in out.stdout + out.stderr


def test_cli_without_a_running_lab_says_so_and_exits_2(lab, tmp_path):
    out = cli("state", "--manifest", str(tmp_path / "missing.json"))
    assert out.returncode == 2
    assert "No lab manifest" in out.stdout + out.stderr
    # A manifest left behind by a lab that is gone: nothing answers on its control URL.
    with socket.socket() as s:
        s.bind(("127.120.99.1", 0))  # our block, an address no lab part uses
        port = s.getsockname()[1]
    stale = dict(lab.manifest, lab=dict(lab.manifest["lab"], control_url=f"http://127.120.99.1:{port}/"))
    path = tmp_path / "stale.json"
    path.write_text(json.dumps(stale))
    out = cli("state", "--manifest", str(path))
    assert out.returncode == 2
    assert "does not answer" in out.stdout + out.stderr
