"""The MAAS region simulator, driven over real HTTP by an independent client
(``requests`` + ``requests_oauthlib.OAuth1`` with PLAINTEXT, as MAAS's docs show).

The hardware side is ``FakeWorld``, a test-local stand-in for the BMCs and switches: it
implements the simulator's ``PowerDriver`` and ``MachineHooks`` and calls ``on_netboot`` when
a powered machine would PXE-boot. The lead's coherence tests cover the same interfaces with the
real BMC and switch simulators; ``test_ipmi_driver_*`` runs the real ``IpmiPowerDriver``
against pyghmi's stock ``Bmc`` in a subprocess.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from metalflow.lab.maas import IpmiPowerDriver, MaasSim, NodeStatus, PowerError
from metalflow.lab.maas import preseed as preseed_mod
from metalflow.lab.maas.status import ACTIONS, LABELS, TRANSITIONS
from metalflow.lab.maas.tempita import Template, TemplateError
from metalflow.lab.spec import MaasSpec, Timing

ADDR = "127.152.250.1"
CK, TK, TS = "lab-consumer", "lab-token", "lab-secret"
FIXTURES = Path(
    os.environ.get("MAAS_FIXTURES") or Path(__file__).resolve().parents[1] / "fixtures" / "maas" / "gomaasclient"
)
FAST = Timing(
    commission=0.2, deploy=0.3, release=0.1, erase=0.3, quick_erase=0.1, secure_erase=0.2, node_timeout=5.0, boot=0.0
)


# --- the stand-in for the physical world -----------------------------------------------------


class FakeWorld:
    """BMCs + switches in one small object, keyed by power_address.

    ``pxe=True``: the machine's port is in the PXE VLAN, so a power-on reaches MAAS at once
    (``on_netboot`` on the caller's thread). ``pxe=False``: the PXE ROM gets no DHCP offer and
    the machine sits there. ``power_error``: the BMC refuses every command.
    """

    def __init__(self) -> None:
        self.sim: MaasSim | None = None
        self.hosts: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def add(self, address: str, macs: list[str], *, pxe: bool = True, cpu: int = 8, mem: int = 16384) -> dict:
        self.hosts[address] = {
            "macs": macs,
            "pxe": pxe,
            "power": "off",
            "cpu": cpu,
            "mem": mem,
            "power_error": False,
            "disk": None,
            "answers": [],
        }
        return power_params(address)

    def _host(self, params: dict) -> dict:
        host = self.hosts[params["power_address"]]
        if host["power_error"]:
            raise PowerError(f"ipmi on {params['power_address']}: no answer (fake)")
        return host

    def _note(self, *event: str) -> None:
        with self.lock:
            self.events.append(event)

    def netboot(self, address: str) -> str | None:
        host = self.hosts[address]
        answer = self.sim.on_netboot(
            host["macs"][0], {"macs": host["macs"], "cpu_count": host["cpu"], "memory": host["mem"]}
        )
        host["answers"].append(answer)
        self._note("netboot", address, str(answer))
        return answer

    # PowerDriver
    def power_on(self, params: dict) -> None:
        host = self._host(params)
        host["power"] = "on"
        self._note("power_on", params["power_address"])
        if host["pxe"]:
            self.netboot(params["power_address"])

    def power_off(self, params: dict, soft: bool = False) -> None:
        self._host(params)["power"] = "off"
        self._note("power_off", params["power_address"], "soft" if soft else "hard")

    def query(self, params: dict) -> str:
        try:
            return self._host(params)["power"]
        except PowerError:
            return "error"

    # MachineHooks
    def _by_mac(self, mac: str) -> tuple[str, dict]:
        return next((a, h) for a, h in self.hosts.items() if mac in h["macs"])

    def install(self, boot_mac: str, image: str) -> None:
        address, host = self._by_mac(boot_mac)
        host["disk"] = image
        self._note("install", address, image)

    def wipe(self, boot_mac: str) -> None:
        address, host = self._by_mac(boot_mac)
        host["disk"] = None
        self._note("wipe", address)

    def reboot(self, boot_mac: str) -> None:
        address, host = self._by_mac(boot_mac)
        self._note("reboot", address)
        if host["pxe"]:  # the firmware PXE-boots first; MAAS answers "local"
            self.netboot(address)

    def kinds(self, address: str) -> list[str]:
        with self.lock:
            return [e[0] if e[0] != "netboot" else f"netboot:{e[2]}" for e in self.events if e[1] == address]


def power_params(address: str) -> dict[str, str]:
    return {"power_address": address, "power_user": "admin", "power_pass": "pw", "power_driver": "LAN_2_0"}


class Client:
    """A MAAS API client written from the docs: OAuth1 PLAINTEXT, trailing slashes, form bodies."""

    def __init__(self, sim: MaasSim):
        self.base = sim.api_url
        self.s = requests.Session()
        self.s.auth = OAuth1(
            CK, client_secret="", resource_owner_key=TK, resource_owner_secret=TS, signature_method=SIGNATURE_PLAINTEXT
        )

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.s.get(self.base + path, params=params, timeout=10)

    def post(self, path: str, op: str | None = None, data: Any = None, **kw: Any) -> requests.Response:
        return self.s.post(self.base + path, params={"op": op} if op else None, data=data, timeout=10, **kw)

    def put(self, path: str, data: Any) -> requests.Response:
        return self.s.put(self.base + path, data=data, timeout=10)

    def delete(self, path: str) -> requests.Response:
        return self.s.delete(self.base + path, timeout=10)

    def machine(self, sid: str) -> dict:
        r = self.get(f"machines/{sid}/")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, sid: str, status: str, timeout: float = 10.0) -> dict:
        """Poll until ``status_name`` is ``status``; fail on time with the last state seen."""
        end = time.monotonic() + timeout
        m = self.machine(sid)
        while m["status_name"] != status and time.monotonic() < end:
            time.sleep(0.02)
            m = self.machine(sid)
        assert m["status_name"] == status, f"wanted {status}, last {m['status_name']}: {m['status_message']}"
        return m

    def create(self, hostname: str, macs: list[str], params: dict, **extra: str) -> requests.Response:
        data: list[tuple[str, str]] = [
            ("architecture", "amd64/generic"),
            ("hostname", hostname),
            ("power_type", "ipmi"),
        ]
        data += [("mac_addresses", m) for m in macs]
        data += [(f"power_parameters_{k}", v) for k, v in params.items()]
        data += list(extra.items())
        return self.post("machines/", data=data)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def make_maas(tmp_path):
    """Factory: a started MaasSim on a free port of 127.152.250.1 with a FakeWorld behind it."""
    sims: list[MaasSim] = []

    def make(timing: Timing = FAST, images: tuple[str, ...] | None = None):
        world = FakeWorld()
        kw = {"images": images} if images else {}
        spec = MaasSpec(
            address=ADDR,
            port=0,
            consumer_key=CK,
            token_key=TK,
            token_secret=TS,
            preseed_dir=str(tmp_path / "preseeds"),
            pxe_vlan=10,
            **kw,
        )
        sim = MaasSim(spec, timing=timing, power=world, hooks=world, seed=7)
        world.sim = sim
        sim.start()
        sims.append(sim)
        return sim, world, Client(sim)

    yield make
    for sim in sims:
        sim.stop()


@pytest.fixture
def maas(make_maas):
    return make_maas()


def mac(n: int, nic: int = 0) -> str:
    return f"02:52:00:{n:02x}:{nic:02x}:01"


def ready_machine(client: Client, world: FakeWorld, n: int, nics: int = 1, **kw: Any) -> str:
    """Create a machine through the API and let it commission to Ready."""
    address = f"127.152.1.{n}"
    macs = [mac(n, k) for k in range(nics)]
    r = client.create(f"host-{n:03d}", macs, world.add(address, macs, **kw))
    assert r.status_code == 200, r.text
    sid = r.json()["system_id"]
    client.wait(sid, "Ready")
    return sid


# --- auth ------------------------------------------------------------------------------------


def _oauth_header(ck=CK, tk=TK, sig=f"%26{TS}", nonce=None, ts=None, method="PLAINTEXT") -> str:
    nonce = nonce or os.urandom(8).hex()
    ts = ts if ts is not None else str(int(time.time()))
    return (
        f'OAuth realm="", oauth_version="1.0", oauth_signature_method="{method}", '
        f'oauth_consumer_key="{ck}", oauth_token="{tk}", oauth_signature="{sig}", '
        f'oauth_nonce="{nonce}", oauth_timestamp="{ts}"'
    )


def test_version_and_describe_need_no_auth(maas):
    sim, _, _ = maas
    r = requests.get(sim.api_url + "version/", timeout=5)
    assert r.status_code == 200
    assert set(r.json()) == {"capabilities", "version", "subversion"}
    api_hash = r.headers["X-MAAS-API-Hash"]
    d = requests.get(sim.api_url + "describe/", timeout=5)
    assert d.status_code == 200
    doc = d.json()
    assert doc["hash"] == api_hash == d.headers["X-MAAS-API-Hash"]
    machines = next(h for h in doc["handlers"] if h["name"] == "MachinesHandler")
    assert {"method": "POST", "op": "allocate"} in [{"method": a["method"], "op": a["op"]} for a in machines["actions"]]
    assert machines["path"] == "/MAAS/api/2.0/machines/"
    assert {"name", "anon", "auth"} <= set(doc["resources"][0])


def test_no_credentials_is_401_forbidden(maas):
    sim, _, _ = maas
    r = requests.get(sim.api_url + "machines/", timeout=5)
    assert (r.status_code, r.text) == (401, "Forbidden")
    assert "X-MAAS-API-Hash" in r.headers


# Headers are built when the test runs, not at collection: a timestamp made at import goes
# stale (MAAS's 300 s window) when the suite before this test takes longer than that.
@pytest.mark.parametrize(
    "header_args, body",
    [
        ({"ck": "nobody"}, "Authorization Error: Invalid API key."),
        ({"tk": "stolen"}, "Authorization Error: 'Invalid access token: stolen'"),
        ({"sig": "%26wrong"}, "Authorization Error: 'Invalid signature.'"),
        (
            {"method": "HMAC-SHA1"},
            "Authorization Error: 'Signature method HMAC-SHA1 not supported try one of the following: PLAINTEXT'",
        ),
        ({"ts": "1000000000"}, "Authorization Error: 'Expired timestamp:"),
    ],
)
def test_bad_credentials_are_401_with_maas_messages(maas, header_args, body):
    sim, _, _ = maas
    header = _oauth_header(**header_args)
    r = requests.get(sim.api_url + "machines/", headers={"Authorization": header}, timeout=5)
    assert r.status_code == 401
    assert r.text.startswith(body)
    assert r.headers["WWW-Authenticate"] == 'OAuth realm="OAuth"'
    assert TS not in r.text


def test_signature_raw_or_percent_encoded_and_replay_rejected(maas):
    sim, _, _ = maas
    url = sim.api_url + "machines/"
    assert requests.get(url, headers={"Authorization": _oauth_header(sig=f"&{TS}")}, timeout=5).status_code == 200
    header = _oauth_header(nonce="fixed-nonce")
    assert requests.get(url, headers={"Authorization": header}, timeout=5).status_code == 200
    again = requests.get(url, headers={"Authorization": header}, timeout=5)
    assert (again.status_code, again.text) == (401, "Authorization Error: 'Nonce already used: fixed-nonce'")


def test_timestamp_must_be_an_integer(maas):
    sim, _, _ = maas
    r = requests.get(sim.api_url + "machines/", headers={"Authorization": _oauth_header(ts="soon")}, timeout=5)
    assert r.status_code == 400
    assert "oauth_timestamp" in r.text


# --- HTTP conventions ---------------------------------------------------------------------------


def test_missing_trailing_slash_redirects_and_loses_the_post(maas):
    sim, world, client = maas
    r = client.s.get(client.base + "machines", params={"hostname": "x"}, allow_redirects=False, timeout=5)
    assert r.status_code == 301
    assert r.headers["Location"] == client.base + "machines/?hostname=x"
    sid = ready_machine(client, world, 1)
    r = client.s.post(
        client.base + "machines", params={"op": "allocate"}, data={"system_id": sid}, allow_redirects=False, timeout=5
    )
    assert r.status_code == 301
    assert client.machine(sid)["status_name"] == "Ready"  # the POST did nothing
    # A client that follows the redirect re-sends it as a GET: a plain list, not an allocation.
    followed = client.s.post(client.base + "machines", params={"op": "allocate"}, data={"system_id": sid}, timeout=5)
    assert followed.status_code == 400 and "method=GET op=allocate" in followed.text
    assert client.machine(sid)["status_name"] == "Ready"


def test_unknown_path_is_404(maas):
    _, _, client = maas
    assert client.get("nonsense/").status_code == 404


def test_unknown_op_is_unrecognised_signature(maas):
    _, _, client = maas
    r = client.post("machines/", op="foo")
    assert (r.status_code, r.text) == (400, "Unrecognised signature: method=POST op=foo")
    r = client.put("machines/", data={"x": "1"})
    assert (r.status_code, r.text) == (400, "Unrecognised signature: method=PUT op=None")


def test_op_is_read_from_the_body_too(maas):
    _, world, client = maas
    sid = ready_machine(client, world, 1)
    r = client.post("machines/", data={"op": "allocate", "system_id": sid})
    assert r.status_code == 200 and r.json()["status_name"] == "Allocated"


def test_json_body_is_not_read_multipart_is(maas):
    _, world, client = maas
    r = client.s.post(client.base + "machines/", json={"mac_addresses": [mac(1)], "hostname": "j"}, timeout=5)
    assert r.status_code == 400
    assert r.json() == {"mac_addresses": ["This field is required."]}
    files = {
        "hostname": (None, "multi"),
        "mac_addresses": (None, mac(2)),
        "commission": (None, "false"),
        "power_type": (None, "ipmi"),
        "power_parameters_power_address": (None, "127.152.1.2"),
    }
    r = client.s.post(client.base + "machines/", files=files, timeout=5)
    assert r.status_code == 200, r.text
    assert (r.json()["hostname"], r.json()["status_name"]) == ("multi", "New")


# --- the node state machine ------------------------------------------------------------------------


def test_runbook_commission_allocate_deploy_release(maas):
    _, world, client = maas
    address, macs = "127.152.1.1", [mac(1), mac(1, 1)]
    r = client.create("host-001", macs, world.add(address, macs, cpu=24, mem=98304))
    assert r.status_code == 200, r.text
    created = r.json()
    assert (created["status"], created["status_name"]) == (1, "Commissioning")
    sid = created["system_id"]
    m = client.wait(sid, "Ready")
    assert (m["cpu_count"], m["memory"], m["power_state"]) == (24, 98304, "off")
    assert [i["mac_address"] for i in m["interface_set"]] == macs
    assert m["boot_interface"]["mac_address"] == macs[0]
    assert m["owner"] is None and m["osystem"] == ""

    r = client.post("machines/", op="allocate", data={"system_id": sid, "agent_name": "metalflow"})
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["owner"]) == (10, "admin")
    assert [x["system_id"] for x in client.get("machines/", agent_name="metalflow").json()] == [sid]

    r = client.post(f"machines/{sid}/", op="deploy", data={"distro_series": "ubuntu/jammy"})
    assert r.status_code == 200 and r.json()["status_name"] == "Deploying"
    m = client.wait(sid, "Deployed")
    assert (m["status"], m["osystem"], m["distro_series"], m["netboot"]) == (6, "ubuntu", "jammy", False)
    assert m["ip_addresses"] and m["ip_addresses"][0].startswith("10.10.0.")
    assert world.hosts[address]["disk"] == "ubuntu/jammy"
    # curtin rebooted the installed system: the firmware PXE-booted, MAAS said "local".
    wait_for(lambda: world.hosts[address]["answers"][-1:] == ["local"], what="local boot")

    r = client.post(f"machines/{sid}/", op="release")
    assert r.status_code == 200 and r.json()["status_name"] == "Releasing"
    m = client.wait(sid, "Ready")
    assert (m["owner"], m["osystem"], m["distro_series"], m["ip_addresses"]) == (None, "", "", [])
    assert world.kinds(address) == [
        "power_on",
        "netboot:commissioning",
        "power_off",
        "power_on",
        "netboot:deploying",
        "install",
        "reboot",
        "netboot:local",
        "power_off",
    ]


@pytest.mark.parametrize(
    "flags",
    [{"erase": "true"}, {"quick_erase": "true"}, {"secure_erase": "true"}, {"erase": "true", "quick_erase": "true"}],
)
def test_release_with_erase_wipes_through_the_erase_phase(maas, flags):
    sim, world, client = maas
    world.add("127.152.1.5", [mac(5)])
    sid = sim.add_machine("host-005", [mac(5)], power_params("127.152.1.5"), status=6)
    world.hosts["127.152.1.5"]["disk"] = "ubuntu/jammy"
    m = client.machine(sid)
    assert (m["status_name"], m["owner"], m["osystem"]) == ("Deployed", "admin", "ubuntu")
    r = client.post(f"machines/{sid}/", op="release", data=flags)
    assert r.status_code == 200 and r.json()["status"] == 14
    m = client.wait(sid, "Ready")
    assert m["owner"] is None and m["osystem"] == ""
    assert world.hosts["127.152.1.5"]["disk"] is None
    assert world.kinds("127.152.1.5") == ["power_on", "netboot:erasing", "wipe", "power_off"]


def test_release_of_ready_is_a_noop_and_of_new_is_409(maas):
    _, world, client = maas
    sid = ready_machine(client, world, 1)
    assert client.post(f"machines/{sid}/", op="release").json()["status_name"] == "Ready"
    r = client.create("fresh", [mac(2)], world.add("127.152.1.2", [mac(2)]), commission="false")
    new = r.json()["system_id"]
    r = client.post(f"machines/{new}/", op="release")
    assert (r.status_code, r.text) == (409, "Machine cannot be released in its current state ('New').")


def test_commission_false_gives_new_then_commission_op(maas):
    _, world, client = maas
    r = client.create("host-003", [mac(3)], world.add("127.152.1.3", [mac(3)]), commission="false")
    assert r.json()["status"] == 0
    sid = r.json()["system_id"]
    assert world.kinds("127.152.1.3") == []
    r = client.post(f"machines/{sid}/", op="commission")
    assert r.status_code == 200 and r.json()["status_name"] == "Commissioning"
    client.wait(sid, "Ready")


def test_commission_in_a_wrong_state_is_400_all(maas):
    _, world, client = maas
    sid = ready_machine(client, world, 1)
    client.post("machines/", op="allocate", data={"system_id": sid})
    r = client.post(f"machines/{sid}/", op="commission")
    assert r.status_code == 400
    assert r.json() == {"__all__": ["Commission is not available because of the current state of the node."]}


def test_commission_without_netboot_times_out(make_maas):
    _, world, client = make_maas(Timing(commission=0.1, deploy=0.1, node_timeout=0.5))
    r = client.create("dark", [mac(4)], world.add("127.152.1.4", [mac(4)], pxe=False))
    m = client.wait(r.json()["system_id"], "Failed commissioning")
    assert m["status"] == 2
    assert "timed out" in m["status_message"]
    assert world.kinds("127.152.1.4") == ["power_on"]


def test_deploy_without_netboot_times_out(make_maas):
    sim, world, client = make_maas(Timing(commission=0.1, deploy=0.1, node_timeout=0.5))
    world.add("127.152.1.4", [mac(4)], pxe=False)  # e.g. the port is not in the PXE VLAN
    sid = sim.add_machine("host-004", [mac(4)], power_params("127.152.1.4"))
    client.post(f"machines/{sid}/", op="deploy")
    m = client.wait(sid, "Failed deployment")
    assert m["status"] == 11 and "timed out" in m["status_message"]


def test_a_deploy_whose_machine_loses_power_fails_by_node_timeout(make_maas):
    """Real MAAS hears nothing more from an installer that lost power and fails the deploy
    when its status expires; the lab did finish it on a timer (issue 18)."""
    sim, world, client = make_maas(Timing(commission=0.05, deploy=0.6, node_timeout=0.8))
    sid = ready_machine(client, world, 7)
    client.post("machines/", op="allocate", data={"system_id": sid})
    client.post(f"machines/{sid}/", op="deploy", data={"distro_series": "ubuntu/jammy"})
    wait_for(lambda: client.machine(sid)["status_message"] == "Installing OS", what="the installer running")
    world.hosts["127.152.1.7"]["power"] = "off"
    sim.on_power_lost([mac(7)])  # what the lab's world says on the BMC's power-off
    assert "lost power" in client.machine(sid)["status_message"]
    m = client.wait(sid, "Failed deployment")
    assert m["status"] == 11 and "timed out" in m["status_message"]
    assert world.hosts["127.152.1.7"]["disk"] is None  # nothing was installed


def test_a_machine_that_boots_back_into_its_deploy_in_time_finishes_it(make_maas):
    sim, world, client = make_maas(Timing(commission=0.05, deploy=0.4, node_timeout=1.5))
    sid = ready_machine(client, world, 8)
    client.post("machines/", op="allocate", data={"system_id": sid})
    client.post(f"machines/{sid}/", op="deploy", data={"distro_series": "ubuntu/jammy"})
    wait_for(lambda: client.machine(sid)["status_message"] == "Installing OS", what="the installer running")
    sim.on_power_lost([mac(8)])
    time.sleep(0.6)  # the lost boot's completion would have fired by now: it must not
    assert client.machine(sid)["status_name"] == "Deploying"
    world.netboot("127.152.1.8")  # powered on again: PXE into the deploy
    m = client.wait(sid, "Deployed")
    assert m["status"] == 6


def test_power_errors_show_in_status_message_until_the_timeout(make_maas):
    _, world, client = make_maas(Timing(commission=0.1, node_timeout=0.8))
    params = world.add("127.152.1.6", [mac(6)])
    world.hosts["127.152.1.6"]["power_error"] = True
    sid = client.create("broken-bmc", [mac(6)], params).json()["system_id"]
    wait_for(lambda: client.machine(sid)["power_state"] == "error", what="power_state error")
    m = client.machine(sid)
    assert m["status_name"] == "Commissioning"
    assert m["status_message"].startswith("Failed to power on node")
    assert "pw" not in m["status_message"]
    m = client.wait(sid, "Failed commissioning")
    assert "timed out" in m["status_message"]


def test_abort_deploying_commissioning_and_wrong_state(make_maas):
    sim, world, client = make_maas(Timing(node_timeout=30))
    world.add("127.152.1.7", [mac(7)], pxe=False)
    sid = sim.add_machine("host-007", [mac(7)], power_params("127.152.1.7"))
    r = client.post(f"machines/{sid}/", op="abort")
    assert (r.status_code, r.text) == (409, f"Cannot abort in current state: node {sid} is in state Ready.")
    client.post(f"machines/{sid}/", op="deploy")
    r = client.post(f"machines/{sid}/", op="abort")
    assert r.status_code == 200
    assert (r.json()["status_name"], r.json()["owner"]) == ("Allocated", "admin")
    wait_for(lambda: world.kinds("127.152.1.7")[-1:] == ["power_off"], what="power off after abort")
    client.post(f"machines/{sid}/", op="release")
    client.wait(sid, "Ready")
    client.post(f"machines/{sid}/", op="commission")
    assert client.post(f"machines/{sid}/", op="abort").json()["status_name"] == "New"
    client.post(f"machines/{sid}/", op="commission")
    client.post(f"machines/{sid}/", op="abort")
    world.hosts["127.152.1.7"]["pxe"] = True
    client.post(f"machines/{sid}/", op="commission")
    client.wait(sid, "Ready")
    world.hosts["127.152.1.7"]["pxe"] = False
    client.post("machines/", op="allocate", data={"system_id": sid})
    client.post(f"machines/{sid}/", op="release", data={"erase": "true"})
    assert client.post(f"machines/{sid}/", op="abort").json()["status_name"] == "Failed disk erasing"


@pytest.mark.parametrize(
    "phase, action, failed",
    [
        ("commission", "commission", "Failed commissioning"),
        ("deploy", "deploy", "Failed deployment"),
        ("erase", "erase", "Failed disk erasing"),
        ("release", "release", "Releasing failed"),
    ],
)
def test_fail_next_fails_the_next_phase_only(maas, phase, action, failed):
    sim, world, client = maas
    sid = ready_machine(client, world, 1)
    sim.fail_next(phase)

    def run() -> None:
        if action == "commission":
            client.post(f"machines/{sid}/", op="commission")
        elif action == "deploy":
            client.post(f"machines/{sid}/", op="deploy")
        else:
            client.post("machines/", op="allocate", data={"system_id": sid})
            client.post(f"machines/{sid}/", op="release", data={"erase": "true"} if action == "erase" else {})

    run()
    m = client.wait(sid, failed)
    assert m["status_message"].startswith("Marking node failed")
    assert sim.snapshot()["fail_next"][phase] == 0
    # Recover and run the phase again: it succeeds this time.
    if failed == "Failed commissioning":
        client.post(f"machines/{sid}/", op="commission")
        client.wait(sid, "Ready")
    else:
        client.post(f"machines/{sid}/", op="release")
        client.wait(sid, "Ready")
        run()
        client.wait(sid, {"deploy": "Deployed"}.get(action, "Ready"))


def test_deploy_unknown_image_is_400_after_auto_allocation(maas):
    sim, world, client = maas
    world.add("127.152.1.8", [mac(8)])
    sid = sim.add_machine("host-008", [mac(8)], power_params("127.152.1.8"))
    r = client.post(f"machines/{sid}/", op="deploy", data={"distro_series": "windows/2019"})
    assert r.status_code == 400
    assert r.json() == {
        "distro_series": [
            "'windows/2019' is not a valid distro_series.  It should be one of: '', 'centos/centos70', "
            "'custom/centos7', 'ubuntu/jammy', 'ubuntu/noble'."
        ]
    }
    m = client.machine(sid)  # MAAS allocates before it validates the series
    assert (m["status_name"], m["osystem"]) == ("Allocated", "")


@pytest.mark.parametrize(
    "series, osystem, release",
    [
        ("ubuntu/jammy", "ubuntu", "jammy"),
        ("jammy", "ubuntu", "jammy"),
        ("22.04", "ubuntu", "jammy"),
        ("custom/centos7", "custom", "centos7"),
        ("centos7", "custom", "centos7"),
        ("centos/centos70", "centos", "centos70"),
    ],
)
def test_deploy_series_spellings(maas, series, osystem, release):
    sim, world, client = maas
    world.add("127.152.1.9", [mac(9)])
    sid = sim.add_machine("host-009", [mac(9)], power_params("127.152.1.9"))
    r = client.post(f"machines/{sid}/", op="deploy", data={"distro_series": series})
    assert r.status_code == 200, r.text
    m = client.wait(sid, "Deployed")
    assert (m["osystem"], m["distro_series"]) == (osystem, release)
    assert world.hosts["127.152.1.9"]["disk"] == f"{osystem}/{release}"


def test_deploy_in_wrong_state_is_409(maas):
    _, world, client = maas
    r = client.create("newbie", [mac(1)], world.add("127.152.1.1", [mac(1)]), commission="false")
    sid = r.json()["system_id"]
    r = client.post(f"machines/{sid}/", op="deploy")
    assert (r.status_code, r.text) == (409, "Can't deploy a machine that is in the 'New' state")


def test_mark_broken_and_fixed(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1)])
    ready = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    assert client.post(f"machines/{ready}/", op="mark_broken").status_code == 403  # not its owner
    r = client.post(f"machines/{ready}/", op="mark_fixed")
    assert (r.status_code, r.text) == (409, "Can't mark a non-broken node as 'Ready'.")
    client.post("machines/", op="allocate", data={"system_id": ready})
    r = client.post(f"machines/{ready}/", op="mark_broken", data={"comment": "fan failure"})
    assert r.status_code == 200
    m = r.json()
    assert (m["status"], m["owner"], m["error_description"]) == (8, None, "fan failure")
    m = client.post(f"machines/{ready}/", op="mark_fixed").json()
    assert (m["status_name"], m["error_description"]) == ("Ready", "")

    world.add("127.152.1.2", [mac(2)])
    deployed = sim.add_machine("host-002", [mac(2)], power_params("127.152.1.2"), status=6)
    assert client.post(f"machines/{deployed}/", op="mark_broken").json()["status_name"] == "Broken"
    m = client.post(f"machines/{deployed}/", op="mark_fixed").json()
    assert (m["status_name"], m["owner"], m["osystem"]) == ("Deployed", "admin", "ubuntu")


def test_power_ops_and_query_power_state(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1)], pxe=False)
    sid = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"), status=6)
    r = client.post(f"machines/{sid}/", op="power_off", data={"stop_mode": "soft"})
    assert r.status_code == 200
    assert client.get(f"machines/{sid}/", op="query_power_state").json() == {"state": "off"}
    assert ("power_off", "127.152.1.1", "soft") in world.events
    assert client.post(f"machines/{sid}/", op="power_on").status_code == 200
    assert client.get(f"machines/{sid}/", op="query_power_state").json() == {"state": "on"}
    assert client.machine(sid)["power_state"] == "on"
    world.hosts["127.152.1.1"]["power_error"] = True
    r = client.get(f"machines/{sid}/", op="query_power_state")
    assert r.status_code == 503
    assert client.machine(sid)["power_state"] == "error"
    world.add("127.152.1.2", [mac(2)])
    unowned = sim.add_machine("host-002", [mac(2)], power_params("127.152.1.2"))
    r = client.post(f"machines/{unowned}/", op="power_on")
    assert (r.status_code, r.text) == (409, "Can't start node: it hasn't been allocated.")


def test_put_and_delete_machine(maas):
    sim, world, client = maas
    sid = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    sim.add_machine("host-002", [mac(2)], power_params("127.152.1.2"))
    r = client.put(f"machines/{sid}/", {"hostname": "vm-42", "power_parameters_power_pass": "new"})
    assert r.status_code == 200 and r.json()["fqdn"] == "vm-42.maas"
    assert client.get(f"machines/{sid}/", op="power_parameters").json()["power_pass"] == "new"
    r = client.put(f"machines/{sid}/", {"hostname": "host-002"})
    assert r.json() == {"hostname": ["Node with this Hostname already exists."]}
    assert client.delete(f"machines/{sid}/").status_code == 204
    r = client.get(f"machines/{sid}/")
    assert (r.status_code, r.text) == (404, "No Machine matches the given query.")


# --- listing, creating, allocating ---------------------------------------------------------------------


def test_machine_filters_and_their_errors(maas):
    sim, world, client = maas
    a = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    b = sim.add_machine("host-002", [mac(2), mac(2, 1)], power_params("127.152.1.2"), status=0)
    assert [m["system_id"] for m in client.get("machines/").json()] == [a, b]
    assert [m["system_id"] for m in client.get("machines/", hostname="host-002").json()] == [b]
    assert [m["system_id"] for m in client.get("machines/", mac_address=mac(2, 1).upper()).json()] == [b]
    assert [m["system_id"] for m in client.get("machines/", status="new").json()] == [b]
    assert [m["system_id"] for m in client.get("machines/", id=a).json()] == [a]
    assert [m["system_id"] for m in client.get("machines/", system_id=b).json()] == [b]
    assert client.get("machines/", mac_address="02:52:00:99:99:99").json() == []
    r = client.get("machines/", mac_address="not-a-mac")
    assert (r.status_code, r.text) == (400, "Invalid MAC address(es): not-a-mac")
    r = client.get("machines/", colour="red")
    assert (r.status_code, r.json()) == (400, {"colour": ["No such constraint."]})
    r = client.get("machines/", status="sleepy")
    assert r.status_code == 400 and "status" in r.json()


def test_create_errors(maas):
    sim, world, client = maas
    sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    r = client.create("other", [mac(1)], power_params("127.152.1.9"))
    assert (r.status_code, r.json()) == (400, {"mac_addresses": [f"MAC address {mac(1)} already in use on host-001."]})
    r = client.create("other", [mac(1), mac(3)], power_params("127.152.1.9"))
    assert r.json()["mac_addresses"][0].startswith("One or more MAC addresses is invalid. (")
    r = client.create("host-001", [mac(4)], power_params("127.152.1.9"))
    assert r.json() == {"hostname": ["Node with this Hostname already exists."]}
    r = client.post("machines/", data={"mac_addresses": mac(5), "architecture": "sparc"})
    assert r.status_code == 400 and "'sparc/generic' is not a valid architecture" in r.json()["architecture"][0]
    r = client.post("machines/", data={"mac_addresses": mac(5), "architecture": "amd64", "commission": "false"})
    assert r.status_code == 200 and r.json()["architecture"] == "amd64/generic"


def test_allocate_constraints_and_conflicts(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1)])
    world.add("127.152.1.2", [mac(2)])
    a = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    b = sim.add_machine("host-002", [mac(2)], power_params("127.152.1.2"), cpu_count=64)
    r = client.post("machines/", op="allocate", data={"mac_address": mac(1)})
    assert (r.status_code, r.json()) == (400, {"mac_address": ["No such constraint."]})
    assert client.post("machines/", op="allocate", data={"cpu_count": "32"}).json()["system_id"] == b
    assert client.post("machines/", op="allocate", data={"name": "host-001.maas"}).json()["system_id"] == a
    r = client.post("machines/", op="allocate", data={"system_id": a})
    assert (r.status_code, r.text) == (409, f"No machine with system ID {a} available.")
    r = client.post("machines/", op="allocate")
    assert r.status_code == 409 and r.text.startswith("No available machine matches constraints:")
    assert sorted(m["system_id"] for m in client.get("machines/", op="list_allocated").json()) == sorted([a, b])
    r = client.post("machines/", op="release", data=[("machines", a), ("machines", b)])
    assert r.status_code == 200 and sorted(r.json()) == sorted([a, b])
    client.wait(a, "Ready")
    client.wait(b, "Ready")
    r = client.post("machines/", op="release", data={"machines": "nosuch"})
    assert (r.status_code, r.text) == (400, "Unknown machine(s): nosuch.")


def test_tags_update_nodes_and_allocate_by_tags(maas):
    sim, world, client = maas
    a = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    b = sim.add_machine("host-002", [mac(2)], power_params("127.152.1.2"))
    r = client.post("tags/", data={"name": "gpu", "comment": "has a GPU"})
    assert r.status_code == 200 and r.json()["resource_uri"] == "/MAAS/api/2.0/tags/gpu/"
    assert client.post("tags/", data={"name": "gpu"}).json() == {"name": ["Tag with this Name already exists."]}
    client.post("tags/", data={"name": "account-7"})
    r = client.post("tags/gpu/", op="update_nodes", data=[("add", a), ("add", b)])
    assert r.json() == {"added": 2, "removed": 0}
    assert client.post("tags/gpu/", op="update_nodes", data={"remove": a}).json() == {"added": 0, "removed": 1}
    assert [m["system_id"] for m in client.get("tags/gpu/", op="machines").json()] == [b]
    assert client.get(f"machines/{b}/").json()["tag_names"] == ["gpu"]
    assert [m["system_id"] for m in client.get("machines/", tags="gpu").json()] == [b]
    r = client.post("machines/", op="allocate", data={"tags": "gpu"})
    assert r.status_code == 200 and r.json()["system_id"] == b
    assert client.post("machines/", op="allocate", data={"tags": "gpu"}).status_code == 409
    assert client.post("machines/", op="allocate", data={"tags": "nosuchtag"}).status_code == 400
    r = client.post("tags/gpu/", op="update_nodes", data={"add": "nosuch"})
    assert r.status_code == 400
    assert client.get("tags/nosuch/").status_code == 404
    assert sorted(t["name"] for t in client.get("tags/").json()) == ["account-7", "gpu"]


# --- interfaces ---------------------------------------------------------------------------------


def test_bond_link_unlink_disconnect_and_the_409_when_deployed(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1), mac(1, 1)])
    sid = sim.add_machine("host-001", [mac(1), mac(1, 1)], power_params("127.152.1.1"))
    ifaces = client.get(f"nodes/{sid}/interfaces/").json()
    assert [i["type"] for i in ifaces] == ["physical", "physical"]
    assert all(i["vlan"]["vid"] == 10 and i["vlan"]["dhcp_on"] for i in ifaces)
    eth0, eth1 = ifaces
    r = client.post(
        f"nodes/{sid}/interfaces/",
        op="create_bond",
        data=[("name", "bond0"), ("parents", str(eth0["id"])), ("parents", str(eth1["id"]))],
    )
    assert r.status_code == 200, r.text
    bond = r.json()
    assert (bond["type"], bond["parents"], bond["mac_address"]) == ("bond", ["eth0", "eth1"], mac(1))
    assert bond["params"]["bond_mode"] == "active-backup"
    assert client.get(f"nodes/{sid}/interfaces/{eth0['id']}/").json()["children"] == ["bond0"]
    r = client.post(
        f"nodes/{sid}/interfaces/", op="create_bond", data=[("name", "bond1"), ("parents", str(eth0["id"]))]
    )
    assert r.status_code == 400 and "parents" in r.json()
    r = client.post(f"nodes/{sid}/interfaces/", op="create_bond", data={"parents": str(eth0["id"])})
    assert r.json()["name"] == ["This field is required."]

    biid = bond["id"]
    r = client.post(
        f"nodes/{sid}/interfaces/{biid}/",
        op="link_subnet",
        data={"mode": "STATIC", "subnet": "cidr:10.10.0.0/24", "ip_address": "10.10.0.50", "default_gateway": "true"},
    )
    assert r.status_code == 200, r.text
    link = r.json()["links"][0]
    assert (link["mode"], link["ip_address"], link["subnet"]["cidr"]) == ("static", "10.10.0.50", "10.10.0.0/24")
    assert client.machine(sid)["default_gateways"]["ipv4"]["gateway_ip"] == "10.10.0.1"
    r = client.post(f"nodes/{sid}/interfaces/{biid}/", op="link_subnet", data={"mode": "AUTO"})
    assert r.json() == {"subnet": ["This field is required."]}
    r = client.post(
        f"nodes/{sid}/interfaces/{biid}/",
        op="link_subnet",
        data={"mode": "static", "subnet": "2", "ip_address": "10.100.0.9"},
    )
    assert r.status_code == 400 and "same VLAN" in r.json()["subnet"][0]
    r = client.post(f"nodes/{sid}/interfaces/{biid}/", op="unlink_subnet", data={"id": str(link["id"])})
    assert r.status_code == 200 and [lk["mode"] for lk in r.json()["links"]] == ["link_up"]
    assert client.post(f"nodes/{sid}/interfaces/{biid}/", op="unlink_subnet", data={}).json() == {
        "id": ["This field is required."]
    }

    guest = client.get("fabrics/0/vlans/100/").json()
    r = client.put(f"nodes/{sid}/interfaces/{biid}/", {"vlan": str(guest["id"])})
    assert r.status_code == 200 and r.json()["vlan"]["vid"] == 100
    r = client.post(f"nodes/{sid}/interfaces/{biid}/", op="link_subnet", data={"mode": "auto", "subnet": "vid:100"})
    assert r.json()["links"][-1]["subnet"]["vlan"]["vid"] == 100
    r = client.post(f"nodes/{sid}/interfaces/{biid}/", op="disconnect")
    assert (r.json()["vlan"], r.json()["links"]) == (None, [])

    client.post(f"machines/{sid}/", op="deploy")
    client.wait(sid, "Deployed")
    r = client.post(f"nodes/{sid}/interfaces/{biid}/", op="link_subnet", data={"mode": "dhcp", "subnet": "1"})
    assert (r.status_code, r.text) == (
        409,
        "Cannot link subnet interface because the machine is not New, Ready, Allocated, or Broken.",
    )
    r = client.post(f"nodes/{sid}/interfaces/", op="create_bond", data={"name": "bond9", "parents": "1"})
    assert r.status_code == 409
    r = client.put(f"nodes/{sid}/interfaces/{biid}/", {"name": "bond-renamed", "vlan": str(guest["id"])})
    assert r.status_code == 200  # Deployed: only name and mac_address change
    assert (r.json()["name"], r.json()["vlan"]) == ("bond-renamed", None)
    assert client.get(f"nodes/{sid}/interfaces/999/").status_code == 404


def test_commissioning_resets_networking(maas):
    _, world, client = maas
    sid = ready_machine(client, world, 1, nics=2)
    eth0, eth1 = client.get(f"nodes/{sid}/interfaces/").json()
    client.post(
        f"nodes/{sid}/interfaces/",
        op="create_bond",
        data=[("name", "bond0"), ("parents", str(eth0["id"])), ("parents", str(eth1["id"]))],
    )
    client.post(f"machines/{sid}/", op="commission")
    client.wait(sid, "Ready")
    ifaces = client.get(f"nodes/{sid}/interfaces/").json()
    assert [i["type"] for i in ifaces] == ["physical", "physical"]
    assert [lk["mode"] for lk in ifaces[0]["links"]] == ["auto"]


# --- networking and images ----------------------------------------------------------------------------


def test_network_endpoints(maas):
    _, _, client = maas
    subnets = client.get("subnets/").json()
    pxe = subnets[0]
    assert (pxe["cidr"], pxe["gateway_ip"], pxe["vlan"]["vid"], pxe["vlan"]["dhcp_on"]) == (
        "10.10.0.0/24",
        "10.10.0.1",
        10,
        True,
    )
    assert len(subnets) == 3 and {s["vlan"]["vid"] for s in subnets} == {10, 100, 101}
    assert client.get(f"subnets/{pxe['id']}/").json()["cidr"] == "10.10.0.0/24"
    assert client.get("subnets/cidr:10.100.0.0/24/").json()["vlan"]["vid"] == 100
    assert client.get("subnets/ip:10.101.0.7/").json()["cidr"] == "10.101.0.0/24"
    assert client.get("subnets/cidr:192.0.2.0/24/").text == "No Subnet matches the given query."
    fabric = client.get("fabrics/").json()[0]
    assert sorted(v["vid"] for v in fabric["vlans"]) == [0, 10, 100, 101]
    vlan = client.get("fabrics/0/vlans/10/").json()
    assert client.get(f"vlans/{vlan['id']}/").json() == vlan
    assert client.get("fabrics/0/vlans/999/").status_code == 404


def test_boot_resources(maas):
    _, _, client = maas
    res = client.get("boot-resources/").json()
    assert [(r["type"], r["name"]) for r in res] == [
        ("Synced", "ubuntu/jammy"),
        ("Synced", "ubuntu/noble"),
        ("Synced", "centos/centos70"),
        ("Uploaded", "centos7"),
    ]
    assert [r["name"] for r in client.get("boot-resources/", type="uploaded").json()] == ["centos7"]
    one = client.get(f"boot-resources/{res[0]['id']}/").json()
    assert one["architecture"] == "amd64/ga-22.04" and "sets" in one


# --- preseeds ------------------------------------------------------------------------------------------


def test_preseed_filenames_most_specific_first():
    assert preseed_mod.preseed_filenames("custom", "amd64/generic", "centos7", "vm-1") == [
        "curtin_userdata_custom_amd64_generic_centos7_vm-1",
        "curtin_userdata_custom_amd64_generic_centos7",
        "curtin_userdata_custom_amd64_generic",
        "curtin_userdata_custom_amd64",
        "curtin_userdata_custom",
        "curtin_userdata",
    ]
    ubuntu = preseed_mod.preseed_filenames("ubuntu", "amd64/generic", "jammy", "h")
    assert ubuntu[:2] == ["curtin_userdata_ubuntu_amd64_generic_jammy_h", "curtin_userdata_amd64_generic_jammy_h"]
    assert ubuntu[-2:] == ["curtin_userdata_ubuntu", "curtin_userdata"]


SEED_CENTOS = """\
#cloud-config
debconf_selections:
 maas: |
  {{for line in str(curtin_preseed).splitlines()}}
  {{line}}
  {{endfor}}
late_commands:
  maas: [wget, '--no-proxy', '{{node_disable_pxe_url}}', '--post-data', '{{node_disable_pxe_data}}', '-O', '/dev/null']
  {{if node.hostname.startswith('vm-')}}
  vm_marker: [touch, /root/{{node.hostname}}]
  {{endif}}
power_state:
  mode: reboot
"""


def test_preseed_rendering_golden(tmp_path):
    (tmp_path / "curtin_userdata_custom").write_text(SEED_CENTOS)
    node = preseed_mod.NodeView(
        system_id="abc123",
        hostname="vm-7",
        fqdn="vm-7.maas",
        architecture="amd64/generic",
        osystem="custom",
        distro_series="centos7",
    )
    out = preseed_mod.render(
        str(tmp_path),
        node,
        {
            "curtin_preseed": "datasource:\n  MAAS:\n    metadata_url: http://m/MAAS/metadata/",
            "node_disable_pxe_url": "http://m/MAAS/metadata/latest/by-id/abc123/",
            "node_disable_pxe_data": "op=netboot_off",
        },
    )
    assert out.path.endswith("curtin_userdata_custom")
    assert out.text == textwrap.dedent("""\
        #cloud-config
        debconf_selections:
         maas: |
          datasource:
            MAAS:
              metadata_url: http://m/MAAS/metadata/
        late_commands:
          maas: [wget, '--no-proxy', 'http://m/MAAS/metadata/latest/by-id/abc123/', '--post-data', 'op=netboot_off', '-O', '/dev/null']
          vm_marker: [touch, /root/vm-7]
        power_state:
          mode: reboot
        """)
    assert out.config["power_state"] == {"mode": "reboot"}


def test_tempita_subset_is_safe():
    for source in (
        "{{__import__('os')}}",
        "{{x.__class__}}",
        "{{open('/etc/passwd')}}",
        "{{'{0.__class__}'.format(x)}}",
        "{{py: import os}}",
        "{{if x}}no end",
    ):
        with pytest.raises(TemplateError):
            Template(source).substitute(x=1)
    assert Template("{{if 0}}{{py: import os}}{{endif}}ok|{{x|str}}|{{None}}").substitute(x=3) == "ok|3|"


def test_deploy_uses_the_most_specific_preseed(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1)])
    sid = sim.add_machine("vm-1", [mac(1)], power_params("127.152.1.1"))
    d = Path(sim.preseed_dir)
    for name, marker in [
        ("curtin_userdata", "generic"),
        ("curtin_userdata_ubuntu", "os"),
        ("curtin_userdata_ubuntu_amd64_generic_jammy_vm-1", "node"),
        ("curtin_userdata_ubuntu_amd64", "arch"),
    ]:
        (d / name).write_text(f"marker: {marker}\nlate_commands:\n  pxe: ['{{{{node_disable_pxe_url}}}}']\n")
    r = client.post(f"machines/{sid}/", op="get_curtin_config")
    assert r.status_code == 400  # op is GET-only: POST is another signature
    r = client.get(f"machines/{sid}/", op="get_curtin_config")
    assert (r.status_code, r.text) == (400, "Machine vm-1 is not in a deployment state.")
    client.post(f"machines/{sid}/", op="deploy", data={"distro_series": "jammy"})
    client.wait(sid, "Deployed")
    r = client.get(f"machines/{sid}/", op="get_curtin_config")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    config = yaml.safe_load(r.text)
    assert config["marker"] == "node"
    assert config["late_commands"]["pxe"] == [f"{sim.url}metadata/latest/by-id/{sid}/"]
    assert config["network"]["config"][0]["mac_address"] == mac(1)


def test_builtin_default_preseed_when_the_directory_is_empty(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1)])
    sid = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    client.post(f"machines/{sid}/", op="deploy", data={"distro_series": "custom/centos7"})
    config = yaml.safe_load(client.get(f"machines/{sid}/", op="get_curtin_config").text)
    assert config["power_state"] == {"mode": "reboot"}
    assert "metadata_url" in config["debconf_selections"]["maas"]


def test_invalid_preseed_yaml_refuses_the_deploy(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1)])
    sid = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    (Path(sim.preseed_dir) / "curtin_userdata_ubuntu").write_text("late_commands: [unclosed\n  - x: : y\n")
    r = client.post(f"machines/{sid}/", op="deploy")
    assert r.status_code == 400
    assert r.text.startswith("Failed to render preseed:") and "not valid YAML" in r.text
    m = client.machine(sid)  # as MAAS: allocated and the series saved, but not deploying
    assert (m["status_name"], m["distro_series"]) == ("Allocated", "jammy")
    (Path(sim.preseed_dir) / "curtin_userdata_ubuntu").write_text("{{nosuchvariable}}\n")
    r = client.post(f"machines/{sid}/", op="deploy")
    assert r.status_code == 400 and "nosuchvariable" in r.text


def test_preseed_broken_before_the_netboot_fails_the_deployment(make_maas):
    sim, world, client = make_maas(Timing(deploy=0.2, node_timeout=30))
    world.add("127.152.1.1", [mac(1)], pxe=False)  # we boot it by hand below
    sid = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    assert client.post(f"machines/{sid}/", op="deploy").status_code == 200
    (Path(sim.preseed_dir) / "curtin_userdata").write_text("a: [b\n")
    assert world.netboot("127.152.1.1") is None  # MAAS has nothing valid to give curtin
    m = client.machine(sid)
    assert m["status_name"] == "Failed deployment"
    assert "Failed to render preseed" in m["status_message"]
    r = client.get(f"machines/{sid}/", op="get_curtin_config")
    assert r.status_code == 500 and "Failed to render preseed" in r.text


# --- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, ctype", [("503", "text/plain"), ("409", "text/html")])
def test_fault_answers_with_retry_after_and_changes_nothing(maas, mode, ctype):
    sim, world, client = maas
    sid = sim.add_machine("host-001", [mac(1)], power_params("127.152.1.1"))
    sim.set_fault(mode, 2, retry_after=7)
    assert requests.get(sim.api_url + "version/", timeout=5).status_code == 200  # anonymous: not counted
    for _ in range(2):
        r = client.post("machines/", op="allocate", data={"system_id": sid})
        assert r.status_code == int(mode)
        assert r.headers["Retry-After"] == "7" and r.headers["Content-Type"].startswith(ctype)
    assert client.machine(sid)["status_name"] == "Ready"
    assert client.post("machines/", op="allocate", data={"system_id": sid}).status_code == 200
    assert sim.snapshot()["faults"]["mode"] == "none"


def test_set_fault_none_clears_and_bad_input_is_refused(maas):
    sim, _, client = maas
    sim.set_fault("503", 5)
    sim.set_fault("none", 0, 0)
    assert client.get("machines/").status_code == 200
    with pytest.raises(ValueError):
        sim.set_fault("500", 1)
    with pytest.raises(ValueError):
        sim.fail_next("reboot")


def test_set_delay_slows_every_answer(maas):
    sim, _, client = maas
    sim.set_delay(0.3)
    start = time.monotonic()
    assert requests.get(sim.api_url + "version/", timeout=5).status_code == 200
    assert time.monotonic() - start >= 0.3  # a lower bound: the delay was applied
    sim.set_delay(0)


# --- shapes against real MAAS answers ----------------------------------------------------------------


def _fixture(name: str) -> Any:
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"MAAS fixtures not found at {FIXTURES} (set MAAS_FIXTURES)")
    return json.loads(path.read_text())


def _same_shape(ours: Any, theirs: Any, where: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Keys of ``theirs`` missing from ``ours`` and JSON type mismatches (nulls match anything)."""
    problems: list[str] = []
    if isinstance(theirs, dict):
        if not isinstance(ours, dict):
            return [f"{where}: object expected, got {type(ours).__name__}"]
        for key, value in theirs.items():
            if key in skip:
                continue
            if key not in ours:
                problems.append(f"{where}.{key}: missing")
            elif value is not None and ours[key] is not None:
                problems += _same_shape(ours[key], value, f"{where}.{key}", skip)
    elif isinstance(theirs, list):
        if not isinstance(ours, list):
            return [f"{where}: list expected, got {type(ours).__name__}"]
        if theirs and ours:
            problems += _same_shape(ours[0], theirs[0], f"{where}[0]", skip)
    else:
        number = (int, float)
        if isinstance(theirs, bool) or isinstance(ours, bool):
            ok = type(theirs) is type(ours)
        else:
            ok = (
                isinstance(theirs, number)
                and isinstance(ours, number)
                and isinstance(theirs, float) == isinstance(ours, float)
            ) or type(theirs) is type(ours)
        if not ok:
            problems.append(f"{where}: {type(theirs).__name__} expected, got {type(ours).__name__}")
    return problems


def test_json_shapes_match_real_maas_answers(maas):
    sim, world, client = maas
    world.add("127.152.1.1", [mac(1), mac(1, 1)])
    sid = sim.add_machine("host-001", [mac(1), mac(1, 1)], power_params("127.152.1.1"), status=6)
    machine = client.machine(sid)
    assert machine["interface_set"][0]["links"][0]["ip_address"]  # a link with its subnet and IP
    # Sub-objects whose fixture content is synthetic test data (cache_sets, volume groups...)
    # are compared as lists only; parameters of a physical interface are "" in both.
    skip = ("cache_sets", "volume_groups", "bcaches", "raids", "special_filesystems", "pod", "storage_pool")
    problems = _same_shape(machine, _fixture("machine.json"), "machine", skip)
    problems += _same_shape(
        client.get(f"nodes/{sid}/interfaces/").json(), _fixture("interfaces.json"), "interfaces", skip
    )
    problems += _same_shape(client.get("subnets/").json(), _fixture("subnets.json"), "subnets")
    problems += _same_shape(client.get("subnets/1/").json(), _fixture("subnet.json"), "subnet")
    problems += _same_shape(client.get("fabrics/0/vlans/").json(), _fixture("vlans.json"), "vlans", ("relay_vlan",))
    problems += _same_shape(client.get("vlans/5002/").json(), _fixture("vlan.json"), "vlan")
    resources = client.get("boot-resources/").json()
    synced, uploaded = _fixture("boot_resources.json")
    problems += _same_shape(resources[0], synced, "boot_resource[synced]")
    problems += _same_shape(resources[-1], uploaded, "boot_resource[uploaded]")
    one, fixture_one = client.get(f"boot-resources/{resources[-1]['id']}/").json(), _fixture("boot_resource.json")
    problems += _same_shape(one, fixture_one, "boot_resource", ("sets",))  # sets: keyed by version
    problems += _same_shape(
        next(iter(one["sets"].values())), next(iter(fixture_one["sets"].values())), "boot_resource.sets[*]", ("files",)
    )
    problems += _same_shape(
        next(iter(next(iter(one["sets"].values()))["files"].values())),
        next(iter(next(iter(fixture_one["sets"].values()))["files"].values())),
        "boot_resource.sets[*].files[*]",
    )
    assert problems == []
    for key in (
        "tag_names",
        "owner",
        "status",
        "status_name",
        "status_message",
        "power_state",
        "power_type",
        "osystem",
        "distro_series",
        "interface_set",
        "boot_interface",
        "hostname",
        "fqdn",
        "system_id",
        "cpu_count",
        "memory",
        "architecture",
        "netboot",
        "resource_uri",
        "zone",
        "pool",
        "domain",
        "node_type",
    ):
        assert key in machine
    assert machine["node_type"] == 0


# --- tables and snapshot --------------------------------------------------------------------------


def test_status_table_matches_maas_numbers_and_labels():
    assert len(NodeStatus) == 23 and set(TRANSITIONS) == set(NodeStatus)
    assert (NodeStatus.FAILED_RELEASING, LABELS[NodeStatus(13)]) == (13, "Releasing failed")
    assert NodeStatus(22).label == "Failed testing" and NodeStatus(18).label == "Failed to enter rescue mode"
    assert ACTIONS["allocate"] == {NodeStatus.READY}
    assert NodeStatus.DEPLOYING in TRANSITIONS[NodeStatus.ALLOCATED]
    assert NodeStatus.DEPLOYING not in TRANSITIONS[NodeStatus.READY]  # deploy allocates first


def test_snapshot_is_json_and_tells_the_story(maas):
    sim, world, client = maas
    sid = ready_machine(client, world, 1, nics=2)
    client.post("tags/", data={"name": "t1"})
    client.post("tags/t1/", op="update_nodes", data={"add": sid})
    snap = json.loads(json.dumps(sim.snapshot()))
    (m,) = snap["machines"]
    assert (m["system_id"], m["status_name"], m["tags"], m["boot_mac"]) == (sid, "Ready", ["t1"], mac(1))
    assert [i["mac"] for i in m["interfaces"]] == [mac(1), mac(1, 1)]
    assert m["interfaces"][0]["vlan"] == 10


def test_unknown_mac_netboot_gets_nothing(maas):
    sim, _, _ = maas
    assert sim.on_netboot("02:ff:ff:ff:ff:ff", {"macs": []}) is None


# --- the real IPMI driver against pyghmi's stock Bmc ----------------------------------------------------

BMC_SCRIPT = r"""
import os, sys
import pyghmi.ipmi.bmc as bmc
import pyghmi.ipmi.private.serversession as ss

_open = ss.ServerSession.create_open_session_response

def open_session(self, request):
    # The stock Bmc answers cipher suite 3 to a client offering SHA-256 (suite 17) and the
    # client then crashes; refusing the offer (status 0x11) makes pyghmi retry with SHA-1.
    if request[12] == 3:
        self.clientsessionid = request[4:8]
        self.managedsessionid = os.urandom(4)
        self.privlevel = 4
        return bytearray([request[0], 0x11, 0, 0]) + bytearray(request[4:8])
    return _open(self, request)

ss.ServerSession.create_open_session_response = open_session

class Bmc(bmc.Bmc):
    power, boot = "off", "default"
    def get_power_state(self): return self.power
    def power_on(self): self.power = "on"; print("on", self.boot, flush=True)
    def power_off(self): self.power = "off"; print("off", flush=True)
    def power_reset(self): print("reset", self.boot, flush=True)
    def power_shutdown(self): self.power = "off"; print("softoff", flush=True)
    def get_boot_device(self): return self.boot
    def set_boot_device(self, d): self.boot = d; print("boot", d, flush=True)

b = Bmc({"admin": "secret"}, port=int(sys.argv[2]), address=sys.argv[1])
print("ready", flush=True)
b.listen()
"""


def _free_udp_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


@pytest.fixture
def stock_bmc(tmp_path):
    addr = "127.152.2.1"
    port = _free_udp_port(addr)
    script = tmp_path / "bmc.py"
    script.write_text(BMC_SCRIPT)
    log = tmp_path / "bmc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), addr, str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ready" in log.read_text() or proc.poll() is not None, what="stock BMC")
        assert proc.poll() is None, log.read_text()
        yield f"{addr}:{port}", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_ipmi_driver_powers_a_real_bmc(stock_bmc):
    address, log = stock_bmc
    driver = IpmiPowerDriver(timeout=10)
    params = {"power_address": address, "power_user": "admin", "power_pass": "secret"}
    try:
        assert driver.query(params) == "off"
        driver.power_on(params)  # MAAS: next boot PXE, then on
        assert driver.query(params) == "on"
        driver.power_on(params)  # already on: reset
        driver.power_off(params, soft=True)
        assert driver.query(params) == "off"
        assert log.read_text().split("\n")[1:6] == [
            "boot network",
            "on network",
            "boot network",
            "reset network",
            "softoff",
        ]
        assert driver.query(dict(params, power_pass="wrong")) == "error"
    finally:
        driver.close()


def test_ipmi_driver_gives_up_on_a_silent_bmc_within_its_deadline():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.152.2.2", 0))  # bound, never answers
        address = f"127.152.2.2:{silent.getsockname()[1]}"
        driver = IpmiPowerDriver(timeout=1.0)
        try:
            with pytest.raises(PowerError, match=r"no answer within 1 s") as err:
                driver.power_on({"power_address": address, "power_user": "admin", "power_pass": "s3cr3t"})
            assert "s3cr3t" not in str(err.value)
            assert driver.query({"power_address": address, "power_user": "admin", "power_pass": "x"}) == "error"
        finally:
            driver.close()


def test_power_address_forms():
    from metalflow.lab.maas.world import parse_power_address

    assert parse_power_address("10.0.0.5") == ("10.0.0.5", 623)
    assert parse_power_address("10.0.0.5:16230") == ("10.0.0.5", 16230)
    assert parse_power_address("[fd00::1]:624") == ("fd00::1", 624)
    with pytest.raises(PowerError):
        parse_power_address("")
