"""bulk-provision's pure parts: the request check and wave plan, and the gating of the waves
(canary, milestone pipelining, abort threshold, milestone deadline) with stand-in hosts.

The stand-ins replace the provision subflow and the journal: each is a thread that passes its
milestone or ends only when the test says so, so every ordering below is forced by events,
not by timing. (The real subflows, journal and Prefect links are tested in tests/e2e.)"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from metalflow.flows.bulk import (
    CANARY,
    FAILED,
    NOT_STARTED,
    PASSED,
    TIMED_OUT,
    BulkRefused,
    Outcome,
    Waves,
    describe_hosts,
    plan_bulk,
)
from metalflow.flows.models import BulkItem

WAIT = 10.0  # a bound on every event wait below: only reached when the logic under test is wrong


def item(host: str, name: str | None = None, uuid: str | None = None) -> BulkItem:
    name = name or f"vm-{host}"
    return BulkItem(
        host=host,
        vm={
            "name": name,
            "uuid": uuid or f"uuid-{name}",
            "image": "ubuntu/jammy",
            "nics": [{"vlan": 100, "default": True}],
        },
    )


@dataclass
class FakeHost:
    name: str
    maas_system_id: str | None = "abc123"
    maintenance: bool = False
    maintenance_reason: str | None = None


def lookup(table: dict[str, FakeHost]):
    return lambda key: table.get(key)


# --- the request check ------------------------------------------------------------------------


def test_plan_groups_canary_then_waves():
    items = [item(f"h{i}") for i in range(7)]
    plan = plan_bulk(items, canary=1, wave_size=3, max_failures=2)
    assert [(label, [i.host for i in g]) for label, g in plan.groups] == [
        (CANARY, ["h0"]),
        ("wave 1", ["h1", "h2", "h3"]),
        ("wave 2", ["h4", "h5", "h6"]),
    ]
    plan = plan_bulk(items[:2], canary=0, wave_size=25)
    assert [label for label, _ in plan.groups] == ["wave 1"]


def test_hosts_are_canonicalised_and_a_host_named_twice_is_refused():
    table = {"host-011": FakeHost("host-011"), "1011": FakeHost("host-011"), "host-012": FakeHost("host-012")}
    plan = plan_bulk([item("1011", "a"), item("host-012", "b")], lookup=lookup(table))
    assert [i.host for i in plan.items] == ["host-011", "host-012"]
    with pytest.raises(BulkRefused) as err:
        plan_bulk([item("host-011", "a"), item("1011", "b")], lookup=lookup(table))
    msg = str(err.value)
    assert msg.startswith("bulk-provision refused, nothing started")
    assert "requests[1].host: 'host-011' is also requests[0].host; list each host once" in msg


@pytest.mark.parametrize(
    "requests, kwargs, fragments",
    [
        ([], {}, ["requests: empty"]),
        ([item("a")], {"canary": 2}, ["canary: 2 is out of range; use 0 to 1"]),
        ([item("a")], {"canary": -1}, ["canary: -1"]),
        ([item("a")], {"wave_size": 0}, ["wave_size: 0 is out of range; use 1 or more"]),
        ([item("a")], {"max_failures": -1}, ["max_failures: -1 is out of range; use 0 or more"]),
        ([item("a")], {"milestone_timeout": 0}, ["milestone_timeout: 0"]),
        ([item("a", "x"), item("b", "x")], {}, ["requests[1].vm.name: 'x' is also requests[0].vm.name"]),
        ([item("a", "x", "u"), item("b", "y", "u")], {}, ["requests[1].vm.uuid: 'u' is also requests[0].vm.uuid"]),
        # every problem at once, not the first only
        (
            [item("a", "x"), item("a", "x")],
            {"wave_size": 0},
            ["wave_size: 0", "requests[1].host", "requests[1].vm.name"],
        ),
    ],
)
def test_bad_requests_are_refused_naming_the_field(requests, kwargs, fragments):
    with pytest.raises(BulkRefused) as err:
        plan_bulk(requests, **kwargs)
    for f in fragments:
        assert f in str(err.value), str(err.value)


def test_unknown_unregistered_and_maintenance_hosts_are_refused():
    table = {
        "b": FakeHost("b", maas_system_id=None),
        "c": FakeHost("c", maintenance=True, maintenance_reason="BMC silent"),
    }
    with pytest.raises(BulkRefused) as err:
        plan_bulk([item("a"), item("b"), item("c")], lookup=lookup(table))
    msg = str(err.value)
    assert "requests[0].host: 'a' is not in the inventory" in msg
    assert "requests[1].host: b is not registered in MAAS; run register-host first" in msg
    assert "requests[2].host: c is in maintenance (BMC silent)" in msg


def test_bulk_item_is_exactly_provisions_parameters():
    with pytest.raises(ValidationError, match="extra"):
        BulkItem(host="a", vm=item("a").vm, erase="quick")
    with pytest.raises(ValidationError, match="vm.name"):
        BulkItem(host="a", vm={"name": "Bad_Name", "uuid": "u", "image": "i", "nics": [{"vlan": 5, "default": True}]})


def test_describe_hosts():
    assert describe_hosts(["host-011"]) == "1 host (host-011)"
    assert describe_hosts(["a", "b"]) == "2 hosts (a, b)"
    assert describe_hosts([f"host-{i:03d}" for i in range(11, 61)]) == "50 hosts (host-011 … host-060)"


# --- the waves --------------------------------------------------------------------------------


class Lab:
    """Stand-in hosts: ``pass_milestone(h)`` and ``finish(h, ok)`` drive each one; the log
    records the order of starts, milestones and ends as the Waves saw them."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=16)
        self.milestones: dict[str, datetime] = {}
        self.ends: dict[str, threading.Event] = {}
        self.results: dict[str, bool] = {}
        self.started: list[str] = []
        self.started_event = threading.Condition()

    def start(self, r):
        host = r.host
        self.ends[host] = threading.Event()
        with self.started_event:
            self.started.append(host)
            self.started_event.notify_all()

        def body() -> Outcome:
            assert self.ends[host].wait(WAIT), f"{host} was never finished by the test"
            ok = self.results[host]
            return Outcome(ok, "done" if ok else "boom", f"child-{host}")

        return self.pool.submit(body)

    def milestone(self, r):
        return self.milestones.get(r.host)

    def wait_started(self, host: str) -> None:
        with self.started_event:
            assert self.started_event.wait_for(lambda: host in self.started, WAIT), f"{host} never started"

    def pass_milestone(self, host: str) -> None:
        self.milestones[host] = datetime.now(UTC)

    def finish(self, host: str, ok: bool = True) -> None:
        self.results[host] = ok
        self.ends[host].set()


class Log:
    """A logger that lets a test wait for a message."""

    def __init__(self):
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def _add(self, msg, *args):
        with self.changed:
            self.lines.append(msg % args)
            self.changed.notify_all()

    info = warning = error = _add

    def wait_for(self, fragment: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(fragment in line for line in self.lines), WAIT), self.lines


def run_in_background(waves: Waves):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("result", waves.run()), daemon=True)
    t.start()
    return t, box


def finished(t, box):
    t.join(WAIT)
    assert not t.is_alive(), "the bulk did not end"
    return box["result"]


def test_waves_are_pipelined_on_the_milestone_not_on_completion():
    lab = Lab()
    plan = plan_bulk([item(h) for h in ("c", "w1", "w2", "x1")], canary=1, wave_size=2, max_failures=0)
    t, box = run_in_background(Waves(plan, lab.start, lab.milestone, poll=0.01))
    lab.wait_started("c")
    assert lab.started == ["c"]
    lab.pass_milestone("c")  # the canary is still running: the first wave starts anyway
    lab.wait_started("w1")
    lab.wait_started("w2")
    assert lab.started[:3] == ["c", "w1", "w2"] and "x1" not in lab.started
    lab.pass_milestone("w1")
    lab.finish("w2", ok=True)  # ended without a milestone (case A) also passes the gate
    lab.wait_started("x1")
    lab.pass_milestone("x1")
    for h in ("c", "w1", "x1"):
        lab.finish(h)
    result = finished(t, box)
    assert result.summary() == "4 of 4 hosts provisioned" and not result.aborted
    assert [r.gate for r in result.runs] == [PASSED] * 4
    assert all(r.outcome.ok and r.outcome.child_id == f"child-{r.host}" for r in result.runs)


def test_a_canary_failing_before_its_milestone_starts_nothing_else():
    lab = Lab()
    plan = plan_bulk([item(h) for h in ("c", "a", "b")], canary=1, wave_size=25, max_failures=5)
    t, box = run_in_background(Waves(plan, lab.start, lab.milestone, poll=0.01))
    lab.wait_started("c")
    lab.finish("c", ok=False)
    result = finished(t, box)
    assert lab.started == ["c"]
    assert [r.gate for r in result.runs] == [FAILED, NOT_STARTED, NOT_STARTED]
    assert result.aborted == "aborted after 1 failure: canary c failed before its milestone"
    assert result.summary() == (
        "1 of 3 hosts failed, 2 not started (aborted after 1 failure: canary c failed "
        "before its milestone); 0 provisioned"
    )


def test_a_canary_failing_after_its_milestone_counts_toward_the_threshold():
    lab, log = Lab(), Log()
    plan = plan_bulk([item(h) for h in ("c", "a", "b")], canary=1, wave_size=1, max_failures=0)
    t, box = run_in_background(Waves(plan, lab.start, lab.milestone, poll=0.01, log=log))
    lab.wait_started("c")
    lab.pass_milestone("c")
    lab.wait_started("a")
    lab.finish("c", ok=False)  # after its milestone: wave 1 already runs; 1 failure > 0
    log.wait_for("c (canary) failed")  # seen by the bulk before wave 1 passes its gate
    lab.pass_milestone("a")
    lab.finish("a")
    result = finished(t, box)
    assert lab.started == ["c", "a"]
    assert [r.gate for r in result.runs] == [PASSED, PASSED, NOT_STARTED]
    assert result.aborted == "aborted after 1 failure"
    assert result.count() == (1, 1, 1)


def test_failures_above_the_threshold_stop_further_waves_running_hosts_finish():
    lab = Lab()
    hosts = ["c", "a", "b", "d", "e"]
    plan = plan_bulk([item(h) for h in hosts], canary=1, wave_size=2, max_failures=1)
    t, box = run_in_background(Waves(plan, lab.start, lab.milestone, poll=0.01))
    lab.wait_started("c")
    lab.pass_milestone("c")
    lab.wait_started("b")
    lab.finish("a", ok=False)
    lab.finish("b", ok=False)  # 2 failures > 1: wave 2 (d, e) never starts
    lab.finish("c")
    result = finished(t, box)
    assert lab.started == ["c", "a", "b"]
    assert result.aborted == "aborted after 2 failures"
    assert [r.gate for r in result.runs][3:] == [NOT_STARTED, NOT_STARTED]
    assert result.count() == (1, 2, 2)


def test_a_host_stuck_before_its_milestone_counts_as_failed_for_gating():
    """The milestone deadline: the canary neither passes nor ends within its budget, so
    nothing else starts; its own run goes on and its real outcome is reported."""
    lab, log = Lab(), Log()
    plan = plan_bulk([item(h) for h in ("c", "a")], canary=1, max_failures=3, milestone_timeout=0.05)
    t, box = run_in_background(Waves(plan, lab.start, lab.milestone, poll=0.01, log=log))
    log.wait_for("c did not reach its milestone")  # while the canary still runs
    assert lab.started == ["c"]
    lab.finish("c", ok=True)
    result = finished(t, box)
    assert lab.started == ["c"]
    assert result.runs[0].gate == TIMED_OUT and result.runs[0].outcome.ok
    assert result.aborted == "aborted after 1 failure: canary c failed before its milestone"


def test_one_of_two_canaries_failing_stops_the_bulk_without_waiting_for_the_other():
    lab = Lab()
    plan = plan_bulk([item(h) for h in ("c1", "c2", "a")], canary=2, max_failures=3)
    t, box = run_in_background(Waves(plan, lab.start, lab.milestone, poll=0.01))
    lab.wait_started("c2")
    lab.finish("c1", ok=False)
    # c2 still runs: the bulk has decided (nothing else starts) and waits only for it to end
    lab.pass_milestone("c2")
    lab.finish("c2")
    result = finished(t, box)
    assert lab.started == ["c1", "c2"]
    assert result.aborted == "aborted after 1 failure: canary c1 failed before its milestone"
    assert result.count() == (1, 1, 1)
