"""Every metalflow flow's normal life, triggered over the REST API as CloudStack would, and
checked where it lands: the lab's switches, BMCs and MAAS, and the inventory.

Hosts: host-001 (one NIC, Force10): register, provision, rerun, stop, case A, plug/unplug,
destroy; host-004 (two NICs, Cisco IOS): bond, power operations, power changed behind our back,
audit; host-002 (one NIC, Cisco IOS): a silent BMC and maintenance. The tests of one host build
on each other, in file order: a lifecycle is a sequence.
``metalflow serve`` also runs power-poll on its schedule; assertions about polls read the
inventory after our own run instead of counting runs, so an interleaved scheduled poll cannot
change the verdict.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metalflow.integrations.common import Deadline
from metalflow.integrations.common.values import MAX_NICS
from metalflow.integrations.prefectapi import PrefectBadRequest

PXE = 10
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f ops@example"
KEY_BODY = SSH_KEY.split()[1]
PW_HASH = "$6$flowsalt$" + "Q" * 86
#: The root password's crypt hash travels as a reference (a Secret block), never as a parameter.
PW_HASH_BLOCK = "e2e-flows-root-hash"

VM1 = {
    "name": "flows-one",
    "uuid": "vm-flows-0001",
    "image": "ubuntu/jammy",
    "nics": [{"vlan": 101, "default": True}, {"vlan": 201}],
    "owner": {"account": "acc-1", "domain": "dom-1", "project": "prj-1"},
    "root_password_ref": f"block:{PW_HASH_BLOCK}",
    "ssh_keys": [SSH_KEY],
}
VM4 = {
    "name": "flows-four",
    "uuid": "vm-flows-0004",
    "image": "ubuntu/noble",
    "nics": [{"vlan": 104, "default": True}],
    "owner": {"account": "acc-4"},
}

OWNER_PREFIXES = ("accountid_", "domainid_", "projectid_")


# --- reading the world --------------------------------------------------------------------------


def spec(e2e, host: str) -> dict:
    return next(h for h in e2e.stack.manifest["hosts"] if h["name"] == host)


def ports(e2e, host: str) -> list[tuple[int | None, list[int]]]:
    """(untagged, tagged) of every cabled port of ``host``, read from the lab's switches."""
    return [(p["untagged"], p["tagged"]) for p in e2e.lab.host(host)["ports"]]


def switch_of(e2e, host: str) -> str:
    return spec(e2e, host)["nics"][0]["switch"]


def config_counters(e2e, switch: str) -> tuple[int, int]:
    c = e2e.lab.state()["switches"][switch]["counters"]
    return c["config_commands"], c["saves"]


def maas_record(e2e, system_id: str) -> dict:
    """The lab MAAS's own record of a machine (everything metalflow could have changed)."""
    return next(m for m in e2e.lab.state()["maas"]["machines"] if m["system_id"] == system_id)


def report(e2e, run) -> str:
    """The run's markdown report (the artifact a Prefect UI user reads)."""
    docs = [a["data"] for a in e2e.artifacts(run.id) if a.get("type") == "markdown"]
    assert docs, f"run {run.name} published no report"
    return docs[-1]


def journal(e2e, host: str, run) -> set[tuple[str, str]]:
    """(step, outcome) pairs the run wrote into the host's journal."""
    return {(ev.step, ev.outcome) for ev in e2e.inventory().history.events(host) if ev.run_id == run.id}


def wait_until(predicate, timeout: float = 20, what: str = "condition"):
    return Deadline(timeout).wait_for(predicate, bool, what=what, interval=0.1, max_interval=0.5)


def _fresh(h, since: datetime) -> bool:
    return h.power_state_at is not None and h.power_state_at >= since


def refused(run, *fragments: str) -> None:
    assert run.state_type == "FAILED", f"{run.name} should have been refused, is {run.state_name}"
    for f in fragments:
        assert f in run.message, f"{f!r} not in {run.message!r}"


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(e2e):
    """host-002 and host-004 registered (in parallel: they are independent)."""
    e2e.register("host-002", "host-004")
    return e2e.inventory()


@pytest.fixture(scope="module")
def state() -> dict:
    """What one test hands the next (run ids, boot counts)."""
    return {}


@pytest.fixture
def lab_faults_cleared(e2e):
    yield
    e2e.lab.reset_faults()


# --- register-host ------------------------------------------------------------------------------


def test_register_creates_commissions_then_adopts(e2e):
    host, inv, maas = "host-001", e2e.inventory(), e2e.maas()
    mac = spec(e2e, host)["macs"][0]
    assert maas.find_by_mac(mac) is None and inv.hosts.get(host).maas_system_id is None

    run = e2e.run("register-host", host=host)
    assert run.ok, run.message
    assert run.name == f"register-host {host}"
    sid = inv.hosts.get(host).maas_system_id
    assert sid
    m = maas.machine(sid)
    assert m.status.name == "READY" and m.hostname == f"HOST-{spec(e2e, host)['cloudstack_id']}"
    assert m.power_type == "ipmi"
    hw = e2e.lab.host(host)
    assert "ephemeral:commissioning" in [h["running"] for h in hw["history"]]  # it really PXE-booted
    assert ports(e2e, host) == [(PXE, [])]
    steps = journal(e2e, host, run)
    for step in ("converge-ports", "find-or-create-machine", "record-system-id", "wait-for-status"):
        assert (step, "ok") in steps, steps

    # A second run changes nothing: same machine, no switch change, nothing re-created.
    sw = switch_of(e2e, host)
    before_sw, before_m = config_counters(e2e, sw), maas_record(e2e, sid)
    again = e2e.run("register-host", host=host)
    assert again.ok, again.message
    assert inv.hosts.get(host).maas_system_id == sid
    assert [x.system_id for x in maas.machines(mac_address=mac)] == [sid]
    assert config_counters(e2e, sw) == before_sw and maas_record(e2e, sid) == before_m

    # The inventory forgot the machine (e.g. the host was removed and added again): MAAS's
    # machine is adopted by its MAC, not enlisted a second time.
    inv.hosts.set_maas_system_id(host, None)
    adopt = e2e.run("register-host", host=host)
    assert adopt.ok, adopt.message
    assert inv.hosts.get(host).maas_system_id == sid
    assert [x.system_id for x in maas.machines(mac_address=mac)] == [sid]
    assert maas_record(e2e, sid) == before_m


# --- provision, case B, one NIC -----------------------------------------------------------------


def save_secret(e2e, name: str, value: str) -> None:
    """A Prefect Secret block on the test's server (as an operator puts the root hash there)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from metalflow.deployments.labsetup import save_secret

    with temporary_settings({PREFECT_API_URL: e2e.stack.api_url}):
        save_secret(name, value)


def test_provision_one_nic_host(e2e, state):
    host, inv = "host-001", e2e.inventory()
    sid = inv.hosts.get(host).maas_system_id
    state["boots_before_provision"] = e2e.lab.host(host)["boots"]
    save_secret(e2e, PW_HASH_BLOCK, PW_HASH)

    run = e2e.run("provision", host=host, vm=VM1)
    assert run.ok, run.message
    assert run.name == f"provision {host} → flows-one"
    stored = e2e.http("GET", f"flow_runs/{run.id}").json()["parameters"]
    assert stored["vm"]["root_password_ref"] == f"block:{PW_HASH_BLOCK}" and "flowsalt" not in json.dumps(stored)
    state["provision_run"] = run.id

    m = e2e.maas().machine(sid)
    assert m.status.name == "DEPLOYED" and m.hostname == "flows-one"
    assert (m.osystem, m.distro_series) == ("ubuntu", "jammy")
    assert {"accountid_acc-1", "domainid_dom-1", "projectid_prj-1"} <= set(m.tag_names)
    assert ports(e2e, host) == [(101, [201])]  # guest untagged, extra tagged, PXE gone
    hw = e2e.lab.host(host)
    assert hw["bootdev"] == "disk" and hw["persistent"] and hw["power"] == "on"
    wait_until(lambda: e2e.lab.host(host)["running"] == "os:ubuntu/jammy", what="host-001 runs its OS")
    h = inv.hosts.get(host)
    assert (h.last_vm_uuid, h.last_vm_name) == ("vm-flows-0001", "flows-one")

    md = report(e2e, run)
    for step in (
        "PXE VLAN on every cabled port",
        "rename to flows-one",
        "allocate",
        "ownership tags",
        "curtin preseed",
        "deploy ubuntu/jammy",
        "wait for Deployed",
        "remove the used curtin preseed",
        "boot device disk",
        "guest VLAN 101 untagged",
        "reboot",
        "record VM",
    ):
        assert step in md, f"report lacks {step!r}"
    assert re.search(r"tor-1: .*untagged .*1/1/1", md), "report lacks the switch command lines"
    preseed = md.split("## curtin preseed", 1)[1]
    assert "usermod -p '***' root" in preseed and "ssh-ed25519 *** ops@example" in preseed
    assert PW_HASH not in md and "flowsalt" not in md and KEY_BODY not in md
    # Installed, the preseed (the root password's hash, the keys) is not left in MAAS's directory.
    left = [p.name for p in Path(e2e.stack.manifest["maas"]["preseed_dir"]).iterdir() if "flows-one" in p.name]
    assert left == [], left

    steps = journal(e2e, host, run)
    for step in (
        "converge-ports",
        "rename-machine",
        "allocate-machine",
        "tag-machine",
        "deliver-preseed",
        "deploy-machine",
        "wait-for-status",
        "remove-preseeds",
        "set-boot-device",
        "reboot",
        "record-vm",
    ):
        assert (step, "ok") in steps, f"{step} not journaled: {sorted(steps)}"


def test_rerun_of_completed_provision_and_register_change_nothing(e2e, state):
    host = "host-001"
    sid = e2e.inventory().hosts.get(host).maas_system_id
    # Let the provision's own boots land first: deploy (PXE), curtin's reboot, the final reset.
    wait_until(lambda: e2e.lab.host(host)["boots"] >= state["boots_before_provision"] + 3, what="the provision's boots")
    boots, sw, m = e2e.lab.host(host)["boots"], config_counters(e2e, "tor-1"), maas_record(e2e, sid)

    run = e2e.rerun(state["provision_run"])
    assert run.ok, run.message
    assert config_counters(e2e, "tor-1") == sw
    assert maas_record(e2e, sid) == m
    hw = e2e.lab.host(host)
    assert hw["boots"] == boots and hw["power"] == "on"
    assert ports(e2e, host) == [(101, [201])]

    # CloudStack adding the host again while it carries the VM: adopted, the VM left alone
    # (its ports stay on the guest network, not back on PXE).
    reg = e2e.run("register-host", host=host)
    assert reg.ok, reg.message
    assert "ports left alone" in report(e2e, reg)
    assert ports(e2e, host) == [(101, [201])] and config_counters(e2e, "tor-1") == sw
    assert maas_record(e2e, sid) == m and e2e.lab.host(host)["boots"] == boots


# --- stop, then case A --------------------------------------------------------------------------


def test_stop_then_provision_same_vm_only_powers_on(e2e):
    host, inv = "host-001", e2e.inventory()
    sid = inv.hosts.get(host).maas_system_id
    stop = e2e.run("stop", host=host)
    assert stop.ok, stop.message
    assert stop.name == f"stop {host}"
    assert e2e.lab.host(host)["power"] == "off"
    assert "soft off" in report(e2e, stop) and "hard off" not in report(e2e, stop)
    assert inv.hosts.get(host).power_state == "off"  # the verified state, recorded at once
    assert ("shut-down", "ok") in journal(e2e, host, stop)

    sw, m = config_counters(e2e, "tor-1"), maas_record(e2e, sid)
    run = e2e.run("provision", host=host, vm=VM1)
    assert run.ok, run.message
    assert "case A" in report(e2e, run)
    assert config_counters(e2e, "tor-1") == sw
    now = maas_record(e2e, sid)
    assert (now["hostname"], now["status_name"], now["tags"]) == (m["hostname"], m["status_name"], m["tags"])
    wait_until(lambda: e2e.lab.host(host)["running"] == "os:ubuntu/jammy", what="host-001 boots its OS again")
    assert e2e.lab.host(host)["bootdev"] == "disk"
    assert ports(e2e, host) == [(101, [201])]


# --- plug-nic / unplug-nic ----------------------------------------------------------------------


def test_plug_and_unplug_nic(e2e):
    host = "host-001"
    run = e2e.run("plug-nic", host=host, vlan=301)
    assert run.ok, run.message
    assert run.name == f"plug-nic {host} → VLAN 301"
    assert ports(e2e, host) == [(101, [201, 301])]
    assert ("converge-ports", "ok") in journal(e2e, host, run)

    run = e2e.run("unplug-nic", host=host, vlan=301)
    assert run.ok, run.message
    assert ports(e2e, host) == [(101, [201])]

    # A VLAN id out of range is the API's to refuse (the flow's parameter schema): no run.
    sw = config_counters(e2e, "tor-1")
    for bad in (5000, 1, True):
        with pytest.raises(PrefectBadRequest) as api_refused:
            e2e.trigger("plug-nic", host=host, vlan=bad)
        assert "'vlan'" in str(api_refused.value), str(api_refused.value)
    # Two refusals by the run, triggered together (the host lock orders them).
    asks = [
        ("unplug-nic", 101, ("default NIC", "cannot be unplugged")),
        ("plug-nic", PXE, ("PXE",)),
    ]
    runs = [e2e.trigger(flow, host=host, vlan=vlan) for flow, vlan, _ in asks]
    for r, (_, _, why) in zip(runs, asks):
        done = e2e.wait(r.id)
        refused(done, *why)
        assert "refused, nothing changed" in report(e2e, done)
    assert ports(e2e, host) == [(101, [201])] and config_counters(e2e, "tor-1") == sw

    # At most MAX_NICS networks per VM, plugged one at a time too: with the guest VLAN, 201 and
    # fourteen more recorded as wanted, one more is refused before any change.
    inv = e2e.inventory()
    more = range(2001, 2001 + MAX_NICS - 2)
    for extra in more:
        inv.ports.set_desired_vlan(host, extra, purpose="extra", tagged=True)
    try:
        done = e2e.wait(e2e.trigger("plug-nic", host=host, vlan=3001).id)
        refused(done, "vlan", f"already has {MAX_NICS} networks", "unplug one first")
    finally:
        for extra in more:
            inv.ports.clear_desired_vlan(host, extra, purpose="extra")
    assert ports(e2e, host) == [(101, [201])] and config_counters(e2e, "tor-1") == sw


# --- destroy ------------------------------------------------------------------------------------


def test_destroy_then_destroy_again(e2e):
    host, inv = "host-001", e2e.inventory()
    sid = inv.hosts.get(host).maas_system_id
    run = e2e.run("destroy", host=host)
    assert run.ok, run.message
    assert run.name == f"destroy {host}"
    hw = e2e.lab.host(host)
    assert hw["power"] == "off" and hw["bootdev"] == "pxe" and hw["persistent"]
    assert ports(e2e, host) == [(PXE, [])]
    assert "ephemeral:erasing" in [x["running"] for x in hw["history"]]  # the erase really ran
    m = e2e.maas().machine(sid)
    assert m.status.name == "READY" and m.hostname == f"HOST-{spec(e2e, host)['cloudstack_id']}"
    assert not [t for t in m.tag_names if t.startswith(OWNER_PREFIXES)]
    h = inv.hosts.get(host)
    assert h.last_vm_uuid is None and h.last_vm_name is None
    steps = journal(e2e, host, run)
    for step in (
        "power-off",
        "converge-ports",
        "set-boot-device",
        "release-machine",
        "rename-machine",
        "untag-machine",
        "record-vm",
    ):
        assert (step, "ok") in steps, f"{step} not journaled: {sorted(steps)}"

    sw, rec, boots = config_counters(e2e, "tor-1"), maas_record(e2e, sid), hw["boots"]
    again = e2e.run("destroy", host=host)
    assert again.ok, again.message
    assert "already Ready: skipped" in report(e2e, again)
    assert config_counters(e2e, "tor-1") == sw and maas_record(e2e, sid) == rec
    assert e2e.lab.host(host)["boots"] == boots and ports(e2e, host) == [(PXE, [])]


# --- a two-NIC host: bond, power operations, audit ----------------------------------------------


def test_provision_two_nic_host_gets_a_bond(e2e, registered):
    host = "host-004"
    assert len(spec(e2e, host)["nics"]) == 2
    sid = registered.hosts.get(host).maas_system_id
    run = e2e.run("provision", host=host, vm=VM4)
    assert run.ok, run.message
    assert run.name == f"provision {host} → flows-four"
    m = e2e.maas().machine(sid)
    assert m.status.name == "DEPLOYED" and m.hostname == "flows-four"
    assert (m.osystem, m.distro_series) == ("ubuntu", "noble")
    assert "accountid_acc-4" in m.tag_names
    bonds = [i for i in m.interfaces if i.type == "bond"]
    assert len(bonds) == 1 and bonds[0].params.get("bond_mode") == "active-backup"
    physical = {i.name for i in m.interfaces if i.type == "physical"}
    assert set(bonds[0].parents) == physical and len(physical) == 2
    assert ports(e2e, host) == [(104, []), (104, [])]  # every cabled port, PXE gone
    hw = e2e.lab.host(host)
    assert hw["bootdev"] == "disk" and hw["persistent"] and hw["power"] == "on"
    wait_until(lambda: e2e.lab.host(host)["running"] == "os:ubuntu/noble", what="host-004 runs its OS")
    assert "active-backup bond" in report(e2e, run)


def test_status_stop_escalation_start_reboot(e2e, registered, lab_faults_cleared):
    host = "host-004"
    status = e2e.run("status", host=host)
    assert status.ok and status.name == f"status {host}"
    assert "**Outcome:** power on" in report(e2e, status)

    # The OS ignores ACPI: after soft_timeout the stop escalates to a hard power off.
    e2e.lab.control("POST", f"/faults/bmc/{host}", {"mode": "ignore_soft_off"})
    stop = e2e.run("stop", host=host, soft_timeout=2)
    assert stop.ok, stop.message
    assert e2e.lab.host(host)["power"] == "off"
    assert "hard off (soft off ignored)" in report(e2e, stop)
    assert "powering off hard" in e2e.logs(stop.id)
    e2e.lab.reset_faults()

    status = e2e.run("status", host=host)
    assert "**Outcome:** power off" in report(e2e, status)
    assert registered.hosts.get(host).power_state == "off"

    start = e2e.run("start", host=host)
    assert start.ok, start.message
    wait_until(lambda: e2e.lab.host(host)["running"] == "os:ubuntu/noble", what="host-004 boots")
    boots = e2e.lab.host(host)["boots"]
    reboot = e2e.run("reboot", host=host)
    assert reboot.ok, reboot.message
    assert reboot.name == f"reboot {host}"
    wait_until(lambda: e2e.lab.host(host)["boots"] == boots + 1, what="host-004 reboots")
    hw = e2e.lab.host(host)
    assert hw["power"] == "on" and hw["running"] == "os:ubuntu/noble"
    assert ("reboot", "ok") in journal(e2e, host, reboot)


def test_power_poll_sees_power_changed_behind_its_back(e2e, registered):
    host = "host-004"
    h = registered.hosts.get(host)
    assert h.power_state == "on"  # recorded by the reboot that just verified it
    since = datetime.now(UTC) - timedelta(seconds=1)
    e2e.lab.control("POST", f"/power/{host}", {"on": False})  # someone pulled the plug
    run = e2e.run("power-poll")
    assert run.ok, run.message
    h = registered.hosts.get(host)
    assert h.power_state == "off" and _fresh(h, since)
    changes = [ev for ev in registered.history.events(host) if ev.step == "power-changed" and ev.at >= since]
    assert changes and "on → off" in changes[0].detail


def test_audit_reports_drift_and_repairs_it(e2e, registered):
    host = "host-004"
    nic = spec(e2e, host)["nics"][1]
    sw, port = nic["switch"], nic["port"]
    # Someone "fixes" a port by hand: the guest VLAN replaced, a stray tagged VLAN added.
    e2e.lab.control("POST", f"/ports/{sw}", {"port": port, "untagged": PXE, "tagged": [999]})
    assert ports(e2e, host)[1] == (PXE, [999])

    run = e2e.run("audit")
    assert run.ok, run.message
    md = report(e2e, run)
    row = next((line for line in md.splitlines() if f"| {port} |" in line), "")
    assert host in row and "untagged 104 tagged -" in row and "untagged 10 tagged 999" in row, md
    assert row.rstrip().endswith("| no |")
    assert ports(e2e, host)[1] == (PXE, [999])  # a report changes nothing
    assert ("vlan-drift", "ok") in journal(e2e, host, run)
    assert f"| {spec(e2e, host)['nics'][0]['port']} |" not in md  # the other port is fine

    fix = e2e.run("audit", repair=True)
    assert fix.ok, fix.message
    assert fix.name == "audit (repair)"
    assert ports(e2e, host) == [(104, []), (104, [])]
    assert re.search(rf"\| {re.escape(port)} \|.*\| yes", report(e2e, fix))
    assert ("converge-ports", "ok") in journal(e2e, host, fix)


def test_destroy_two_nic_host(e2e, registered):
    host = "host-004"
    run = e2e.run("destroy", host=host)
    assert run.ok, run.message
    assert ports(e2e, host) == [(PXE, []), (PXE, [])]
    m = e2e.maas().machine(registered.hosts.get(host).maas_system_id)
    assert m.status.name == "READY" and m.hostname == f"HOST-{spec(e2e, host)['cloudstack_id']}"


# --- power-poll ---------------------------------------------------------------------------------


@pytest.fixture
def three_strikes(e2e):
    """maintenance_after_failures = 3 for this test (config.json, read by every run)."""
    config = e2e.stack.home / "config.json"
    original = config.read_text()
    config.write_text(json.dumps({**json.loads(original), "maintenance_after_failures": 3}, indent=2))
    yield
    config.write_text(original)


def test_silent_bmc_goes_into_maintenance_and_comes_back(e2e, registered, lab_faults_cleared, three_strikes):
    host = "host-002"
    e2e.lab.control("POST", f"/faults/bmc/{host}", {"mode": "silent"})
    for n in range(1, 4):
        run = e2e.run("power-poll")
        assert run.ok, run.message  # a silent BMC is a finding, not a failed poll
        h = registered.hosts.get(host)
        assert h.power_state == "unknown" and h.poll_failures >= n
        assert "BmcTimeout" in (h.last_poll_error or "")
        # a scheduled poll may have run in between: the rule, not the count, is what holds
        assert h.maintenance == (h.poll_failures >= 3)
    assert h.maintenance and "failed" in h.maintenance_reason and "BmcTimeout" in h.maintenance_reason
    assert [
        ev for ev in registered.history.events(host) if ev.step == "maintenance" and ev.detail.startswith("entered")
    ]

    vm = {
        "name": "flows-two",
        "uuid": "vm-flows-0002",
        "image": "ubuntu/jammy",
        "nics": [{"vlan": 102, "default": True}],
    }
    sw = config_counters(e2e, switch_of(e2e, host))
    refused(e2e.run("provision", host=host, vm=vm), "host not in maintenance", "in maintenance")
    assert config_counters(e2e, switch_of(e2e, host)) == sw and ports(e2e, host) == [(PXE, [])]

    e2e.lab.reset_faults()
    since = datetime.now(UTC) - timedelta(seconds=1)
    run = e2e.run("power-poll")
    assert run.ok, run.message
    h = registered.hosts.get(host)
    assert not h.maintenance and h.poll_failures == 0 and h.power_state == "off" and _fresh(h, since)
    assert [ev for ev in registered.history.events(host) if ev.step == "maintenance" and ev.detail.startswith("left")]
