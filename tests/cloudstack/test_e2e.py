"""The extension run as CloudStack runs it, against a real Prefect server, metalflow's served
flows and the lab: stdout (one JSON document), exit codes, and the lab's hardware after.

Hosts: the pool tests get whatever prepare picks (the smallest free host, host-001 up);
the seed-model test pins host-004 by its CloudStack id.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from metalflow.integrations.cloudstack.extension_config import load_config
from metalflow.integrations.cloudstack.status import lock_active
from tests.cloudstack.payloads import GIB, NETWORK_EXTRA, NETWORK_GUEST, after_prepare, nic, payload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


#: Every prepare names the image: it checks the VM with provision's rules before it claims.
JAMMY = {"image": "ubuntu/jammy"}


def new_vm() -> str:
    return str(uuid.uuid4())


def guest_nic(vlan: str | None = "vlan://100") -> dict:
    return nic(0, vlan, default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")


def test_pool_model_lifecycle_422(clean):
    cs = clean
    vm = new_vm()
    vm_ext = {"image": "ubuntu/jammy", "vm_name": "Web-01", "account_id": "acc-1", "domain_id": "dom-1"}

    # prepare: a free machine, its MAC on the default NIC, its identity as External: details
    prep_doc = payload("prepare", vm, cpus=4, ram=8 * GIB, nics=[guest_nic()], vm_ext=vm_ext)
    prep = cs.call("prepare", prep_doc)
    assert prep.code == 0, prep.stdout
    host = prep.answer["details"]["External:metalflow_host"]
    hw = cs.host(host)
    assert prep.answer["nics"][0]["mac"] == hw["ports"][0]["mac"]
    assert prep.answer["details"]["External:mac_address"] == hw["ports"][0]["mac"]
    assert cs.inventory().claims.for_vm(vm).host == host

    # create, with CloudStack's wait too short for the install: reported honestly, still going
    create_doc = after_prepare(payload("create", vm, nics=[guest_nic()], vm_ext=vm_ext), prep.answer)
    cs.lab.control("POST", "/faults/maas", {"delay": 0.7})  # a slower MAAS: the install outlasts 5 s
    early = cs.call("create", create_doc, wait=20)
    assert early.code == 1 and early.answer["still_running"] is True, early.stdout
    assert "re-attaches" in early.message and early.answer["run_id"]
    # status during create: the VM is not installed yet
    during = cs.call("status", payload("status", vm, vm_ext=create_doc["externaldetails"]["virtualmachine"]))
    assert during.code == 0 and during.answer["power_state"] == "PowerUnknown"
    cs.lab.control("POST", "/faults/maas", {"delay": 0})
    # the same call again re-attaches to the same run instead of starting a second one
    done = cs.call("create", create_doc)
    assert done.code == 0, done.stdout
    assert done.answer["run_id"] == early.answer["run_id"]
    assert [r["id"] for r in cs.runs_for(vm)] == [early.answer["run_id"]]
    hw = cs.host(host)
    assert hw["power"] == "on" and hw["running"] == "os:ubuntu/jammy"
    assert all(p["untagged"] == 100 and p["tagged"] == [] for p in hw["ports"])
    machine = cs.e2e.maas().find_by_mac(hw["ports"][0]["mac"])
    assert machine.hostname == "web-01" and machine.status.name == "DEPLOYED"

    later = {"virtualmachine": {k[len("External:") :]: v for k, v in prep.answer["details"].items()}}
    status = lambda: cs.call("status", payload("status", vm, vm_ext=later["virtualmachine"]))  # noqa: E731
    assert status().answer["power_state"] == "PowerOn"

    # stop, while the OS ignores the soft-off: PowerUnknown while the stop holds the host
    cs.lab.control("POST", f"/faults/bmc/{host}", {"mode": "ignore_soft_off"})
    stopping = cs.spawn("stop", payload("stop", vm, vm_ext=later["virtualmachine"]))
    cs.wait_for(lambda: cs.lock_held(host), 60, f"the stop run holding {host}'s lock")
    busy = status()
    assert busy.code == 0 and busy.answer["power_state"] == "PowerUnknown", busy.stdout
    assert lock_active(load_config(cs.config), host) is True  # the lock check reads the real server
    stopped = cs.finish(stopping)
    assert stopped.code == 0, stopped.stdout
    cs.lab.control("POST", f"/faults/bmc/{host}", {"mode": "none"})
    assert cs.host(host)["power"] == "off"
    assert lock_active(load_config(cs.config), host) is False
    assert status().answer["power_state"] == "PowerOff"

    started = cs.call(
        "start",
        payload("start", vm, nics=[dict(guest_nic(), mac=hw["ports"][0]["mac"])], vm_ext=later["virtualmachine"]),
    )
    assert started.code == 0, started.stdout
    assert cs.host(host)["power"] == "on" and status().answer["power_state"] == "PowerOn"

    boots = cs.host(host)["boots"]
    rebooted = cs.call("reboot", payload("reboot", vm, vm_ext=later["virtualmachine"]))
    assert rebooted.code == 0, rebooted.stdout
    hw = cs.wait_for(lambda: (lambda h: h if h["boots"] > boots else None)(cs.host(host)), 30, "a boot after reboot")
    assert hw["power"] == "on"

    plug = cs.call(
        "PlugNetwork", payload("PlugNetwork", vm, custom=True, parameters={"vlan": 200}, vm_ext=later["virtualmachine"])
    )
    assert plug.code == 0 and plug.answer["printmessage"] == "true", plug.stdout
    assert all(p["untagged"] == 100 and p["tagged"] == [200] for p in cs.host(host)["ports"])

    deleted = cs.call("delete", payload("delete", vm, vm_ext=later["virtualmachine"]))
    assert deleted.code == 0, deleted.stdout
    hw = cs.host(host)
    assert hw["power"] == "off" and all(p["untagged"] == cs.pxe_vlan() and p["tagged"] == [] for p in hw["ports"])
    machine = cs.e2e.maas().machine(machine.system_id)
    assert machine.status.name == "READY" and machine.hostname.startswith("HOST-")
    assert cs.inventory().claims.for_vm(vm) is None and cs.inventory().hosts.get(host).last_vm_uuid is None

    # stop and delete of a machine already gone: success, nothing run
    runs_before = len(cs.runs_for(vm))
    for action in ("stop", "delete"):
        again = cs.call(action, payload(action, vm, vm_ext=later["virtualmachine"]))
        assert again.code == 0 and "nothing to" in again.message, again.stdout
    assert len(cs.runs_for(vm)) == runs_before


def test_seed_model_421_create_fails_midway_then_succeeds_on_retry(clean):
    cs = clean
    vm, host = new_vm(), "host-004"
    nics = [
        guest_nic("vlan://110"),
        nic(1, "vlan://150", default=False, network=NETWORK_EXTRA, mac="02:00:5a:00:00:02"),
    ]
    # 4.21: no caller, no prepare; the CloudStack host names its server by CloudStack id
    doc = payload(
        "create",
        vm,
        version="4.21",
        nics=nics,
        host_ext={"metalflow_host": "1004"},
        vm_ext={"os": "ubuntu", "distro_series": "jammy"},
        internal_name="i-2-206-VM",
    )
    cs.lab.control("POST", "/faults/maas", {"fail_next": "deploy", "count": 1})
    failed = cs.call("create", doc)
    assert failed.code == 1 and failed.answer["state"] == "Failed", failed.stdout
    assert "deploy" in failed.message.lower()
    hw = cs.host(host)  # the flow undid everything: nothing left behind for the retry
    assert hw["power"] == "off" and all(p["untagged"] == cs.pxe_vlan() and p["tagged"] == [] for p in hw["ports"])
    assert cs.inventory().claims.for_vm(vm) is None
    # CloudStack cleans up with stop, which must succeed
    cleanup = cs.call("stop", payload("stop", vm, version="4.21", host_ext={"metalflow_host": "1004"}))
    assert cleanup.code == 0 and "nothing to stop" in cleanup.message, cleanup.stdout

    retry = cs.call("create", doc)
    assert retry.code == 0, retry.stdout
    assert retry.answer["run_id"] != failed.answer["run_id"]
    hw = cs.host(host)
    assert hw["power"] == "on" and hw["running"] == "os:ubuntu/jammy"
    assert all(p["untagged"] == 110 and p["tagged"] == [150] for p in hw["ports"])
    assert cs.e2e.maas().find_by_mac(hw["ports"][0]["mac"]).hostname == "i-2-206-vm"
    status = cs.call("status", payload("status", vm, version="4.21", host_ext={"metalflow_host": "1004"}))
    assert status.answer["power_state"] == "PowerOn"

    deleted = cs.call("delete", payload("delete", vm, version="4.21", host_ext={"metalflow_host": "1004"}))
    assert deleted.code == 0, deleted.stdout
    assert all(p["untagged"] == cs.pxe_vlan() and p["tagged"] == [] for p in cs.host(host)["ports"])


def test_two_concurrent_prepares_pick_different_machines(clean):
    cs = clean
    vms = [new_vm(), new_vm()]
    procs = [cs.spawn("prepare", payload("prepare", vm, nics=[guest_nic()], vm_ext=JAMMY)) for vm in vms]
    calls = [cs.finish(p) for p in procs]
    assert all(c.code == 0 for c in calls), [c.stdout for c in calls]
    hosts = {c.answer["details"]["External:metalflow_host"] for c in calls}
    assert len(hosts) == 2
    assert {c.answer["nics"][0]["mac"] for c in calls} == {cs.host(h)["ports"][0]["mac"] for h in hosts}
    # never created: delete only frees the machines (no flow run needed)
    for vm in vms:
        assert cs.call("delete", payload("delete", vm)).code == 0
        assert cs.inventory().claims.for_vm(vm) is None and cs.runs_for(vm) == []


def test_clear_errors_change_nothing(clean):
    cs = clean
    vm = new_vm()
    prep = cs.call("prepare", payload("prepare", vm, nics=[guest_nic()], vm_ext=JAMMY))
    host = prep.answer["details"]["External:metalflow_host"]
    before = cs.host(host)
    vm_ext = {"metalflow_host": host, "image": "ubuntu/jammy"}

    # a missing VLAN: refused before any run starts
    missing = cs.call("create", payload("create", vm, nics=[guest_nic("vlan://untagged")], vm_ext=vm_ext))
    assert missing.code == 1 and "VLAN" in missing.message and "broadcastUri" in missing.message
    assert cs.runs_for(vm) == []

    # an unknown image: metalflow's constraint check refuses it before the first change
    unknown = cs.call("create", payload("create", vm, nics=[guest_nic()], vm_ext=dict(vm_ext, image="ubuntu/nosuch")))
    assert unknown.code == 1 and "ubuntu/nosuch" in unknown.message and "image" in unknown.message, unknown.stdout
    assert cs.inventory().claims.for_vm(vm) is None  # the machine is free again

    # a malformed payload, an unknown action, getconsole
    bad = cs.workdir / "malformed.json"
    bad.write_text('{"virtualmachineid": "x", "cloudstack.vm.details": {"nics": [')
    argv = cs.argv("create", {}, 60)
    argv[-2] = str(bad)
    proc = subprocess.run(argv, env=cs.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "not valid JSON" in cs._parse(1, proc.stdout + proc.stderr).message
    java = cs.call("com.cloud.agent.api.GetVmStatsCommand", {"action": "com.cloud.agent.api.GetVmStatsCommand"})
    assert java.code == 1 and "does not handle" in java.message
    console = cs.call("getconsole", payload("getconsole", vm, vm_ext=vm_ext))
    assert console.code == 1 and "no console" in console.message

    hw = cs.host(host)
    assert hw == before
    assert hw["power"] == "off" and all(p["untagged"] == cs.pxe_vlan() and p["tagged"] == [] for p in hw["ports"])
    assert [r["state"]["type"] for r in cs.runs_for(vm)] == ["FAILED"]  # only the refused image's run


def test_a_tenant_cannot_reach_another_vms_machine_or_secrets(clean):
    """The tenant boundary through the real executable: VM details a tenant wrote name another
    tenant's machine, or a secret outside the operator's scope. Every answer is "not
    available" or a refusal naming no other VM; no run is created for the intruder and the
    machine, the claims and the inventory stay as they were."""
    cs = clean
    owner, intruder = new_vm(), new_vm()
    vm_ext = {"image": "ubuntu/jammy", "vm_name": "payroll-db"}
    prep = cs.call("prepare", payload("prepare", owner, nics=[guest_nic()], vm_ext=vm_ext))
    assert prep.code == 0, prep.stdout
    taken = prep.answer["details"]["External:metalflow_host"]
    create_doc = after_prepare(payload("create", owner, nics=[guest_nic()], vm_ext=vm_ext), prep.answer)
    assert cs.call("create", create_doc).code == 0
    later = {k[len("External:") :]: v for k, v in prep.answer["details"].items()}
    hw = cs.host(taken)
    assert hw["running"] == "os:ubuntu/jammy"

    def world():
        inv = cs.inventory()
        try:
            claims = sorted((c.host, c.vm_uuid) for c in inv.claims.all())
            # Every host's VM, name and maintenance (not the row's version: the power-poll's
            # readings write the rows whenever they come); any operation would also journal.
            hosts = [(h.name, h.last_vm_uuid, h.last_vm_name, h.maintenance) for h in inv.hosts.all()]
            return claims, hosts, len(inv.history.events(taken))
        finally:
            inv.dispose()

    before = world()
    hint = {"metalflow_host": taken, "image": "ubuntu/jammy"}
    calls = [
        ("create", payload("create", intruder, nics=[guest_nic()], vm_ext=hint)),
        ("start", payload("start", intruder, nics=[guest_nic()], vm_ext=hint)),
        ("reboot", payload("reboot", intruder, vm_ext=hint)),
        ("PlugNetwork", payload("PlugNetwork", intruder, custom=True, parameters={"vlan": 300}, vm_ext=hint)),
        ("Reinstall", payload("Reinstall", intruder, custom=True, vm_ext=hint)),
        ("stop", payload("stop", intruder, vm_ext=hint)),
        ("delete", payload("delete", intruder, vm_ext=hint)),
    ]
    for action, doc in calls:
        answer = cs.call(action, doc)
        assert "not available to VM " + intruder in answer.message, (action, answer.stdout)
        assert owner not in answer.stdout and "payroll-db" not in answer.stdout, (action, answer.stdout)
        assert answer.code == (0 if action in ("stop", "delete") else 1), (action, answer.stdout)
    status = cs.call("status", payload("status", intruder, vm_ext=hint))
    assert status.answer["power_state"] == "PowerUnknown" and taken not in status.stdout

    # a root_password_ref outside the operator's scope (the default scope: none), even for the
    # intruder's own free machine: refused before the machine is claimed, and never quoted
    free = next(h.name for h in cs.inventory().hosts.all() if h.name != taken and h.last_vm_uuid is None)
    for ref in ("block:metalflow-maas", "env:METALFLOW_MAAS_SETTINGS", "hunter2-CANARY"):
        doc = payload(
            "create", intruder, nics=[guest_nic()], vm_ext={**hint, "metalflow_host": free, "root_password_ref": ref}
        )
        refused = cs.call("create", doc)
        assert refused.code == 1 and "root_password_ref" in refused.message, refused.stdout
        assert ref not in refused.stdout and "CANARY" not in refused.stdout

    assert cs.runs_for(intruder) == []
    assert world() == before
    assert cs.host(taken) == hw
    assert cs.call("status", payload("status", owner, vm_ext=later)).answer["power_state"] == "PowerOn"
    assert cs.call("delete", payload("delete", owner, vm_ext=later)).code == 0
