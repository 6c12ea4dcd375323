"""The extension without Prefect: status from a real inventory, prepare's placement and merge
patch, stop/delete of a VM that has no machine, the entry point's output discipline, the
configuration file and the installer."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metalflow.integrations.cloudstack import status as status_mod
from metalflow.integrations.cloudstack.actions import Extension, dispatch
from metalflow.integrations.cloudstack.extension import _quiet_stdio, is_cloudstack_call
from metalflow.integrations.cloudstack.extension_config import (
    ExtensionConfig,
    ExtensionConfigError,
    install,
    load_config,
    parse_config,
    shim_text,
)
from metalflow.integrations.cloudstack.payload import parse_payload
from metalflow.integrations.common import Deadline, Secret
from tests.cloudstack.inventory_fixtures import make_inventory
from tests.cloudstack.payloads import (
    GIB,
    HOST_API_KEY,
    NETWORK_EXTRA,
    NETWORK_GUEST,
    VNC_PASSWORD,
    gson,
    nic,
    payload,
    write,
)

REPO = Path(__file__).resolve().parents[2]
UTC = UTC
LOG = logging.LoggerAdapter(logging.getLogger("test.cloudstack"), {})


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture
def inv(url):
    inventory = make_inventory(url)
    yield inventory
    inventory.dispose()


@pytest.fixture
def cfg(url, tmp_path) -> ExtensionConfig:
    # Nothing listens on port 9: anything that reached for Prefect would fail loudly.
    return ExtensionConfig(
        prefect_api_url="http://127.0.0.1:9/api",
        inventory_url=url,
        log_file=str(tmp_path / "ext.log"),
        path=str(tmp_path / "cloudstack.json"),
    )


def parsed(doc, action):
    return parse_payload(json.loads(gson(doc)), action)


# ---------------------------------------------------------------------------- status


def status_of(cfg, doc, *, now=None, lock=lambda c, h: False):
    return status_mod.answer_status(cfg, parsed(doc, "status"), now=now, lock=lock).body


@pytest.fixture
def running(inv):
    """host-003 carries VM vm-a and was read 'on' 10 s ago."""
    inv.claims.claim("vm-a", host="host-003")
    inv.hosts.set_last_vm("host-003", "vm-a", "web-01")
    at = datetime.now(UTC) - timedelta(seconds=10)
    inv.power.record("host-003", "on", at=at)
    return at


def test_status_answers_from_the_inventory(cfg, running):
    body = status_of(cfg, payload("status", "vm-a"))
    assert body["power_state"] == "PowerOn" and "host-003" in body["message"]


@pytest.mark.parametrize(
    "vm_ext, host_ext, version",
    [
        ({"metalflow_host": "host-003"}, None, "4.22"),  # what prepare saved
        ({}, {"metalflow_host": "1003"}, "4.21"),  # seed model: the CloudStack host's detail (CloudStack id)
        ({}, None, "4.21"),  # neither: the claim
    ],
)
def test_status_finds_the_machine_every_way(cfg, inv, running, vm_ext, host_ext, version):
    body = status_of(cfg, payload("status", "vm-a", version=version, vm_ext=vm_ext, host_ext=host_ext))
    assert body["power_state"] == "PowerOn"
    inv.claims.release("vm-a")  # the host that carries the VM is found without a claim too
    assert status_of(cfg, payload("status", "vm-a", version=version))["power_state"] == "PowerOn"


def test_status_of_the_sqlalchemy_path_agrees(cfg, running, url):
    other = ExtensionConfig(prefect_api_url=cfg.prefect_api_url, inventory_url=url + "?timeout=5")
    assert status_mod._sqlite_path(other.inventory_url) is None
    assert status_of(other, payload("status", "vm-a"))["power_state"] == "PowerOn"


def test_status_says_off_when_read_off(cfg, inv, running):
    inv.power.record("host-003", "off")
    assert status_of(cfg, payload("status", "vm-a"))["power_state"] == "PowerOff"


def test_status_is_unknown_when_it_cannot_be_sure(cfg, inv, running):
    doc = payload("status", "vm-a")
    stale = running + timedelta(seconds=cfg.status_stale_after + 1)
    assert status_of(cfg, doc, now=lambda: stale)["power_state"] == "PowerUnknown"
    assert status_of(cfg, doc, lock=lambda c, h: True)["message"] == "host-003: an operation is running"
    assert "cannot tell" in status_of(cfg, doc, lock=lambda c, h: None)["message"]
    inv.history.append(
        "host-003", "power-poll", None, "maintenance", "inventory", "ok"
    )  # a poll's note changes nothing
    assert status_of(cfg, doc)["power_state"] == "PowerOn"
    inv.history.append("host-003", "stop", "run-1", "shut-down", "ipmi", "started")
    assert "changed since" in status_of(cfg, doc)["message"]
    inv.power.record("host-003", "unknown", error="BMC silent")
    assert status_of(cfg, doc)["power_state"] == "PowerUnknown"


def test_status_during_create_and_of_strangers_is_unknown(cfg, inv):
    inv.claims.claim("vm-b", host="host-004")  # prepared, create still running: not installed yet
    body = status_of(cfg, payload("status", "vm-b"), lock=lambda c, h: pytest.fail("no lock check needed"))
    assert body["power_state"] == "PowerUnknown" and "not (yet) installed" in body["message"]
    assert status_of(cfg, payload("status", "vm-nobody"))["power_state"] == "PowerUnknown"


class _LockStub(BaseHTTPRequestHandler):
    """Stands in for Prefect's GET /api/v2/concurrency_limits/<name> (the e2e tests use the
    real server; this checks the auth header and the 404/garbage handling)."""

    answers: dict = {}
    seen: list = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Authorization")))
        code, body = self.answers.get(self.path, (404, b'{"detail": "Concurrency Limit not found"}'))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_lock_check_reads_active_slots_with_basic_auth():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LockStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/api"
        cfg = ExtensionConfig(prefect_api_url=base, inventory_url="sqlite://", prefect_auth_string=Secret("mf:pw"))
        _LockStub.answers = {
            "/api/v2/concurrency_limits/host-host-003": (200, b'{"active_slots": 1, "limit": 1}'),
            "/api/v2/concurrency_limits/host-host-004": (200, b'{"active_slots": 0, "limit": 1}'),
            "/api/v2/concurrency_limits/host-host-006": (500, b"boom"),
        }
        assert status_mod.lock_active(cfg, "host-003") is True
        assert status_mod.lock_active(cfg, "host-004") is False
        assert status_mod.lock_active(cfg, "host-005") is False  # never taken: no limit yet
        assert status_mod.lock_active(cfg, "host-006") is None
        assert _LockStub.seen[0][1] == "Basic bWY6cHc="
    finally:
        server.shutdown()
        server.server_close()
    assert status_mod.lock_active(cfg, "host-003") is None  # nobody answers


# ---------------------------------------------------------------------------- prepare, stop, delete


JAMMY = {"image": "ubuntu/jammy"}


def two_nics():
    return [
        nic(0, "vlan://100", default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01"),
        nic(1, None, default=False, network=NETWORK_EXTRA, mac="02:00:5a:00:00:02"),
    ]


def act(cfg, doc, action):
    ext = Extension(cfg, parsed(doc, action), Deadline(30), LOG)
    try:
        return dispatch(ext, action)
    finally:
        ext.close()


def test_prepare_claims_the_smallest_fit_and_returns_its_mac(cfg, inv):
    doc = payload(
        "prepare",
        "vm-a",
        cpus=16,
        ram=40 * GIB,
        nics=two_nics(),
        host_ext={"endpoint": "10.0.0.5", "apikey": HOST_API_KEY},
        vm_ext=JAMMY,
    )
    answer = act(cfg, doc, "prepare")
    host = inv.hosts.get("host-003")  # 16 CPUs and 64 GB: the smallest that fits 16 / 40 GB
    assert answer.ok and answer.body["details"] == {
        "External:metalflow_host": "host-003",
        "External:maas_system_id": "sys002",
        "External:mac_address": host.boot_mac,
        "External:metalflow_placement": "auto",
    }
    # Every NIC echoed unchanged but for the default NIC's MAC (arrays merge on "uuid").
    sent = doc["cloudstack.vm.details"]["nics"]
    assert answer.body["nics"] == [dict(sent[0], mac=host.boot_mac), sent[1]]
    assert set(answer.body) == {"nics", "details"}  # a merge patch and nothing else
    assert HOST_API_KEY not in answer.text() and VNC_PASSWORD not in answer.text()
    assert act(cfg, doc, "prepare").body == answer.body  # a repeated prepare keeps the machine
    assert inv.claims.for_vm("vm-a").host == "host-003"


def test_prepare_seed_model_claims_the_cloudstack_hosts_server(cfg, inv):
    answer = act(
        cfg,
        payload("prepare", "vm-a", version="4.21", host_ext={"metalflow_host": "host-004"}, vm_ext=JAMMY),
        "prepare",
    )
    assert answer.body["details"]["External:metalflow_host"] == "host-004"
    assert answer.body["details"]["External:metalflow_placement"] == "pinned"  # not prepare's own pick
    other = act(
        cfg,
        payload("prepare", "vm-b", version="4.21", host_ext={"metalflow_host": "host-004"}, vm_ext=JAMMY),
        "prepare",
    )
    assert not other.ok and "not available to VM vm-b" in other.body["message"]
    assert "vm-a" not in other.text()  # the other tenant's VM is not named


def test_prepare_with_nothing_free_is_a_clear_error(cfg, inv):
    answer = act(cfg, payload("prepare", "vm-a", cpus=64, vm_ext=JAMMY), "prepare")
    assert not answer.ok and "no free host fits 64 CPUs" in answer.body["message"]
    assert inv.claims.all() == []


def test_stop_and_delete_of_a_vm_without_a_machine_succeed(cfg, inv):
    for action in ("stop", "delete"):
        answer = act(cfg, payload(action, "vm-gone"), action)
        assert answer.ok and "nothing to" in answer.body["message"]


def test_delete_of_a_prepared_but_never_created_vm_frees_the_machine(cfg, inv):
    """CloudStack expunges a VM whose deploy failed after prepare: no flow run is needed
    (no create ever ran), the claim goes."""
    act(cfg, payload("prepare", "vm-a", host_ext={"metalflow_host": "host-002"}, vm_ext=JAMMY), "prepare")

    class NoRuns:
        def latest(self, *a, **k):
            return None

    ext = Extension(
        cfg, parsed(payload("delete", "vm-a", vm_ext={"metalflow_host": "host-002"}), "delete"), Deadline(30), LOG
    )
    ext.__dict__["runs"] = NoRuns()  # Prefect knows no run for this VM
    answer = dispatch(ext, "delete")
    ext.close()
    assert answer.ok and "never installed" in answer.body["message"] and "claim released" in answer.body["message"]
    assert inv.claims.for_vm("vm-a") is None


def test_create_checks_the_payload_before_anything_changes(cfg, inv):
    doc = payload(
        "create",
        "vm-a",
        vm_ext={"image": "ubuntu/jammy", "metalflow_host": "host-002"},
        nics=[nic(0, "vlan://untagged", default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")],
    )
    answer = act(cfg, doc, "create")
    assert not answer.ok and "broadcastUri" in answer.body["message"] and "VLAN" in answer.body["message"]
    assert inv.claims.all() == []
    answer = act(cfg, payload("create", "vm-a", vm_ext={"metalflow_host": "host-002"}), "create")
    assert not answer.ok and "image" in answer.body["message"] and inv.claims.all() == []


def test_create_without_placement_explains_the_two_models(cfg, inv):
    answer = act(cfg, payload("create", "vm-a", vm_ext={"image": "ubuntu/jammy"}), "create")
    assert not answer.ok and "orchestratorrequirespreparevm=true" in answer.body["message"]
    assert "metalflow_host" in answer.body["message"]


def test_reinstall_keeps_the_vm_and_its_current_networks(cfg, inv):
    """What Reinstall hands to provision: name, owner and image as installed (the last completed
    provision's parameters), the image parameter winning, and the VLANs the ports should carry
    now (a NIC plugged since create included). The run lookup is a stand-in for Prefect's
    tag query (the e2e tests use the real one)."""
    from metalflow.integrations.prefectapi import FlowRun

    inv.claims.claim("vm-a", host="host-003")
    inv.hosts.set_last_vm("host-003", "vm-a", "web-01")
    inv.ports.set_desired_vlan("host-003", 100, purpose="guest")
    inv.ports.set_desired_vlan("host-003", 200, purpose="extra")
    before = {
        "name": "web-01",
        "uuid": "vm-a",
        "image": "ubuntu/jammy",
        "owner": {"account": "acc-1"},
        "nics": [{"vlan": 100, "default": True}],
    }

    class Runs:
        def latest(self, vm_uuid, host, *, completed=False, **kw):
            assert (vm_uuid, host, completed, kw.get("flow")) == ("vm-a", "host-003", True, "provision")
            return FlowRun(
                "r1",
                "provision host-003 → web-01",
                "COMPLETED",
                "Completed",
                "",
                None,
                {"host": "host-003", "vm": before},
            )

    ext = Extension(
        cfg,
        parsed(payload("Reinstall", "vm-a", custom=True, parameters={"image": "ubuntu/noble"}), "Reinstall"),
        Deadline(30),
        LOG,
    )
    ext.__dict__["runs"] = Runs()
    vm = ext._reinstall_vm(inv.hosts.get("host-003"))
    ext.close()
    assert vm == {
        "name": "web-01",
        "uuid": "vm-a",
        "image": "ubuntu/noble",
        "owner": {"account": "acc-1"},
        "nics": [{"vlan": 100, "default": True}, {"vlan": 200, "default": False}],
    }


# ---------------------------------------------------------------------------- the tenant boundary


@pytest.fixture
def neighbours(inv):
    """Another tenant's VMs: vm-a installed on host-003 (named "payroll-db"), vm-c prepared on
    host-004 (claimed, create not yet run)."""
    inv.claims.claim("vm-a", vm_name="payroll-db", host="host-003")
    inv.hosts.set_last_vm("host-003", "vm-a", "payroll-db")
    inv.claims.claim("vm-c", vm_name="ledger", host="host-004")
    return inv


def world(inv) -> tuple:
    """What an action must not change: claims, which VM each host carries, the journal."""
    return (
        sorted((c.host, c.vm_uuid) for c in inv.claims.all()),
        [(h.name, h.last_vm_uuid, h.version) for h in inv.hosts.all()],
        [len(inv.history.events(h.name)) for h in inv.hosts.all()],
    )


TENANT_ACTIONS = [
    ("start", {}),
    ("reboot", {}),
    ("stop", {}),
    ("delete", {}),
    ("PlugNetwork", {"vlan": 200}),
    ("UnplugNetwork", {"vlan": 200}),
    ("Reinstall", {}),
]


@pytest.mark.parametrize("target", ["host-003", "1003", "host-004", "host-999"])
@pytest.mark.parametrize("action, params", TENANT_ACTIONS)
def test_a_metalflow_host_detail_naming_another_vms_machine_is_not_available(cfg, neighbours, target, action, params):
    """vm-b's tenant wrote External:metalflow_host naming a machine another VM carries
    (host-003, by name or CloudStack id) or holds (host-004), or no machine at all: the same
    answer every time, naming no other VM, and nothing changes. Prefect is not reachable
    (port 9): any run started would fail loudly."""
    before = world(neighbours)
    custom = action in ("PlugNetwork", "UnplugNetwork", "Reinstall")
    doc = payload(action, "vm-b", custom=custom, parameters=params or None, vm_ext={"metalflow_host": target})
    answer = act(cfg, doc, action)
    text = answer.text()
    assert "not available to VM vm-b" in text, text
    for secret in ("vm-a", "payroll-db", "vm-c", "ledger", "host-003", "host-004", "host-999"):
        assert secret not in text
    # CloudStack cleans up with stop and delete and expects success: nothing of vm-b's is there
    assert answer.ok is (action in ("stop", "delete"))
    assert world(neighbours) == before


def test_create_on_another_vms_machine_is_not_available(cfg, neighbours):
    before = world(neighbours)
    for target in ("host-003", "host-004", "host-999"):
        doc = payload("create", "vm-b", vm_ext={"image": "ubuntu/jammy", "metalflow_host": target})
        answer = act(cfg, doc, "create")
        assert not answer.ok and "not available to VM vm-b" in answer.text()
        assert "vm-a" not in answer.text() and "payroll-db" not in answer.text() and "vm-c" not in answer.text()
    # the operator's host detail (seed model) pinning a machine another VM carries: the same
    doc = payload(
        "create", "vm-b", version="4.21", host_ext={"metalflow_host": "1003"}, vm_ext={"image": "ubuntu/jammy"}
    )
    answer = act(cfg, doc, "create")
    assert not answer.ok and "not available" in answer.text() and "payroll-db" not in answer.text()
    assert world(neighbours) == before


def test_status_of_another_vms_machine_says_nothing_about_it(cfg, neighbours):
    inv = neighbours
    inv.power.record("host-003", "on")
    body = status_of(cfg, payload("status", "vm-b", vm_ext={"metalflow_host": "host-003"}))
    assert body["power_state"] == "PowerUnknown" and "host-003" not in body["message"]
    assert body == status_of(cfg, payload("status", "vm-b", vm_ext={"metalflow_host": "host-999"}))


def test_the_vms_own_machine_is_still_found_by_its_detail(cfg, neighbours):
    """A free machine a detail names is still found (a retried create after a failed one
    released its claim); the VM's own claim wins over any detail."""

    def located(vm_ext):
        ext = Extension(cfg, parsed(payload("stop", "vm-b", vm_ext=vm_ext), "stop"), Deadline(30), LOG)
        try:
            return ext.locate()
        finally:
            ext.close()

    assert located({"metalflow_host": "host-002"}).name == "host-002"
    neighbours.claims.claim("vm-b", host="host-005")
    assert located({"metalflow_host": "host-003"}).name == "host-005"


def vm_params_of(cfg, vm_ext, scope=()):
    cfg = ExtensionConfig(**{**cfg.__dict__, "tenant_secret_scope": scope})
    doc = payload("create", "vm-b", vm_ext={"image": "ubuntu/jammy", "metalflow_host": "host-002", **vm_ext})
    ext = Extension(cfg, parsed(doc, "create"), Deadline(30), LOG)
    try:
        return ext.vm_params()
    finally:
        ext.close()


def test_root_password_ref_from_vm_details_stays_in_the_operators_scope(cfg, inv):
    from metalflow.integrations.cloudstack.actions import ActionError
    from metalflow.integrations.cloudstack.payload import PayloadError

    scope = ("block:tenant-root-", "env:METALFLOW_TENANT_ROOT_")
    ok = vm_params_of(cfg, {"root_password_ref": "block:tenant-root-acme"}, scope)
    assert ok["root_password_ref"] == "block:tenant-root-acme"
    assert vm_params_of(cfg, {"root_password_ref": "env:METALFLOW_TENANT_ROOT_ACME"}, scope)["root_password_ref"]
    for ref in ("block:ipmi-host-001", "block:metalflow-maas", "env:METALFLOW_MAAS_SETTINGS", "block:tenant-rootx"):
        with pytest.raises(ActionError) as err:
            vm_params_of(cfg, {"root_password_ref": ref}, scope)
        assert "outside the scope" in str(err.value) and ref.split(":")[1] not in str(err.value)
    # the default: the operator has not opted in, so no reference from VM details is taken
    with pytest.raises(ActionError, match="not accepted"):
        vm_params_of(cfg, {"root_password_ref": "block:tenant-root-acme"})
    # a secret pasted where the reference belongs is refused and never echoed
    with pytest.raises(PayloadError) as err:
        vm_params_of(cfg, {"root_password_ref": "hunter2-CANARY"}, scope)
    assert "CANARY" not in str(err.value) and "root_password_ref" in str(err.value)


def test_an_out_of_scope_ref_refuses_create_before_anything_changes(cfg, inv):
    before = world(inv)
    doc = payload(
        "create", "vm-b", vm_ext={"image": "ubuntu/jammy", "metalflow_host": "host-002", "root_password_ref": "block:x"}
    )
    answer = act(cfg, doc, "create")
    assert not answer.ok and "root_password_ref" in answer.text() and "block:x" not in answer.text()
    assert world(inv) == before


def test_tenant_secret_scope_in_the_configuration():
    base = {"prefect_api_url": "http://x/api", "inventory_url": "sqlite://"}
    cfg = parse_config({**base, "tenant_secret_scope": ["block:tenant-root-", "env:TENANT_"]}, "c.json")
    assert cfg.tenant_secret_scope == ("block:tenant-root-", "env:TENANT_")
    assert cfg.document()["tenant_secret_scope"] == ["block:tenant-root-", "env:TENANT_"]
    assert parse_config(base, "c.json").tenant_secret_scope == ()
    for bad in ("block:tenant-", ["block:"], ["env:"], ["tenant-"], [5], ["block:Tenant"], ["block:t\n"]):
        with pytest.raises(ExtensionConfigError, match="tenant_secret_scope"):
            parse_config({**base, "tenant_secret_scope": bad}, "c.json")


def test_getconsole_says_there_is_none(cfg):
    answer = act(cfg, payload("getconsole", "vm-a"), "getconsole")
    assert not answer.ok and "no console" in answer.body["message"]


def test_plug_network_needs_a_vlan(cfg, inv):
    answer = act(cfg, payload("PlugNetwork", "vm-a", custom=True, parameters={}), "PlugNetwork")
    # an object, as CloudStack's UI shows only objects and arrays (reference notes, section 7)
    assert not answer.ok and answer.body["printmessage"] == "true"
    assert answer.body["message"]["result"] == "failed" and "parameters.vlan" in answer.body["message"]["detail"]


# ---------------------------------------------------------------------------- the entry point


def run_exe(args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "metalflow.integrations.cloudstack.extension", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc


def one_json(proc) -> dict:
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.fixture
def cfg_file(tmp_path, url, inv) -> Path:
    path = tmp_path / "cloudstack.json"
    path.write_text(
        json.dumps(
            {"prefect_api_url": "http://127.0.0.1:9/api", "inventory_url": url, "log_file": str(tmp_path / "ext.log")}
        )
    )
    return path


@pytest.mark.parametrize(
    "action, message",
    [
        ("com.cloud.agent.api.CheckHealthCommand", "CloudStack agent command this extension does not handle"),
        ("migrate", "unknown action 'migrate'"),
    ],
)
def test_unknown_actions_fail_at_once(tmp_path, cfg_file, action, message):
    path = write(tmp_path, {"action": action})
    proc = run_exe([action, str(path), "60"], {"METALFLOW_CLOUDSTACK_CONFIG": str(cfg_file)})
    assert proc.returncode == 1 and message in one_json(proc)["message"]
    assert "nothing was done" in one_json(proc)["message"]


def test_bad_calls_still_answer_one_json_document(tmp_path, cfg_file):
    env = {"METALFLOW_CLOUDSTACK_CONFIG": str(cfg_file)}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = run_exe(["create", str(bad), "60"], env)
    assert proc.returncode == 1 and "not valid JSON" in one_json(proc)["message"]
    proc = run_exe(["create", str(tmp_path / "missing.json"), "60"], env)
    assert proc.returncode == 1 and "cannot read the payload file" in one_json(proc)["message"]
    proc = run_exe(["create", str(bad)], env)
    assert proc.returncode == 1 and "usage" in one_json(proc)["message"]
    proc = run_exe(["status", str(bad), "60"], {"METALFLOW_CLOUDSTACK_CONFIG": str(tmp_path / "none.json")})
    assert proc.returncode == 1 and "no configuration at" in one_json(proc)["message"]
    log = (tmp_path / "ext.log").read_text()
    assert "not valid JSON" in log


def test_a_status_call_as_cloudstack_makes_it(tmp_path, cfg_file, inv):
    inv.claims.claim("vm-a", host="host-003")
    inv.hosts.set_last_vm("host-003", "vm-a", "web-01")
    inv.power.record("host-003", "off")
    path = write(tmp_path, payload("status", "vm-a"))
    # Prefect is not there (port 9): the lock cannot be checked, so the honest answer is unknown.
    proc = run_exe(["status", str(path), "0"], {"METALFLOW_CLOUDSTACK_CONFIG": str(cfg_file)}, cwd=tmp_path)
    assert proc.returncode == 0 and one_json(proc)["power_state"] == "PowerUnknown"


def test_stray_output_goes_to_the_log_never_to_stdout(tmp_path, capfd):
    log = tmp_path / "ext.log"
    with _quiet_stdio(log) as real:
        print("noise from a library")
        sys.stderr.write("a warning\n")
        os.write(2, b"C-level noise\n")
        os.write(real, b'{"status":"success"}\n')
    out, err = capfd.readouterr()
    assert out == '{"status":"success"}\n' and err == ""
    assert "noise from a library" in log.read_text() and "C-level noise" in log.read_text()


@pytest.mark.parametrize(
    "args, want",
    [
        (["create", "/tmp/p.json", "1800"], True),
        (["status", "p.json", "0"], True),
        (["install", "--config", "x"], False),
        (["create", "p.json"], False),
        (["create", "p.json", "x"], False),
    ],
)
def test_what_counts_as_a_cloudstack_call(args, want):
    assert is_cloudstack_call(args) is want


def test_the_entry_module_does_not_import_prefect():
    code = (
        "import sys, metalflow.integrations.cloudstack.extension, metalflow.integrations.cloudstack.actions, "
        "metalflow.integrations.cloudstack.status; bad = [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')"
        " or m.startswith(('metalflow.tasks', 'metalflow.flows', 'metalflow.deployments'))]; print(bad)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_status_imports_neither_requests_nor_the_orm():
    code = (
        "import sys; from metalflow.integrations.cloudstack.extension import main; "
        "import metalflow.integrations.cloudstack.status; print(sorted(m for m in ('requests', 'alembic', 'sqlalchemy', "
        "'metalflow.integrations.inventory', 'prefect') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- configuration


def test_config_errors_name_every_key_and_never_the_secret():
    with pytest.raises(ExtensionConfigError) as err:
        parse_config(
            {
                "prefect_api_url": "localhost:4200",
                "prefect_auth_string": "nocolon-SECRET",
                "status_timeout": 0,
                "erase_default": "shred",
                "colour": "blue",
            },
            "c.json",
        )
    text = str(err.value)
    for key in ("prefect_api_url", "inventory_url", "prefect_auth_string", "status_timeout", "erase_default", "colour"):
        assert key in text
    assert "SECRET" not in text


def test_load_config_explains_a_missing_file(tmp_path):
    with pytest.raises(ExtensionConfigError, match="metalflow-cloudstack install"):
        load_config(tmp_path / "nope.json")


@pytest.mark.parametrize("wait, want", [(1800, 1785.0), (60, 45.0), (20, 5.0), (3, 2.25), (0, 1785.0)])
def test_the_deadline_stays_below_cloudstacks_wait(wait, want):
    cfg = ExtensionConfig(prefect_api_url="http://x/api", inventory_url="sqlite://")
    assert cfg.deadline_for(wait) == pytest.approx(want)


def test_install_writes_an_owner_only_file_and_a_shim(tmp_path):
    config = tmp_path / "etc" / "cloudstack.json"
    shim = tmp_path / "extensions" / "metalflow" / "metalflow.sh"
    cfg, text = install(
        config,
        prefect_api_url="http://10.0.0.9:4200/api",
        inventory_url="sqlite:////var/x.db",
        auth_string="metalflow:s3cret",
        shim=shim,
    )
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755 and shim.read_text() == text
    assert text.splitlines()[0] == "#!/bin/sh" and f"METALFLOW_CLOUDSTACK_CONFIG={config}" in text
    assert text.splitlines()[1].startswith("exec env ") and text.rstrip().endswith('"$@"')
    again = load_config(config)
    assert (
        again.prefect_auth_string.reveal() == "metalflow:s3cret"
        and again.log_path == config.parent / "metalflow-cloudstack.log"
    )
    assert "s3cret" not in json.dumps(again.masked())
    assert stat.S_IMODE(again.log_path.stat().st_mode) == 0o600


def test_install_command_line(tmp_path, url):
    config = tmp_path / "cloudstack.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "metalflow.integrations.cloudstack.extension",
            "install",
            "--config",
            str(config),
            "--prefect-api-url",
            "http://127.0.0.1:4200/api",
            "--inventory-url",
            url,
            "--auth-string",
            "-",
        ],
        input="u:p\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "#!/bin/sh" in proc.stdout and "u:p" not in proc.stdout
    assert load_config(config).prefect_auth_string.reveal() == "u:p"
    from metalflow.integrations.inventory import migrate

    assert migrate.current_revision(url) == migrate.head_revision()  # the claims table is there
    assert shim_text(config) in proc.stdout


# ---------------------------------------------------------------------------- CloudStack's lifecycle (issue 17)


class _NoRuns:
    """Prefect as the stand-in for a VM with no runs at all; any attempt to start one fails the test."""

    api = None

    def live(self, *a, **k):
        return None

    def latest(self, *a, **k):
        return None

    def start_or_attach(self, *a, **k):
        raise AssertionError("no run may start")


def act_without_runs(cfg, doc, action):
    ext = Extension(cfg, parsed(doc, action), Deadline(30), LOG)
    ext.__dict__["runs"] = _NoRuns()
    try:
        return dispatch(ext, action)
    finally:
        ext.close()


@pytest.mark.parametrize(
    "vm_ext, field",
    [
        ({"image": "ubuntu/jammy", "vm_name": "web_01"}, "vm_name"),
        ({"image": "ubuntu jammy"}, "image"),
        ({"image": "ubuntu/jammy", "architecture": "x86_64"}, "architecture"),
        ({"image": "ubuntu/jammy", "ssh_keys": "not a key"}, "ssh_keys"),
    ],
)
def test_prepare_refuses_what_provision_would_refuse_before_claiming(cfg, inv, vm_ext, field):
    answer = act(cfg, payload("prepare", "vm-a", vm_ext=vm_ext), "prepare")
    assert not answer.ok and field in answer.body["message"], answer.body
    assert inv.claims.all() == []


def test_prepare_checks_a_nic_whose_network_is_not_implemented_yet_with_the_rest(cfg, inv):
    """CloudStack may call prepare before a new network has its VLAN: that NIC has no
    broadcastUri yet; the other rules still hold (and the claim is a lease)."""
    nics = [nic(0, None, default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")]
    answer = act(cfg, payload("prepare", "vm-a", nics=nics, vm_ext=JAMMY), "prepare")
    assert answer.ok, answer.body
    claim = inv.claims.for_vm("vm-a")
    assert claim.state == "leased" and claim.expires_at is not None


def test_a_create_refused_by_the_payload_drops_the_lease(cfg, inv):
    act(cfg, payload("prepare", "vm-a", vm_ext=JAMMY), "prepare")
    assert inv.claims.for_vm("vm-a").state == "leased"
    one = [nic(0, "vlan://1", default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")]
    answer = act_without_runs(cfg, payload("create", "vm-a", nics=one, vm_ext=JAMMY), "create")
    assert not answer.ok and "VLAN 1" in answer.body["message"]
    assert inv.claims.for_vm("vm-a") is None


def test_a_pin_is_honoured_and_never_swapped_for_another_machine(cfg, inv):
    pinned = act(cfg, payload("prepare", "vm-a", vm_ext=dict(JAMMY, maas_system_id="sys003")), "prepare")
    assert pinned.ok and pinned.body["details"]["External:metalflow_host"] == "host-004"
    assert pinned.body["details"]["External:metalflow_placement"] == "pinned"
    # too small for the VM: refused, not replaced by a bigger machine
    small = act(cfg, payload("prepare", "vm-b", cpus=12, vm_ext=dict(JAMMY, metalflow_host="host-002")), "prepare")
    assert not small.ok and "cannot take it (too small)" in small.body["message"]
    assert inv.claims.for_vm("vm-b") is None
    # two pins naming two machines, or a system id nobody has: the tenant's answer, nothing claimed
    for ext in ({"metalflow_host": "host-001", "maas_system_id": "sys003"}, {"maas_system_id": "sys999"}):
        answer = act(cfg, payload("prepare", "vm-c", vm_ext=dict(JAMMY, **ext)), "prepare")
        assert not answer.ok and "not available to VM vm-c" in answer.body["message"]
    assert inv.claims.for_vm("vm-c") is None


def test_prepare_again_prefers_its_own_earlier_pick_and_picks_anew_when_it_is_gone(cfg, inv):
    first = act(cfg, payload("prepare", "vm-a", vm_ext=JAMMY), "prepare")
    host = first.body["details"]["External:metalflow_host"]
    inv.claims.release("vm-a")  # a failed create released it
    earlier = {k[len("External:") :]: v for k, v in first.body["details"].items()}
    again = act(cfg, payload("prepare", "vm-a", vm_ext=dict(JAMMY, **earlier)), "prepare")
    assert again.body["details"]["External:metalflow_host"] == host
    inv.claims.release("vm-a")
    inv.power.set_maintenance(host, True, "held")
    moved = act(cfg, payload("prepare", "vm-a", vm_ext=dict(JAMMY, **earlier)), "prepare")
    assert moved.ok and moved.body["details"]["External:metalflow_host"] != host  # auto: not a pin


def test_a_cleanup_stop_of_a_first_deploy_powers_nothing_off(cfg, inv):
    """VM state Starting, deployvm true: whatever holds the machine, no stop run."""
    inv.claims.claim("vm-a", host="host-003", lease_seconds=60)
    doc = payload("stop", "vm-a", state="Starting", details={"deployvm": "true"}, vm_ext={"metalflow_host": "host-003"})
    answer = act_without_runs(cfg, doc, "stop")
    assert answer.ok and "nothing powered off" in answer.body["message"]
    inv.hosts.set_last_vm("host-003", "vm-a", "web-01")  # installed, the create's answer lost
    answer = act_without_runs(cfg, doc, "stop")
    assert answer.ok and "nothing powered off" in answer.body["message"]


def test_reinstall_refuses_a_bad_name_or_image_before_it_destroys_anything(cfg, inv):
    from metalflow.integrations.prefectapi import FlowRun

    inv.claims.claim("vm-a", host="host-003")
    inv.hosts.set_last_vm("host-003", "vm-a", "web-01")
    inv.ports.set_desired_vlan("host-003", 100, purpose="guest")
    before = {"name": "web-01", "uuid": "vm-a", "image": "ubuntu/jammy", "nics": [{"vlan": 100, "default": True}]}

    class Runs(_NoRuns):
        def latest(self, *a, **k):
            return FlowRun("r1", "provision", "COMPLETED", "Completed", "", None, {"host": "host-003", "vm": before})

    for vm_ext, params, field in (
        ({"vm_name": "web_01"}, {}, "vm_name"),
        ({}, {"image": "ubuntu/jammy\n"}, "parameters.image"),
        ({}, {"image": 7}, "parameters.image"),
    ):
        ext = Extension(
            cfg,
            parsed(payload("Reinstall", "vm-a", custom=True, parameters=params, vm_ext=vm_ext), "Reinstall"),
            Deadline(30),
            LOG,
        )
        ext.__dict__["runs"] = Runs()
        answer = dispatch(ext, "Reinstall")
        ext.close()
        assert not answer.ok and field in answer.body["message"]["detail"], answer.body
    # a name create accepts is accepted here too, read the same way
    ext = Extension(
        cfg,
        parsed(payload("Reinstall", "vm-a", custom=True, vm_ext={"vm_name": "Web-01"}), "Reinstall"),
        Deadline(30),
        LOG,
    )
    ext.__dict__["runs"] = Runs()
    assert ext._reinstall_vm(inv.hosts.get("host-003"))["name"] == "web-01"
    ext.close()


def test_owner_tags_name_the_vm_never_the_caller_and_the_keypair_is_a_key(cfg, inv):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0c2VjcmV0a2V5 tenant@laptop"
    doc = payload("create", "vm-a", vm_ext=JAMMY, details={"SSH.PublicKey": key})
    ext = Extension(cfg, parsed(doc, "create"), Deadline(30), LOG)
    vm = ext.vm_params()
    ext.close()
    assert vm["owner"] == {"vm": "vm-a"} and vm["ssh_keys"] == [key]
