"""The CloudStack stand-in (``lab.cloudstack``) against a real subprocess: a small fake extension
written here, which records its argv, cwd, environment and payload file's raw text, and answers
per a JSON scenario (per action, one answer per call, the last one repeated).

The rules checked are CloudStack 4.21/4.22's, as the project's reference notes read them from
the Java sources (/work/shared/reference/cloudstack-extension.md)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from metalflow.lab.cloudstack import CloudStack, Config, Extension, InputError, Parameter, gson, merge_patch, process
from metalflow.lab.cloudstack.cli import app

FAKE = """#!{python} -S
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
action, payload_path = sys.argv[1], sys.argv[2]
with open(payload_path, encoding="utf-8") as f:
    raw = f.read()
record = {{"argv": sys.argv, "raw": raw, "pid": os.getpid(), "cwd": os.getcwd(),
          "token": os.environ.get("LAB_TOKEN"), "path_env": "PATH" in os.environ}}
with open(os.path.join(here, "record.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\\n")
try:
    with open(os.path.join(here, "scenario.json")) as f:
        scenario = json.load(f)
except FileNotFoundError:
    scenario = {{}}
counts_path = os.path.join(here, "counts.json")
try:
    with open(counts_path) as f:
        counts = json.load(f)
except FileNotFoundError:
    counts = {{}}
n = counts.get(action, 0)
counts[action] = n + 1
with open(counts_path, "w") as f:
    json.dump(counts, f)
answers = scenario.get(action) or scenario.get("*") or [{{}}]
answer = answers[min(n, len(answers) - 1)]
if "stderr" in answer:
    sys.stderr.write(answer["stderr"])
    sys.stderr.flush()
out = answer.get("stdout", "")
if "patch_mac" in answer:  # a prepare answer: the default NIC echoed with a new MAC, plus details
    payload = json.loads(raw)
    nic0 = payload["cloudstack.vm.details"]["nics"][0]
    nic = {{"full": dict(nic0, mac=answer["patch_mac"]),
           "nicUuid only": {{"nicUuid": nic0["nicUuid"], "mac": answer["patch_mac"]}},
           "nic uuid as uuid": {{"uuid": nic0["nicUuid"], "mac": answer["patch_mac"]}}}}[answer.get("nic", "full")]
    out = {{"nics": [nic], "details": answer.get("details", {{}})}}
    if "vncPassword" in answer:
        out["vncPassword"] = answer["vncPassword"]
if not isinstance(out, str):
    out = json.dumps(out)
if answer.get("big"):
    out = "x" * answer["big"]
sys.stdout.write(out)
sys.stdout.flush()
time.sleep(answer.get("sleep", 0))
sys.exit(answer.get("exit", 0))
"""


class Fake:
    """The extension under test: an executable Python script in its own folder."""

    def __init__(self, root: Path):
        self.dir = root / "ext"
        self.dir.mkdir()
        self.path = self.dir / "fake.py"
        self.path.write_text(FAKE.format(python=sys.executable))
        self.path.chmod(0o755)

    def scenario(self, **answers: Any) -> None:
        (self.dir / "scenario.json").write_text(json.dumps(answers))
        (self.dir / "counts.json").unlink(missing_ok=True)

    def records(self) -> list[dict]:
        try:
            lines = (self.dir / "record.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            rec = json.loads(line)
            rec["action"] = rec["argv"][1]
            rec["payload"] = json.loads(rec["raw"])
            out.append(rec)
        return out

    def actions(self) -> list[str]:
        return [r["action"] for r in self.records()]


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def make_lab(tmp_path: Path, fake: Fake, **config: Any) -> CloudStack:
    requires_prepare = config.pop("requires_prepare", True)
    cs = CloudStack(
        tmp_path / "cs",
        Config(
            Extension(
                "fake",
                str(fake.path),
                details={"endpoint": "http://maas:5240"},
                requires_prepare=requires_prepare,
                env={"LAB_TOKEN": "t0k"},
            ),
            **config,
        ),
    )
    cs.add_host("host1", {"endpoint": "10.0.0.5", "apikey": "c:t:s"})
    cs.add_network("guest", 100)
    cs.add_network("iso", None)
    cs.add_template("ubuntu", {"os": "ubuntu", "distro_series": "jammy"})
    return cs


def vm_block(rec: dict) -> dict:
    return rec["payload"]["cloudstack.vm.details"]


# --- gson, merge ----------------------------------------------------------------------------------


def test_gson_escapes_inside_strings_only_and_drops_nulls():
    doc = {"k=<1>": "a=b <c> & 'd' é", "gone": None, "list": [None, 1, True], "n": {"x": None}, "f": 300.0}
    text = gson.dumps(doc)
    assert text == (
        '{"k\\u003d\\u003c1\\u003e":"a\\u003db \\u003cc\\u003e \\u0026 \\u0027d\\u0027 é",'
        '"list":[null,1,true],"n":{},"f":300.0}'
    )
    assert json.loads(text) == {"k=<1>": "a=b <c> & 'd' é", "list": [None, 1, True], "n": {}, "f": 300.0}
    assert gson.dumps("line\nand\u2028\x01") == '"line\\nand\\u2028\\u0001"'
    assert [gson.java_double(x) for x in (1e10, 1.5e-5, 12345678.0, 0.5)] == ["1.0E10", "1.5E-5", "1.2345678E7", "0.5"]


def test_merge_patch_arrays_on_uuid_replaced_arrays_and_nested_objects():
    target = {
        "details": {"a": "1", "nested": {"x": 1, "y": 2}},
        "nics": [{"uuid": "net-1", "nicUuid": "n1", "mac": "02:00:00:00:00:01"}, {"uuid": "net-2", "mac": "m2"}],
        "tags": [1, 2],
        "cpus": 2,
    }
    patch = {
        "details": {"b": "2", "nested": {"y": 3}},
        "nics": [{"uuid": "net-2", "mac": "aa"}, {"uuid": "net-3", "mac": "new"}],
        "tags": [9],
        "cpus": 4,
    }
    merged = merge_patch(target, patch)
    assert merged["details"] == {"a": "1", "nested": {"x": 1, "y": 3}, "b": "2"}
    assert merged["nics"] == [
        {"uuid": "net-1", "nicUuid": "n1", "mac": "02:00:00:00:00:01"},
        {"uuid": "net-2", "mac": "aa"},
        {"uuid": "net-3", "mac": "new"},
    ]
    assert merged["tags"] == [9] and merged["cpus"] == 4
    assert target["nics"][1]["mac"] == "m2"  # the target is not changed
    # one element without a uuid: the whole array is replaced
    assert merge_patch(target, {"nics": [{"nicUuid": "n1", "mac": "bb"}]})["nics"] == [{"nicUuid": "n1", "mac": "bb"}]


# --- the process --------------------------------------------------------------------------------------


def _run(fake: Fake, tmp_path: Path, action: str = "create", wait: int = 30, **kw: Any) -> process.Call:
    return process.run(
        fake.path,
        action,
        {"virtualmachineid": "u", "secret": "a=b"},
        wait=wait,
        global_wait=1800,
        data_dir=tmp_path / "data",
        extension_name="fake",
        env={"LAB_TOKEN": "t0k"},
        workdir=tmp_path,
        **kw,
    )


def test_argv_payload_file_environment_and_cwd(fake, tmp_path):
    fake.scenario(create=[{"stdout": "  done \n\n"}])
    call = _run(fake, tmp_path)
    [rec] = fake.records()
    payload_file = Path(rec["argv"][2])
    assert rec["argv"] == [str(fake.path), "create", str(payload_file), "30"] == call.argv
    assert payload_file.parent == tmp_path / "data" / "fake"
    assert len(payload_file.stem) == 36 and payload_file.suffix == ".json"
    assert stat.S_IMODE(payload_file.stat().st_mode) == 0o644
    assert rec["raw"] == '{"virtualmachineid":"u","secret":"a\\u003db"}'
    assert rec["token"] == "t0k" and rec["path_env"] and rec["cwd"] == str(tmp_path)
    assert call.success and call.exit_code == 0 and call.text == "done" and call.output == "  done \n\n"
    assert payload_file.exists()  # only status payloads are deleted
    # wait 0 is the global wait; a successful status call's payload file is deleted
    status = _run(fake, tmp_path, action="status", wait=0)
    assert status.argv[3] == "1800" and not Path(status.argv[2]).exists()


def test_stderr_is_merged_and_failures_wrapped(fake, tmp_path):
    fake.scenario(create=[{"stderr": "warn: on stderr\n", "stdout": "  boom \n", "exit": 3}])
    call = _run(fake, tmp_path)
    assert not call.success and call.exit_code == 3
    assert call.text == "Exit code: 3, Output: warn: on stderr\n  boom"  # trimmed at the ends only
    assert Path(call.argv[2]).exists()


def test_timeout_kills_the_child_and_says_timeout(fake, tmp_path):
    fake.scenario(create=[{"sleep": 30, "stdout": "never read"}])
    t0 = time.monotonic()
    call = _run(fake, tmp_path, wait=1)
    assert time.monotonic() - t0 < 5
    assert call.timed_out and not call.success and call.exit_code is None
    assert call.text == "Timeout" and call.output == ""
    pid = fake.records()[0]["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_output_beyond_the_pipe_buffer_blocks_until_the_timeout(fake, tmp_path):
    fake.scenario(create=[{"big": 200_000}])  # stdout is read after the exit only, as Java does
    call = _run(fake, tmp_path, wait=1)
    assert call.text == "Timeout"


def test_a_file_that_is_not_executable_is_not_run(fake, tmp_path):
    fake.path.chmod(0o644)
    call = _run(fake, tmp_path)
    assert call.text == "File is not executable" and not call.success
    assert fake.records() == [] and not (tmp_path / "data").exists()


# --- deploy -------------------------------------------------------------------------------------------


def test_deploy_first_try_merges_prepare_and_sends_the_vlan_only_to_create(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    fake.scenario(prepare=[{"patch_mac": "52:54:00:aa:bb:cc", "details": {"External:maas_system_id": "abc12"}}])
    r = cs.deploy(
        "web-1",
        "ubuntu",
        ["guest"],
        details={"hostname": "a=b<c>&'d'"},
        plain_details={"note": "plain"},
        ssh_public_key="ssh-ed25519 AAAA me",
        cpus=4,
        ram_mb=4096,
    )
    assert r.success and r.state == "Running" and r.error is None
    assert [c.action for c in r.calls] == fake.actions() == ["prepare", "create"]
    prepare, create = fake.records()
    guest = cs.networks()[0]
    # prepare: deployvm, the NICs, no cloudstack.vlan
    p = prepare["payload"]
    assert p["externaldetails"] == {
        "extension": {"endpoint": "http://maas:5240"},
        "host": {"endpoint": "10.0.0.5", "apikey": "c:t:s"},
        "virtualmachine": {"os": "ubuntu", "distro_series": "jammy", "hostname": "a=b<c>&'d'"},
    }
    assert p["caller"]["name"] == "admin" and p["virtualmachinename"] == "i-2-100-VM"
    vm = vm_block(prepare)
    assert vm["state"] == "Starting" and vm["details"]["deployvm"] == "true"
    assert vm["details"]["SSH.PublicKey"] == "ssh-ed25519 AAAA me" and vm["details"]["note"] == "plain"
    assert vm["cpus"] == 4 and vm["minRam"] == vm["maxRam"] == 4096 * 1024 * 1024 and vm["arch"] == "x86_64"
    [nic] = vm["nics"]
    assert nic["uuid"] == guest.uuid and nic["nicUuid"] != guest.uuid and nic["defaultNic"] is True
    assert nic["broadcastUri"] == "vlan://100" and nic["mac"].startswith("02:00:")
    assert "\\u003d" in prepare["raw"] and "\\u0027" in prepare["raw"]  # Gson's escapes in the file
    # create: the merged details and MAC came back from the VM's saved state, plus cloudstack.vlan
    c = create["payload"]
    assert c["externaldetails"]["virtualmachine"] == {
        "os": "ubuntu",
        "distro_series": "jammy",
        "hostname": "a=b<c>&'d'",
        "maas_system_id": "abc12",
        "cloudstack.vlan": "100",
    }
    assert vm_block(create)["details"]["External:maas_system_id"] == "abc12"
    assert vm_block(create)["nics"][0]["mac"] == "52:54:00:aa:bb:cc"
    assert create["argv"][3] == "1800"
    saved = cs.vm("web-1")
    assert saved.nics[0].mac == "52:54:00:aa:bb:cc" and saved.details["External:maas_system_id"] == "abc12"
    assert "deployvm" not in saved.details
    assert saved.host_id == saved.last_host_id == cs.hosts()[0].id
    # a later start has no deployvm: `start`, with the VLAN again
    assert cs.stop("web-1").success and cs.start("web-1").success
    assert fake.actions()[-2:] == ["stop", "start"]
    stop_rec, start_rec = fake.records()[-2:]
    assert vm_block(stop_rec)["nics"] == [] and vm_block(stop_rec)["state"] == "Stopping"
    assert "cloudstack.vlan" not in stop_rec["payload"]["externaldetails"]["virtualmachine"]
    assert start_rec["payload"]["externaldetails"]["virtualmachine"]["cloudstack.vlan"] == "100"
    assert "deployvm" not in vm_block(start_rec)["details"] and len(vm_block(start_rec)["nics"]) == 1


def test_prepare_nics_are_merged_on_the_network_uuid_and_saved_by_nic_uuid(fake, tmp_path):
    cs = make_lab(tmp_path, fake, start_retry=1)
    cs.add_host("host2", {"endpoint": "10.0.0.6"})
    # the NIC echoed without its network uuid: the array is replaced, the MAC still saved by nicUuid
    fake.scenario(prepare=[{"patch_mac": "52:54:00:00:00:01", "nic": "nicUuid only", "vncPassword": "vnc-2"}])
    assert cs.deploy("a", "ubuntu", ["guest"], host="host2").success
    assert cs.vm("a").nics[0].mac == "52:54:00:00:00:01" and cs.vm("a").vnc_password == "vnc-2"
    create = fake.records()[-1]
    assert vm_block(create)["nics"][0]["mac"] == "52:54:00:00:00:01" and vm_block(create)["vncPassword"] == "vnc-2"
    assert create["payload"]["externaldetails"]["host"] == {"endpoint": "10.0.0.6"}  # the pinned host's
    # keyed on the NIC's uuid instead of the network's: a new element, no nicUuid, nothing saved
    fake.scenario(prepare=[{"patch_mac": "52:54:00:00:00:02", "nic": "nic uuid as uuid"}])
    assert cs.deploy("b", "ubuntu", ["guest"]).success
    assert cs.vm("b").nics[0].mac.startswith("02:00:")


def test_a_new_network_gets_its_vlan_after_prepare(fake, tmp_path):
    cs = make_lab(tmp_path, fake, vlan_on_implement=3001)
    assert cs.deploy("web-1", "ubuntu", ["iso"]).success
    prepare, create = fake.records()
    assert "broadcastUri" not in vm_block(prepare)["nics"][0]
    assert vm_block(create)["nics"][0]["broadcastUri"] == "vlan://3001"
    assert create["payload"]["externaldetails"]["virtualmachine"]["cloudstack.vlan"] == "3001"


def test_a_create_failing_twice_is_retried_with_cleanup_stops(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    fake.scenario(create=[{"exit": 1, "stdout": "no machine"}, {"exit": 2}, {}], stop=[{"exit": 1}])
    r = cs.deploy("web-1", "ubuntu", ["guest", "iso"])
    assert r.success and r.state == "Running"
    assert fake.actions() == ["prepare", "create", "stop", "prepare", "create", "stop", "prepare", "create"]
    assert [c.try_number for c in r.calls] == [1, 1, 1, 2, 2, 2, 3, 3]
    for rec in fake.records():
        if rec["action"] == "stop":  # the cleanup: still Starting, NICs in it
            assert vm_block(rec)["state"] == "Starting" and len(vm_block(rec)["nics"]) == 2
            assert vm_block(rec)["details"]["deployvm"] == "true"
    assert r.calls[1].text == "Exit code: 1, Output: no machine"
    assert {c.host for c in r.calls} == {"host1"}  # one host: every retry lands on it


def test_start_retry_exhausted_is_error_and_expunge_makes_no_call(fake, tmp_path):
    cs = make_lab(tmp_path, fake, start_retry=3)
    fake.scenario(create=[{"exit": 1, "stdout": "still no"}])
    r = cs.deploy("web-1", "ubuntu", ["guest"])
    assert not r.success and r.state == "Error" and "after 3 tries" in r.error and "still no" in r.error
    assert fake.actions() == ["prepare", "create", "stop"] * 3
    vm = cs.vm("web-1")
    assert vm.host_id is None and vm.last_host_id is None
    d = cs.destroy("web-1")
    assert d.success and d.calls == [] and d.state is None
    assert "delete" not in fake.actions() and cs.vms() == []
    assert [c.action for c in cs.calls("web-1")] == ["prepare", "create", "stop"] * 3  # after the expunge too


def test_a_create_timeout_and_bad_prepare_json_fail_their_try(fake, tmp_path):
    cs = make_lab(tmp_path, fake, start_retry=3)
    fake.scenario(prepare=[{"stdout": "not json"}, {}], create=[{"sleep": 10}, {}])
    r = cs.deploy("web-1", "ubuntu", ["guest"], wait=1)
    assert r.success
    assert fake.actions() == ["prepare", "stop", "prepare", "create", "stop", "prepare", "create"]
    texts = [(c.action, c.text) for c in r.calls]
    assert texts[0] == ("prepare", "not json") and texts[3] == ("create", "Timeout")
    assert [c.wait for c in r.calls if c.action == "create"] == [1, 1]
    assert [c.wait for c in r.calls if c.action != "create"] == [1800] * 5


def test_a_never_started_vm_is_expunged_without_a_call(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    r = cs.deploy("web-1", "ubuntu", ["guest"], start=False)
    assert r.success and r.state == "Stopped" and r.calls == []
    d = cs.destroy("web-1")
    assert d.success and d.calls == [] and fake.records() == []


def test_a_started_vm_is_stopped_then_deleted_as_expunging(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    assert cs.deploy("web-1", "ubuntu", ["guest"]).success
    fake.scenario(delete=[{"exit": 1, "stdout": "busy"}, {}])
    d = cs.destroy("web-1")
    assert not d.success and d.state == "Destroyed" and "busy" in d.error
    assert [c.action for c in d.calls] == ["stop", "delete"]
    delete = fake.records()[-1]
    vm = vm_block(delete)
    assert vm["state"] == "Expunging" and vm["details"]["expunge.external.vm"] == "true" and vm["nics"] == []
    assert delete["payload"]["externaldetails"]["host"]["endpoint"] == "10.0.0.5"  # the last host's
    d = cs.destroy("web-1")
    assert d.success and [c.action for c in d.calls] == ["delete"] and cs.vms() == []


# --- NICs ------------------------------------------------------------------------------------------


def test_nic_hotplug_fails_on_a_running_vm_and_works_on_a_stopped_one(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    assert cs.deploy("web-1", "ubuntu", ["guest"]).success
    r = cs.add_nic("web-1", "iso")
    assert not r.success and r.state == "Running"
    plug = fake.records()[-1]
    assert plug["argv"][1] == "com.cloud.agent.api.PlugNicCommand" and plug["argv"][3] == "5"
    assert plug["raw"] == '{"action":"com.cloud.agent.api.PlugNicCommand"}'
    assert plug["argv"][1] == "com.cloud.agent.api.PlugNicCommand"
    assert len(cs.vm("web-1").nics) == 1
    assert cs.stop("web-1").success
    n_calls = len(fake.records())
    r = cs.add_nic("web-1", "iso")
    assert r.success and r.calls == [] and len(fake.records()) == n_calls
    assert not cs.remove_nic("web-1", "guest").success  # the default NIC stays
    assert cs.start("web-1").success
    start = fake.records()[-1]
    assert start["action"] == "start"
    nics = vm_block(start)["nics"]
    assert [(n["deviceId"], n["defaultNic"]) for n in nics] == [(0, True), (1, False)]
    assert nics[1]["uuid"] == cs.networks()[1].uuid and nics[1]["broadcastUri"] == "vlan://1000"
    r = cs.remove_nic("web-1", "iso")
    assert not r.success and fake.records()[-1]["action"] == "com.cloud.agent.api.UnplugNicCommand"


# --- custom actions --------------------------------------------------------------------------------


def test_custom_action_wait_parameters_and_ui_message(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    cs.add_action(
        "Reinstall",
        [Parameter("vlan", "NUMBER", True, "DECIMAL"), Parameter("count", "NUMBER"), Parameter("wipe", "BOOLEAN")],
        details={"kind": "os"},
    )
    cs.add_action("Slow", timeout=60)
    assert cs.deploy("web-1", "ubuntu", ["guest"]).success
    table = {"printmessage": "true", "message": [{"k": "v"}]}
    fake.scenario(
        Reinstall=[
            {"stdout": table},
            {"stdout": {"printmessage": True, "message": [1]}},
            {"stdout": {"printmessage": "true", "message": "a string"}},
            {"stdout": table, "exit": 4},
        ]
    )
    with pytest.raises(InputError):
        cs.run_action("web-1", "Reinstall", {"count": "2"})  # vlan is required
    assert fake.actions()[-1] == "create"  # refused before any call
    r = cs.run_action("web-1", "Reinstall", {"vlan": "300", "count": "2", "wipe": "TRUE", "other": "x"})
    assert r.success and r.ui_message == [{"k": "v"}] and json.loads(r.details) == table
    rec = fake.records()[-1]
    assert rec["argv"][1] == "Reinstall" and rec["argv"][3] == "3"
    assert rec["payload"]["action"] == "Reinstall"
    assert rec["payload"]["parameters"] == {"vlan": 300.0, "count": 2, "wipe": True}
    assert '"vlan":300.0' in rec["raw"] and '"count":2,' in rec["raw"]
    assert rec["payload"]["externaldetails"]["action"] == {"kind": "os"}
    assert rec["payload"]["externaldetails"]["virtualmachine"] == {"os": "ubuntu", "distro_series": "jammy"}
    assert vm_block(rec)["nics"] == [] and rec["payload"]["caller"]["name"] == "admin"
    assert cs.run_action("web-1", "Reinstall", {"vlan": 1}).ui_message is None  # a boolean printmessage
    assert cs.run_action("web-1", "Reinstall", {"vlan": 1}).ui_message is None  # a string message
    r = cs.run_action("web-1", "Reinstall", {"vlan": 1})
    assert not r.success and r.ui_message is None and r.details.startswith("Exit code: 4, Output: {")
    assert cs.run_action("web-1", "Slow").success and fake.records()[-1]["argv"][3] == "60"
    assert "parameters" not in fake.records()[-1]["payload"]
    with pytest.raises(InputError):
        cs.add_action("bad/name")


def test_version_421_has_no_caller_and_no_vm_details_in_custom_actions(fake, tmp_path):
    cs = make_lab(tmp_path, fake, version="4.21")
    cs.add_action("Noop")
    assert cs.deploy("web-1", "ubuntu", ["guest"]).success
    assert cs.run_action("web-1", "Noop").success
    for rec in fake.records():
        assert "caller" not in rec["payload"]
    custom = fake.records()[-1]["payload"]
    assert "virtualmachine" not in custom["externaldetails"] and custom["externaldetails"]["action"] == {}
    assert custom["cloudstack.vm.details"]["uuid"] == cs.vm("web-1").uuid  # the VM block is there


# --- ping -----------------------------------------------------------------------------------------


def test_ping_reads_power_states_and_syncs(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    assert cs.deploy("a", "ubuntu", ["guest"]).success
    assert cs.deploy("b", "ubuntu", ["guest"]).success
    assert cs.stop("b").success
    cs.deploy("c", "ubuntu", ["guest"], start=False)  # no host, no last host: never asked
    fake.scenario(status=[{"stdout": {"power_state": "PowerOff"}}, {"stdout": "poweron"}])
    a, b = cs.vm("a"), cs.vm("b")
    report = cs.ping()
    assert report == {a.uuid: "PowerOff", b.uuid: "PowerOn"}
    records = fake.records()
    assert [r["action"] for r in records[-3:]] == ["status", "status", "stop"]
    first, second, oob = records[-3:]
    assert first["payload"]["caller"]["name"] == "system" and "caller" not in second["payload"]
    assert first["payload"]["externaldetails"]["virtualmachine"] == {"os": "ubuntu", "distro_series": "jammy"}
    assert vm_block(first)["nics"] == [] and first["argv"][3] == "1800"
    assert not Path(first["argv"][2]).exists()  # status payloads are deleted after success
    assert vm_block(oob)["uuid"] == a.uuid
    assert cs.vm("a").state == "Stopped" and cs.vm("a").host_id is None
    assert cs.vm("b").state == "Running" and cs.vm("b").host_id == cs.hosts()[0].id
    # anything else, or a failure, is PowerUnknown and changes nothing
    fake.scenario(status=[{"stdout": {"power_state": "running"}}, {"exit": 1, "stdout": "PowerOff"}])
    assert set(cs.ping().values()) == {"PowerUnknown"}
    assert cs.vm("a").state == "Stopped" and cs.vm("b").state == "Running"


# --- state and CLI ----------------------------------------------------------------------------------


def test_the_state_survives_a_new_instance(fake, tmp_path):
    cs = make_lab(tmp_path, fake)
    assert cs.deploy("web-1", "ubuntu", ["guest"]).success
    again = CloudStack(tmp_path / "cs")
    vm = again.vm("web-1")
    assert vm.state == "Running" and vm.name == "i-2-100-VM" and vm.nics[0].ip == "10.1.1.10"
    assert [c.action for c in again.calls("web-1")] == ["prepare", "create"]
    r = again.deploy("web-2", "ubuntu", ["guest"])
    assert r.success and again.vm("web-2").name == "i-2-101-VM" and again.vm("web-2").nics[0].ip == "10.1.1.11"
    with pytest.raises(InputError):
        CloudStack(tmp_path / "cs", again.config)  # no silent reset
    with pytest.raises(InputError):
        again.deploy("web-1", "ubuntu", ["guest"])  # the name is taken
    with pytest.raises(InputError):
        CloudStack(tmp_path / "nothing-here")


def test_cli_init_deploy_vms_stop_destroy(fake, tmp_path):
    runner = CliRunner()
    env = {"METALFLOW_HOME": str(tmp_path / "home")}

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    r = run(
        "init",
        "--extension",
        str(fake.path),
        "--host",
        "h1",
        "--host-detail",
        "h1:endpoint=10.0.0.5",
        "--network",
        "guest=100",
        "--network",
        "iso=new",
        "--template",
        "ubuntu:os=ubuntu",
        "--action",
        "Reinstall:vlan:NUMBER:required",
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "home" / "lab" / "cloudstack" / "state.json").exists()
    r = run("deploy", "web1", "--template", "ubuntu", "--network", "guest", "--detail", "hostname=w1")
    assert r.exit_code == 0, r.output
    assert "Running" in r.output
    r = run("vms")
    assert r.exit_code == 0 and "web1" in r.output and "Running" in r.output
    assert run("stop", "web1").exit_code == 0
    r = run("calls", "web1")
    assert r.exit_code == 0 and "prepare" in r.output and "create" in r.output
    assert run("destroy", "web1").exit_code == 0
    assert fake.actions() == ["prepare", "create", "stop", "delete"]
    r = run("stop", "nope")
    assert r.exit_code == 2 and "no VM nope" in r.stderr
    fake.scenario(create=[{"exit": 1}])
    r = run("deploy", "web2", "--template", "ubuntu", "--network", "guest")
    assert r.exit_code == 1 and "Unable to start VM web2" in r.stderr
    assert run("deploy", "web3", "--template", "ubuntu", "--network", "guest", "--detail", "oops").exit_code == 2
