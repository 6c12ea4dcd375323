"""The failure half of the provisioning runbook, end to end: faults injected in the lab's
MAAS, switches and BMCs while real flow runs (served by ``metalflow serve``, triggered over
the Prefect REST API) provision hosts host-005 .. host-007.

What "nothing left behind" means here (``assert_idle``): the state a host is in when it holds
no VM, the state ``register-host`` and ``destroy`` leave. On the switch that is *no tenant
VLAN*, not "no VLAN at all": every cabled port carries the PXE (provisioning) VLAN untagged and
nothing tagged, because MAAS must be able to PXE-boot the host at any time to erase,
commission or deploy it. A port stripped of every VLAN would strand the host: its next disk
erase or deployment would time out waiting for a PXE boot that can never happen.

Nothing is mocked: every fault is the lab's (its control API), every assertion reads the
lab's hardware, MAAS, the inventory or the Prefect API.
"""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import requests

from metalflow.integrations.common import Deadline
from metalflow.integrations.common.names import host_lock_name as lock_name
from metalflow.integrations.maas import TAG_COMMENT
from metalflow.integrations.prefectapi import PrefectBadRequest, idempotency_key

HOSTS = ("host-005", "host-006", "host-007")
IMAGE = "ubuntu/jammy"
OWNER_PREFIXES = ("accountid_", "domainid_", "projectid_")


def vm(name: str, vlan: int, *extra: int, owner: dict | None = None, **more) -> dict:
    nics = [{"vlan": vlan, "default": True}] + [{"vlan": v} for v in extra]
    return {"name": name, "uuid": f"uuid-{name}", "image": IMAGE, "nics": nics, "owner": owner or {}, **more}


# --- reading the world ----------------------------------------------------------------------


def pxe_vlan(e2e) -> int:
    return int(e2e.stack.manifest["maas"]["pxe_vlan"])


def cloudstack_id(e2e, host: str) -> int:
    return next(h["cloudstack_id"] for h in e2e.stack.manifest["hosts"] if h["name"] == host)


def machine(e2e, host: str):
    return e2e.maas().machine(e2e.inventory().hosts.get(host).maas_system_id)


def post(e2e, path: str, body: dict) -> requests.Response:
    return e2e.http("POST", path, body)


def logs(e2e, run_id: str) -> str:
    return e2e.logs(run_id)


def artifacts(e2e, run_id: str) -> list[dict]:
    r = post(e2e, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    r.raise_for_status()
    return r.json()


def rerun(e2e, run_id: str, timeout: float = 240):
    """``e2e.rerun`` (what the UI's Retry does), riding out a busy API."""
    post(
        e2e, f"flow_runs/{run_id}/set_state", {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True}
    ).raise_for_status()
    return e2e.wait(run_id, timeout)


def task_runs(e2e, run_id: str) -> list[dict]:
    r = post(
        e2e,
        "task_runs/filter",
        {"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200},
    )
    r.raise_for_status()
    return r.json()


def report(e2e, run_id: str) -> str:
    """The run's markdown artifact (its story: what changed, what was undone)."""
    found = [a["data"] for a in artifacts(e2e, run_id) if a.get("type") == "markdown"]
    assert len(found) == 1, f"expected one report artifact, found {len(found)}"
    return found[0]


def snapshot(e2e, host: str) -> dict:
    """Everything a provision could change for ``host``: its BMC, its ports, both switches'
    configuration and change counters, its MAAS machine, its inventory record."""
    state = e2e.lab.state()
    hw = state["hosts"][host]
    m = machine(e2e, host)
    inv = e2e.inventory()
    rec = inv.hosts.get(host)
    return {
        "bmc": {k: hw[k] for k in ("power", "bootdev", "persistent", "boots", "running")},
        "switches": {
            name: {
                "ports": sw["ports"],
                "config_commands": sw["counters"]["config_commands"],
                "saves": sw["counters"]["saves"],
            }
            for name, sw in state["switches"].items()
        },
        "maas": {
            "status": m.status.name,
            "hostname": m.hostname,
            "tags": sorted(m.tag_names),
            "owner": m.owner,
            "osystem": m.osystem,
            "distro_series": m.distro_series,
        },
        "inventory": {
            "last_vm": (rec.last_vm_uuid, rec.last_vm_name),
            "maintenance": rec.maintenance,
            "desired": sorted((v.switch, v.port, v.vlan, v.tagged, v.purpose) for v in inv.ports.desired_vlans(host)),
        },
    }


def assert_idle(e2e, host: str) -> None:
    """Nothing left behind: the host is as metalflow leaves a host that holds no VM."""
    hw = e2e.lab.host(host)
    pxe = pxe_vlan(e2e)
    # The PXE VLAN back, no tenant VLAN (see the module docstring for why not "no VLAN").
    assert [(p["untagged"], p["tagged"]) for p in hw["ports"]] == [(pxe, [])] * len(hw["ports"]), hw["ports"]
    assert hw["power"] == "off", hw
    assert hw["bootdev"] == "pxe", hw  # back to network boot if provision had set disk
    assert hw["disk_image"] is None, "the disk was not erased"
    m = machine(e2e, host)
    # Rollback waits for the erase to finish, so Ready (not merely Disk erasing).
    assert m.status.name == "READY", (m.status, m.status_message)
    assert m.hostname == f"HOST-{cloudstack_id(e2e, host)}"
    assert not [t for t in m.tag_names if t.startswith(OWNER_PREFIXES)], m.tag_names
    assert m.owner in (None, "")
    inv = e2e.inventory()
    assert {(v.vlan, v.tagged) for v in inv.ports.desired_vlans(host)} == {(pxe, False)}


def assert_runs(e2e, host: str, spec: dict, owner_tags: tuple[str, ...] = ()) -> None:
    """``host`` carries the VM ``spec``: the guest VLAN untagged and the extra ones tagged on
    every cabled port, Deployed under the VM's name with the image, booting from disk, on."""
    guest = next(n["vlan"] for n in spec["nics"] if n.get("default"))
    extra = sorted(n["vlan"] for n in spec["nics"] if not n.get("default"))
    hw = e2e.lab.host(host)
    assert [(p["untagged"], p["tagged"]) for p in hw["ports"]] == [(guest, extra)] * len(hw["ports"]), hw["ports"]
    assert hw["power"] == "on" and hw["bootdev"] == "disk" and hw["running"] == f"os:{spec['image']}", hw
    m = machine(e2e, host)
    assert (m.status.name, m.hostname) == ("DEPLOYED", spec["name"])
    assert f"{m.osystem}/{m.distro_series}" == spec["image"]
    assert sorted(t for t in m.tag_names if t.startswith(OWNER_PREFIXES)) == sorted(owner_tags)
    assert e2e.inventory().hosts.get(host).last_vm_name == spec["name"]


def free(e2e, host: str) -> None:
    """Make ``host`` idle (destroy whatever an earlier test left on it), faults cleared."""
    e2e.lab.reset_faults()
    m = machine(e2e, host)
    if m.status.name != "READY" or not m.hostname.startswith("HOST-") or e2e.lab.host(host)["power"] != "off":
        run = e2e.run("destroy", host=host)
        assert run.ok, run.message
    assert_idle(e2e, host)


def wait_until(what: str, probe, timeout: float = 60.0, interval: float = 0.2):
    deadline = Deadline(timeout)
    while True:
        value = probe()
        if value:
            return value
        if deadline.remaining() <= 0:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        deadline.sleep(interval)


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def rollback_tasks(e2e, run_id: str) -> list[str]:
    """Names of the compensation task runs of a flow run (each tagged ``rollback``), in order;
    every one of them must have completed."""
    runs = [t for t in task_runs(e2e, run_id) if "rollback" in t["tags"]]
    assert all(t["state"]["type"] == "COMPLETED" for t in runs), [(t["name"], t["state"]) for t in runs]
    return [t["name"] for t in runs]


@pytest.fixture(scope="module")
def hosts(e2e):
    """host-005 .. host-007 registered (adopted by MAAS, Ready), with no fault active."""
    return e2e.register(*HOSTS)


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_is_refused_before_anything_changes(e2e, hosts):
    """Each bad request fails with the field or constraint named, and changes nothing: not a
    switch port or counter, not the MAAS machine, not the BMC, not the inventory."""
    host, mute = "host-005", "host-006"  # mute: its BMC refuses every login
    plain_password = "Plain-Text-Passw0rd-" + uuid.uuid4().hex[:8]
    free(e2e, host)
    free(e2e, mute)
    before = {h: snapshot(e2e, h) for h in (host, mute)}

    # Refused by the Prefect API itself (the deployment's parameter schema), so no run exists.
    for bad, field in [
        ({**vm("bad-nonic", 100), "nics": []}, "vm.nics"),
        (vm("bad-vlan0", 0), "vm.nics[0].vlan"),
        (vm("bad-vlan1", 1), "vm.nics[0].vlan"),  # VLAN 1: every switch's default VLAN
        (vm("bad-vlan5000", 5000), "vm.nics[0].vlan"),
        # The schema's patterns (common.fields): refused by the API since they are the run's types.
        (vm("Web_01", 100), "vm.name"),
        ({**vm("bad-newline", 100), "name": "web-01\n"}, "vm.name"),
        ({**vm("bad-hash", 100), "root_password_hash": "$6$x$" + "A" * 86}, "vm"),  # by reference only
        # A secret pasted where its reference belongs: refused, never stored as a parameter,
        # and the refusal does not quote it.
        (vm("bad-pw", 100, root_password_ref=plain_password), "vm.root_password_ref"),
    ]:
        with pytest.raises(PrefectBadRequest) as refused:
            e2e.trigger("provision", host=host, vm=bad)
        assert f"'{field}'" in str(refused.value), str(refused.value)
        assert plain_password not in str(refused.value)

    # Accepted by the API, failed by the run: all at once (they also queue on the host's lock).
    cases = {
        "two default NICs": (
            host,
            {**vm("bad-2def", 100), "nics": [{"vlan": 100, "default": True}, {"vlan": 101, "default": True}]},
            "exactly one NIC must be the default",
        ),
        "PXE VLAN as guest": (host, vm("bad-pxe", pxe_vlan(e2e)), "VLANs are not the PXE VLAN"),
        "PXE VLAN as extra": (host, vm("bad-pxe-extra", 100, pxe_vlan(e2e)), "VLANs are not the PXE VLAN"),
        "unknown image": (host, {**vm("bad-image", 100), "image": "ubuntu/no-such-release"}, "image exists in MAAS"),
        "unknown host": ("host-999", vm("bad-host", 100), "no host 'host-999'"),
        "BMC refusing the login": (mute, vm("bad-bmc", 100), "BMC answers"),
    }
    e2e.lab.control("POST", f"/faults/bmc/{mute}", {"mode": "reject_auth"})
    triggered = {case: e2e.trigger("provision", host=h, vm=spec) for case, (h, spec, _) in cases.items()}
    for case, run in triggered.items():
        done = e2e.wait(run.id)
        assert done.state_type == "FAILED", f"{case}: {done.state_type} {done.message}"
        assert cases[case][2] in done.message, f"{case}: {done.message}"
        assert plain_password not in done.message + logs(e2e, run.id) + json.dumps(artifacts(e2e, run.id))
    # The constraint failures say so in their report.
    for case in ("PXE VLAN as guest", "unknown image"):
        assert "refused, nothing changed" in report(e2e, triggered[case].id)

    e2e.lab.reset_faults()
    assert {h: snapshot(e2e, h) for h in (host, mute)} == before


# --- faults: ridden out when transient, rolled back when not ---------------------------------


def test_deploy_phase_deadline_fails_and_rolls_back(e2e, hosts):
    """A deploy that outlives ``deploy_timeout`` fails the run, named, and is rolled back.
    The deadline is an operator setting (``$METALFLOW_HOME/config.json``, read by each flow
    run); the BMC answering slowly makes MAAS's power-on, hence the deploy, take seconds."""
    host = "host-006"
    free(e2e, host)
    config = e2e.stack.home / "config.json"
    original = config.read_text()
    settings = json.loads(original)
    settings["deploy_timeout"] = 1.0
    config.write_text(json.dumps(settings, indent=2))
    try:
        e2e.lab.control("POST", f"/faults/bmc/{host}", {"mode": "slow", "delay": 0.25})
        run = e2e.run("provision", host=host, vm=vm("deadline-01", 150))
    finally:
        config.write_text(original)
        e2e.lab.reset_faults()
    assert run.state_type == "FAILED"
    assert "deploy phase did not finish within 1 s" in run.message and "deploy_timeout" in run.message, run.message
    assert "rolled back" in run.message
    assert_idle(e2e, host)
    assert "release-machine" in [n.split()[0] for n in rollback_tasks(e2e, run.id)]


def test_cancel_from_the_ui_stops_the_run_and_rolls_it_back(e2e, hosts):
    """Cancel (what the UI's Cancel button does: the run goes Cancelling) while the host is
    being deployed: the served run stops within seconds, undoes what it changed, and ends
    Cancelled, saying so. The BMC answering slowly keeps the deploy going long enough."""
    host = "host-006"
    free(e2e, host)
    e2e.lab.control("POST", f"/faults/bmc/{host}", {"mode": "slow", "delay": 0.25})
    try:
        run = e2e.trigger("provision", host=host, vm=vm("cancel-01", 155))
        deadline = Deadline(120)
        # A task run just created may have no state yet (the server records it a moment later).
        while not any(
            t["name"].startswith("wait-for-deployed") and (t["state"] or {}).get("type") == "RUNNING"
            for t in task_runs(e2e, run.id)
        ):
            assert deadline.remaining() > 0, "the provision never reached its deploy wait"
            deadline.sleep(0.3)
        post(e2e, f"flow_runs/{run.id}/set_state", {"state": {"type": "CANCELLING"}, "force": True}).raise_for_status()
        done = e2e.wait(run.id, 180)
    finally:
        e2e.lab.reset_faults()
    assert done.state_type == "CANCELLED", (done.state_type, done.message)
    assert "cancelled by an operator" in done.message and "rolled back" in done.message, done.message
    assert_idle(e2e, host)
    assert "release-machine" in [n.split()[0] for n in rollback_tasks(e2e, run.id)]


def test_transient_faults_are_ridden_out(e2e, hosts):
    """MAAS answering 503 with Retry-After three times, and one SSH session dropped in the
    middle of the guest-VLAN change: the MAAS client waits as told, the switch task's retry
    reads the half-changed port back and finishes the change; the run completes. (One run
    for both faults: each is checked to have been met.)"""
    host, switch = "host-006", "tor-2"  # one NIC on the Cisco IOS switch
    free(e2e, host)
    spec = vm("transient-01", 120, owner={"account": "acct-tr"})
    drops = e2e.lab.state()["switches"][switch]["counters"]["drops"]
    e2e.lab.control("POST", "/faults/maas", {"mode": "503", "count": 3, "retry_after": 1})
    # The ports are already on the PXE VLAN, so the guest-VLAN change sends the first
    # configuration commands of the run: remove VLAN 10 (3 commands), then the add is cut.
    e2e.lab.control("POST", f"/faults/switch/{switch}", {"mode": "drop_session", "after": 3, "count": 1})
    run = e2e.run("provision", host=host, vm=spec)

    assert run.ok, run.message
    assert e2e.lab.state()["maas"]["faults"]["count"] == 0, "the provision did not meet the 503s"
    assert e2e.lab.state()["switches"][switch]["counters"]["drops"] == drops + 1
    guest_change = [t for t in task_runs(e2e, run.id) if t["name"].startswith("converge-ports")][-1]
    assert guest_change["run_count"] == 2, "expected one retry of the guest-VLAN change"
    assert_runs(e2e, host, spec, ("accountid_acct-tr",))


def test_deploy_failure_rolls_back_and_a_rerun_completes(e2e, hosts):
    host = "host-007"  # two NICs on tor-1: a bond, and two ports to put back
    free(e2e, host)
    owner = {"account": "acct-df", "domain": "dom-df"}
    spec = vm("deployfail-01", 130, 131, owner=owner)
    e2e.lab.control("POST", "/faults/maas", {"fail_next": "deploy"})
    run = e2e.run("provision", host=host, vm=spec)

    assert run.state_type == "FAILED"
    assert "deploy phase failed" in run.message and "Installation failed" in run.message, run.message
    assert "rolled back" in run.message and "INCOMPLETE" not in run.message, run.message
    assert "at step 'wait for Deployed'" in run.message, run.message  # the step it failed at
    assert_idle(e2e, host)
    assert e2e.inventory().undos.left(host) == []  # a finished rollback leaves no undo records
    assert "ephemeral:erasing" in [h["running"] for h in e2e.lab.host(host)["history"]], "no disk erase"
    # The compensation is visible: task runs of this flow run, tagged, in reverse order of
    # the changes; and the report lists each undo.
    undone = rollback_tasks(e2e, run.id)
    expected = ["remove-preseeds", "untag-machine", "release-machine", "wait-for-ready", "power-off", "rename-machine"]
    assert [n.split()[0] for n in undone] == expected, undone
    md = report(e2e, run.id)
    labels = ("remove the curtin preseed", "remove ownership tags", "release with erase", "power off", "rename back")
    for label in labels:
        assert f"| rollback | {label} |" in md, md

    # The fault was one-shot; clear everything anyway, then do what the UI's Retry does.
    e2e.lab.reset_faults()
    again = rerun(e2e, run.id)
    assert again.ok and again.id == run.id, again.message
    assert_runs(e2e, host, spec, ("accountid_acct-df", "domainid_dom-df"))


def test_switch_dropping_every_retry_rolls_back_and_a_rerun_completes(e2e, hosts):
    """The session drops on every attempt of the guest-VLAN change (4 = the task's retries
    + 1), after the PXE VLAN was already removed from the port: the rollback must put the
    PXE VLAN back on a port left with no VLAN at all."""
    from metalflow.tasks.switches import converge_ports

    host, switch = "host-005", "tor-1"  # one NIC on the Force10 switch
    free(e2e, host)
    spec = vm("dropall-01", 140, owner={"project": "proj-da"})
    attempts = converge_ports.retries + 1
    # Force10: "interface vlan 10", "no untagged <port>" go through (the port is left bare),
    # the add is cut; each retry is cut again two commands into the add.
    e2e.lab.control("POST", f"/faults/switch/{switch}", {"mode": "drop_session", "after": 2, "count": attempts})
    run = e2e.run("provision", host=host, vm=spec, timeout=240)

    assert run.state_type == "FAILED"
    assert "SwitchSessionLost" in run.message and "rolled back" in run.message, run.message
    assert e2e.lab.state()["switches"][switch]["fault"]["mode"] == "none", "the drops were not all used"
    assert_idle(e2e, host)
    changes = [t for t in task_runs(e2e, run.id) if t["name"].startswith("converge-ports")]
    assert [(t["state"]["type"], t["run_count"], "rollback" in t["tags"]) for t in changes] == [
        ("COMPLETED", 1, False),  # PXE VLAN: already there
        ("FAILED", attempts, False),  # guest VLAN: every attempt dropped
        ("COMPLETED", 1, True),  # rollback: PXE VLAN back
    ]
    assert [n.split()[0] for n in rollback_tasks(e2e, run.id)] == [
        "want-ports",
        "converge-ports",
        "set-boot-device",
        "remove-preseeds",
        "untag-machine",
        "release-machine",
        "wait-for-ready",
        "power-off",
        "rename-machine",
    ]

    e2e.lab.reset_faults()
    again = rerun(e2e, run.id)
    assert again.ok, again.message
    assert_runs(e2e, host, spec, ("projectid_proj-da",))


# --- one operation per host ---------------------------------------------------------------


@contextmanager
def holding_host_lock(e2e, host: str):
    """Take the host's lock from outside, as a long operation already running on the host
    would (one slot of its global concurrency limit, made when the host was registered), so
    that runs triggered now must wait for it however slowly they start on a busy machine."""
    name = lock_name(host)
    r = post(e2e, "v2/concurrency_limits/increment", {"names": [name], "slots": 1, "mode": "concurrency"})
    assert r.status_code == 200 and [lim["name"] for lim in r.json()] == [name], (r.status_code, r.text)
    try:
        yield
    finally:
        post(e2e, "v2/concurrency_limits/decrement", {"names": [name], "slots": 1}).raise_for_status()


def test_second_provision_waits_for_the_first_and_never_interleaves(e2e, hosts):
    host = "host-007"
    free(e2e, host)
    vms = {
        "a": vm("conc-a", 160, 161, owner={"account": "acct-a"}),
        "b": vm("conc-b", 170, owner={"account": "acct-b"}),
    }
    key = idempotency_key("test-failures", "provision", host, vms["a"]["uuid"], uuid.uuid4().hex)
    waiting = f"waiting: another operation is running on {host}"
    with holding_host_lock(e2e, host):
        runs = {"a": e2e.trigger("provision", key=key, host=host, vm=vms["a"])}
        # The same request again (a caller retrying): the same run, not a second one.
        assert e2e.trigger("provision", key=key, host=host, vm=vms["a"]).id == runs["a"].id
        # B names the host by its CloudStack id: the same host, so the same lock.
        runs["b"] = e2e.trigger("provision", host=str(cloudstack_id(e2e, host)), vm=vms["b"])
        for run in runs.values():
            wait_until(f"{run.id} to say it waits for the lock", lambda: waiting in logs(e2e, run.id), timeout=180)
        assert not task_runs(e2e, runs["a"].id) and not task_runs(e2e, runs["b"].id), "a run went past the lock"
    done = {k: e2e.wait(run.id, timeout=240) for k, run in runs.items()}

    # Waiters are not served in order: either may win. The winner completes, the other then
    # gets the lock, finds the machine Deployed as the winner's VM and refuses, named.
    winner = next((k for k, run in done.items() if run.ok), None)
    assert winner is not None, {k: run.message for k, run in done.items()}
    loser = "b" if winner == "a" else "a"
    assert done[loser].state_type == "FAILED"
    assert "MAAS status allows provisioning" in done[loser].message, done[loser].message
    assert f"Deployed as {vms[winner]['name']}" in done[loser].message, done[loser].message
    # No interleaving: the loser's first step started after the winner's last one ended, and
    # it only read (it never touched a switch, MAAS or the BMC).
    won, lost = task_runs(e2e, runs[winner].id), task_runs(e2e, runs[loser].id)
    assert min(when(t["start_time"]) for t in lost) >= max(when(t["end_time"]) for t in won)
    changing = {
        "converge-ports",
        "rename-machine",
        "allocate-machine",
        "tag-machine",
        "untag-machine",
        "deploy-machine",
        "release-machine",
        "set-boot-device",
        "power-off",
        "power-on",
        "reboot",
        "want-ports",
        "record-vm",
        "create-bond",
        "deliver-preseed",
    }
    assert not {t["name"].split()[0] for t in lost} & changing
    # Exactly the winner's end state.
    assert_runs(e2e, host, vms[winner], (f"accountid_acct-{winner}",))


# --- secrets --------------------------------------------------------------------------------


def _all(e2e, path: str, body: dict) -> list[dict]:
    out, offset = [], 0
    while True:
        r = post(e2e, path, {**body, "limit": 200, "offset": offset})
        r.raise_for_status()
        page = r.json()
        out += page
        if len(page) < 200:
            return out
        offset += 200


def test_a_host_lock_deleted_on_the_server_is_made_again(e2e, hosts):
    """The serving process remembers the limits it made (no request to ask again); one an
    operator deleted since must not fail the next operation on the host: it is made again."""
    host = "host-006"
    assert e2e.run("start", host=host).ok  # the serving process now knows the host's limit
    name = lock_name(host)
    r = e2e.http("DELETE", f"v2/concurrency_limits/{name}")
    assert r.status_code in (200, 204), (r.status_code, r.text)
    assert e2e.http("GET", f"v2/concurrency_limits/{name}").status_code == 404
    run = e2e.run("stop", host=host)
    assert run.ok, run.message
    r = e2e.http("GET", f"v2/concurrency_limits/{name}")
    assert r.status_code == 200 and r.json()["limit"] == 1 and r.json()["active_slots"] == 0, r.text


def test_no_secret_in_any_run_log_artifact_or_parameter(e2e, hosts):
    """Last in the module: every flow run on this server so far (this module's, the
    registrations, the scheduled polls and audits), with its parameters, state messages, logs,
    artifacts and task-run messages, is free of every password the lab holds."""
    m = e2e.stack.manifest
    secrets = {f"BMC password of {h['name']}": h["ipmi"]["password"] for h in m["hosts"]}
    secrets.update({f"password of switch {s['name']}": s["password"] for s in m["switches"]})
    secrets.update({f"enable secret of switch {s['name']}": s["enable_secret"] for s in m["switches"]})
    secrets["MAAS token secret"] = m["maas"]["api_key"].split(":")[2]
    assert all(len(s) >= 8 for s in secrets.values())

    flow_runs = _all(e2e, "flow_runs/filter", {})
    assert len([r for r in flow_runs if r["name"].startswith("provision")]) >= 8
    ids = [r["id"] for r in flow_runs]
    texts = {
        "flow run parameters and states": json.dumps([(r["name"], r["parameters"], r["state"]) for r in flow_runs]),
        "logs": json.dumps([entry["message"] for entry in _all(e2e, "logs/filter", {})]),
        "artifacts": json.dumps(_all(e2e, "artifacts/filter", {})),
        "task runs": json.dumps(
            [(t["name"], t["state"]) for t in _all(e2e, "task_runs/filter", {"flow_runs": {"id": {"any_": ids}}})]
        ),
    }
    assert len(texts["logs"]) > 1000
    leaks = [f"{what} in {where}" for where, text in texts.items() for what, s in secrets.items() if s in text]
    assert not leaks, leaks


@contextmanager
def rollback_meeting_a_bmc_fault(e2e, host: str, spec: dict, mode: str):
    """A provision of ``host`` whose deploy fails; once it waits for the deploy, the BMC gets
    the fault ``mode``, so the rollback meets it. Yields the ended run; every fault is cleared
    when the block ends."""
    free(e2e, host)
    e2e.lab.control("POST", "/faults/maas", {"fail_next": "deploy"})
    try:
        run = e2e.trigger("provision", host=host, vm=spec)
        wait_until(
            "the provision's deploy wait",
            lambda: any(
                t["name"].startswith("wait-for-deployed") and (t["state"] or {}).get("type") == "RUNNING"
                for t in task_runs(e2e, run.id)
            ),
            timeout=120,
        )
        e2e.lab.control("POST", f"/faults/bmc/{host}", {"mode": mode})
        yield e2e.wait(run.id, 300)
    finally:
        e2e.lab.reset_faults()


def test_a_rollback_that_meets_a_silent_bmc_is_finished_by_recover(e2e, hosts):
    """Issue 18, point 3: the deploy fails and, while it rolls back, the BMC goes silent (drops
    every packet, the power-poll's sessions too): the release's erase cannot power the machine (MAAS: Failed disk erasing) and the
    power-off fails. The run ends ROLLBACK INCOMPLETE and its undo records stay in the
    inventory (the host is not handed out). Once the BMC answers, the power-poll sees it (a
    sweep run here in place of its schedule) and starts ``recover`` for the host by itself,
    which replays what is left (MAAS allows a release from Failed disk erasing): the host is
    idle with no recovery asked for."""
    host = "host-005"
    with rollback_meeting_a_bmc_fault(e2e, host, vm("silent-01", 160), "silent") as done:
        # The power-poll (one sweep here, in place of its schedule) finds the BMC silent.
        assert e2e.run("power-poll", window=0, timeout=120).ok
    assert done.state_type == "FAILED" and "ROLLBACK INCOMPLETE" in done.message, done.message
    inv = e2e.inventory()
    left = {u.label: u.state for u in inv.undos.left(host)}
    assert left.get("power off") == "failed", left
    assert all(u.run_id == done.id for u in inv.undos.left(host))

    # The faults are gone (reset above): the BMC answers again, and the next poll sees it.
    assert e2e.run("power-poll", window=0, timeout=120).ok

    def recovered() -> list[dict]:
        runs = post(e2e, "flow_runs/filter", {"flow_runs": {"name": {"any_": [f"recover {host}"]}}}).json()
        return [r for r in runs if r["state"]["type"] == "COMPLETED"]

    wait_until("a recover run of the host, started by the power-poll", recovered, timeout=150, interval=1)
    assert inv.undos.left(host) == []
    assert_idle(e2e, host)
    # and a sweep finds nothing more to do
    sweep = e2e.run("recover", timeout=120)
    assert sweep.ok and sweep.name == "recover (sweep)", sweep.message


def test_a_rerun_of_a_provision_whose_rollback_did_not_finish_completes(e2e, hosts):
    """Issue 18, point 3: the same unfinished rollback (MAAS: Failed disk erasing, the machine
    on), then the operator fixes the BMC and reruns the failed run from the UI at once, before
    any recovery: the rerun first finishes the rollback its first attempt left (MAAS allows a
    release from Failed disk erasing), then provisions; the host carries the VM."""
    host = "host-006"
    spec = vm("rerun-01", 161)
    with rollback_meeting_a_bmc_fault(e2e, host, spec, "reject_auth") as done:
        pass
    assert done.state_type == "FAILED" and "ROLLBACK INCOMPLETE" in done.message, done.message
    assert machine(e2e, host).status.name == "FAILED_DISK_ERASING"
    assert e2e.inventory().undos.left(host)

    again = rerun(e2e, done.id, timeout=300)
    assert again.ok, again.message
    assert_runs(e2e, host, spec)
    assert e2e.inventory().undos.left(host) == []
    assert "finishing the rollback run" in logs(e2e, done.id)
    free(e2e, host)


def test_after_the_faults_and_destroy_audit_finds_no_litter(e2e, hosts):
    """Issue 18, point 4: after this module's faults (rollbacks, dropped sessions, a silent
    BMC, interleaved provisions) and a destroy of every host, nothing metalflow made is left
    that nobody needs: no preseed file it wrote, no MAAS tag it created that no machine
    carries, no VLAN definition it made that no port carries. An operator's own preseed file,
    tag and VLAN definitions are never taken for litter."""
    preseeds = Path(e2e.stack.manifest["maas"]["preseed_dir"])
    (preseeds / "curtin_userdata_ubuntu_amd64_generic_jammy_operators-own").write_text("#cloud-config\n{}\n")
    maas = e2e.maas()
    maas.wire.request("POST", "tags/", data={"name": "operators-tag", "comment": "kept by the operator"})
    for host in hosts:
        free(e2e, host)
    run = e2e.run("audit", timeout=180)
    assert run.ok, run.message
    md = report(e2e, run.id)
    assert "no longer needs" not in md, md
    assert sorted(p.name for p in preseeds.iterdir()) == ["curtin_userdata_ubuntu_amd64_generic_jammy_operators-own"]
    assert [t.name for t in maas.tags() if t.comment == TAG_COMMENT] == []
    assert "operators-tag" in {t.name for t in maas.tags()}
    # VLAN definitions: every one metalflow made and no port carries went with the port
    # change that emptied it; the operator's (found on the switch) all stay.
    inv = e2e.inventory()
    for name, sw in e2e.lab.state()["switches"].items():
        origins = inv.ports.vlan_origins(name)
        defined = {int(v) for v in sw["vlans"]}
        carried = {p["untagged"] for p in sw["ports"].values()} | {v for p in sw["ports"].values() for v in p["tagged"]}
        assert any(o == "made" for o in origins.values()), f"{name}: metalflow made no VLAN in this module?"
        assert {v for v, o in origins.items() if o == "made"} & defined <= carried, (name, origins, sorted(defined))
        assert {v for v, o in origins.items() if o == "found"} <= defined | {1}, (name, origins)
