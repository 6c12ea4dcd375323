"""bulk-provision end to end: one request over the REST API, each host a provision subflow
(its own child run), the canary gate read from the hosts' journals, the abort on a canary that
fails before its milestone, and the refusal of a bad request. Hosts host-011 .. host-014 only
(no other test uses them); the tests run in file order: the refused and aborted bulks leave
the hosts idle for the bulk that succeeds.

Nothing is mocked: the fault is the lab's (a switch that rejects every login), every assertion
reads the lab, MAAS, the inventory journal or the Prefect API."""

from __future__ import annotations

from datetime import datetime

import pytest

HOSTS = ("host-011", "host-012", "host-013", "host-014")
PXE = 10


def vm(name: str, vlan: int) -> dict:
    return {"name": name, "uuid": f"uuid-{name}", "image": "ubuntu/jammy", "nics": [{"vlan": vlan, "default": True}]}


def spec(e2e, host: str) -> dict:
    return next(h for h in e2e.stack.manifest["hosts"] if h["name"] == host)


def children(e2e, run_id: str) -> dict[str, dict]:
    """The bulk run's child flow runs (linked by Prefect's parent task run), by host."""
    r = e2e.http("POST", "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
    r.raise_for_status()
    return {c["parameters"]["host"]: c for c in r.json()}


def task_run(e2e, task_run_id: str) -> dict:
    r = e2e.http("GET", f"task_runs/{task_run_id}")
    r.raise_for_status()
    return r.json()


def report(e2e, run_id: str) -> str:
    docs = [a["data"] for a in e2e.artifacts(run_id) if a.get("type") == "markdown"]
    assert len(docs) == 1, f"expected one bulk report, found {len(docs)}"
    return docs[0]


def milestone(e2e, host: str, child_id: str) -> datetime:
    """When the child run journaled MAAS accepting its deploy."""
    hits = [
        ev.at
        for ev in e2e.inventory().history.events(host, limit=500, run_id=child_id)
        if ev.step == "deploy-machine" and ev.outcome == "ok"
    ]
    assert hits, f"{host}'s run {child_id} never journaled deploy-machine ok"
    return min(hits)


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def assert_idle(e2e, host: str) -> None:
    hw = e2e.lab.host(host)
    assert [(p["untagged"], p["tagged"]) for p in hw["ports"]] == [(PXE, [])] * len(hw["ports"]), hw["ports"]
    m = e2e.maas().machine(e2e.inventory().hosts.get(host).maas_system_id)
    assert (m.status.name, m.hostname) == ("READY", f"HOST-{spec(e2e, host)['cloudstack_id']}")


@pytest.fixture(scope="module")
def hosts(e2e):
    """host-011 .. host-014 registered (Ready in MAAS), no fault active."""
    return e2e.register(*HOSTS)


def test_a_bad_bulk_is_refused_before_any_host_starts(e2e, hosts):
    asks = [
        {"host": "host-011", "vm": vm("bulk-dup-a", 150)},
        {"host": "1014", "vm": vm("bulk-dup-b", 151)},  # host-014 by its CloudStack id
        {"host": "host-014", "vm": vm("bulk-dup-c", 152)},
    ]  # ... and again by name
    run = e2e.run("bulk-provision", requests=asks, canary=1)
    assert run.state_type == "FAILED", run.state_name
    assert "bulk-provision refused, nothing started" in run.message, run.message
    assert "requests[2].host: 'host-014' is also requests[1].host; list each host once" in run.message
    assert children(e2e, run.id) == {}
    assert "refused, nothing started" in report(e2e, run.id)
    for h in ("host-011", "host-014"):
        assert not [ev for ev in e2e.inventory().history.events(h) if ev.operation == "provision"], h
        assert_idle(e2e, h)


def test_a_canary_failing_before_its_milestone_stops_the_bulk(e2e, hosts):
    """The canary's switch rejects every login: its provision fails at its first switch
    step and rolls back; the two other hosts never start."""
    canary = "host-011"
    switch = spec(e2e, canary)["nics"][0]["switch"]
    asks = [{"host": h, "vm": vm(f"bulk-abort-{i}", 160 + i)} for i, h in enumerate(HOSTS[:3])]
    e2e.lab.control("POST", f"/faults/switch/{switch}", {"mode": "reject_login", "count": 50})
    try:
        run = e2e.run("bulk-provision", requests=asks, canary=1, wave_size=25, max_failures=3)
    finally:
        e2e.lab.reset_faults()
    assert run.state_type == "FAILED", run.state_name
    assert run.name == "bulk-provision 3 hosts (host-011 … host-013)"
    expected = (
        "1 of 3 hosts failed, 2 not started (aborted after 1 failure: canary host-011 failed before "
        "its milestone); 0 provisioned"
    )
    assert expected in run.message, run.message

    kids = children(e2e, run.id)
    assert list(kids) == [canary], "only the canary may have started"
    child = kids[canary]
    assert child["state"]["type"] == "FAILED" and "rolled back" in child["state"]["message"], child["state"]
    assert_idle(e2e, canary)
    for h in HOSTS[1:3]:
        assert not [ev for ev in e2e.inventory().history.events(h) if ev.operation == "provision"], h

    md = report(e2e, run.id)
    for h in HOSTS[1:3]:
        row = next(line for line in md.splitlines() if line.startswith(f"| {h} |"))
        assert "not started (aborted after 1 failure" in row, row
    assert "| host-011 | bulk-abort-0 | canary | failed:" in md


def test_a_bulk_of_three_in_waves_behind_a_canary(e2e, hosts):
    """Canary host-011, then host-012 and host-013 in waves of one: every wave starts after
    the previous one passed its milestone (MAAS accepted the deploy), not after it ended."""
    asks = [{"host": h, "vm": vm(f"bulk-ok-{i}", 170 + i)} for i, h in enumerate(HOSTS[:3])]
    run = e2e.run("bulk-provision", requests=asks, canary=1, wave_size=1, max_failures=0)
    assert run.ok, run.message
    assert run.name == "bulk-provision 3 hosts (host-011 … host-013)"
    assert "3 of 3 hosts provisioned" in run.message

    for a in asks:
        m = e2e.maas().machine(e2e.inventory().hosts.get(a["host"]).maas_system_id)
        assert (m.status.name, m.hostname) == ("DEPLOYED", a["vm"]["name"])
        assert [p["untagged"] for p in e2e.lab.host(a["host"])["ports"]] == [a["vm"]["nics"][0]["vlan"]] * len(
            e2e.lab.host(a["host"])["ports"]
        )

    kids = children(e2e, run.id)
    assert sorted(kids) == list(HOSTS[:3])
    for a in asks:
        child = kids[a["host"]]
        assert child["state"]["type"] == "COMPLETED"
        assert child["name"] == f"provision {a['host']} → {a['vm']['name']}"
        assert task_run(e2e, child["parent_task_run_id"])["flow_run_id"] == run.id  # a subflow of the bulk
        # Its steps ran inline (the bulk's default): no task run each, every one journaled
        # under the child's own run, which is what the milestone gate reads.
        steps = e2e.http("POST", "task_runs/filter", {"flow_runs": {"id": {"any_": [child["id"]]}}}).json()
        assert steps == [], [t["name"] for t in steps]
        journaled = {
            ev.step
            for ev in e2e.inventory().history.events(a["host"], limit=500, run_id=child["id"])
            if ev.outcome == "ok"
        }
        assert {"converge-ports", "rename-machine", "deploy-machine", "wait-for-status", "record-vm"} <= journaled, (
            journaled
        )

    # The gate: each wave started after the previous wave's milestone. (That it started
    # before the previous wave ended is a matter of speed: tests/unit/test_bulk.py forces it.)
    c, w1, w2 = (kids[h] for h in HOSTS[:3])
    assert milestone(e2e, "host-011", c["id"]) < when(w1["start_time"])
    assert milestone(e2e, "host-012", w1["id"]) < when(w2["start_time"])

    md = report(e2e, run.id)
    for i, (h, wave) in enumerate(zip(HOSTS[:3], ("canary", "wave 1", "wave 2"))):
        row = next(line for line in md.splitlines() if line.startswith(f"| {h} |"))
        assert f"| bulk-ok-{i} | {wave} | provisioned |" in row and kids[h]["name"] in row, row
    assert "**Totals:** 3 requested, 3 provisioned, 0 failed, 0 not started" in md
