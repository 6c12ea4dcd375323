"""The switch driver over real SSH against the lab's simulated switches (Force10/OS9 and
Cisco IOS): changes with read-back, idempotent reruns, batching, and every fault knob.

Each test uses its own ports, so the module-scoped simulators need no reset between tests
beyond clearing the fault. Addresses: 127.160.0.0/16.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from contextlib import contextmanager

import pytest

from metalflow.integrations.common import Backoff, Secret
from metalflow.integrations.switches import (
    InvalidPort,
    InvalidVlan,
    PortVlans,
    SwitchAuthFailed,
    SwitchCommandFailed,
    SwitchError,
    SwitchSessionLost,
    SwitchUnreachable,
    SwitchVerifyFailed,
    SwitchWrongState,
    connect,
)
from metalflow.integrations.switches.cli import open_netmiko
from metalflow.lab.spec import SwitchSpec, port_name
from metalflow.lab.switch import PortVlans as LabPortVlans
from metalflow.lab.switch import SwitchSim

PASSWORD = "Sw1tch-pa55word"
ENABLE = "En4ble-s3cret"
SSH_PORT = 22 if os.geteuid() == 0 else 10022
SWITCHES = {  # lab dialect -> (rack-config type, address)
    "force10": ("Force10", "127.160.0.1"),
    "cisco_ios": ("CiscoIOS", "127.160.0.2"),
}
FAST = Backoff(first=0.05, factor=2.0, cap=0.2, attempts=4)


class SwitchUnderTest:
    """One simulated switch and how to reach it."""

    def __init__(self, sim: SwitchSim, rack_type: str):
        self.sim = sim
        self.rack_type = rack_type

    def port(self, i: int) -> str:
        return self.sim.spec.ports[i - 1]

    def driver(self, *, password: str = PASSWORD, enable: str = ENABLE, timeout: float = 10, **kw):
        host, port = self.sim.address
        kw.setdefault("busy_backoff", FAST)
        return connect(
            self.rack_type,
            host,
            "admin",
            Secret(password),
            port,
            enable_secret=enable,
            timeout=timeout,
            connect_backoff=FAST,
            **kw,
        )

    def counters(self) -> dict:
        return self.sim.snapshot()["counters"]

    def saved(self) -> bool:
        return self.sim.snapshot()["saved"]

    def state(self, port: str) -> PortVlans:
        v = self.sim.port_vlans(port)
        return PortVlans(v.untagged, frozenset(v.tagged))

    def reset(self, *ports: str) -> None:
        for p in ports:
            self.sim.set_port_vlans(p, LabPortVlans())


@pytest.fixture(scope="module")
def sims():
    started = {}
    try:
        for dialect, (_, address) in SWITCHES.items():
            spec = SwitchSpec(
                name=f"tor-{dialect.replace('_', '-')}",
                dialect=dialect,
                address=address,
                port=SSH_PORT,
                username="admin",
                password=PASSWORD,
                enable_secret=ENABLE,
                ports=tuple(port_name(dialect, i) for i in range(1, 33)),
            )
            sim = SwitchSim(spec)
            sim.start()
            started[dialect] = sim
        yield started
    finally:
        for sim in started.values():
            sim.stop()


@pytest.fixture(params=sorted(SWITCHES))
def sw(request, sims):
    """One simulated switch per dialect (named ``sw``: ``lab`` is the whole-lab fixture)."""
    sim = sims[request.param]
    sim.set_fault("none")
    yield SwitchUnderTest(sim, SWITCHES[request.param][0])
    sim.set_fault("none")


def test_add_and_remove_with_read_back(sw):
    p = sw.port(1)
    sw.reset(p)
    drv = sw.driver()
    steps = [
        (lambda: drv.add_vlan(p, 100, tagged=False), PortVlans(100)),
        (lambda: drv.add_vlan(p, 200, tagged=True), PortVlans(100, frozenset({200}))),
        (lambda: drv.add_vlan(p, 201, tagged=True), PortVlans(100, frozenset({200, 201}))),
        (lambda: drv.remove_vlan(p, 100), PortVlans(None, frozenset({200, 201}))),
        (lambda: drv.remove_vlan(p, 200), PortVlans(None, frozenset({201}))),
        (lambda: drv.remove_vlan(p, 201), PortVlans()),
    ]
    for change, expected in steps:
        change()
        assert drv.port_vlans(p) == expected
        assert sw.state(p) == expected  # the switch's own view, not only our parser's
        assert sw.saved()  # every change was saved


def test_rerun_is_a_no_op(sw):
    p = sw.port(2)
    sw.reset(p)
    drv = sw.driver()
    drv.add_vlan(p, 100, tagged=False)
    drv.add_vlan(p, 200, tagged=True)
    before = sw.counters()
    drv.add_vlan(p, 100, tagged=False)
    drv.add_vlan(p, 200, tagged=True)
    drv.remove_vlan(p, 300)  # not there: nothing to do
    after = sw.counters()
    assert after["config_commands"] == before["config_commands"]
    assert after["saves"] == before["saves"]
    assert sw.state(p) == PortVlans(100, frozenset({200}))


def test_a_batch_is_one_login_and_one_save(sw):
    ports = [sw.port(i) for i in (3, 4, 5, 6)]
    sw.reset(*ports)
    drv = sw.driver()
    before = sw.counters()
    with drv.session() as s:
        for p in ports:
            s.remove_vlan(p, 10)  # a PXE VLAN that is not there
            s.add_vlan(p, 100, tagged=False)
            s.add_vlan(p, 200, tagged=True)
        s.remove_vlan(ports[0], 200)
        assert s.port_vlans(ports[0]) == PortVlans(100)
        assert drv.port_vlans(ports[1]) == PortVlans(100, frozenset({200}))  # uses the open session
    after = sw.counters()
    assert after["logins"] - before["logins"] == 1
    assert after["sessions"] - before["sessions"] == 1
    assert after["saves"] - before["saves"] == 1
    assert len(s.applied) == 9 and s.saved
    assert sw.state(ports[0]) == PortVlans(100)
    for p in ports[1:]:
        assert sw.state(p) == PortVlans(100, frozenset({200}))
    assert sw.saved()


def test_a_dropped_session_reports_what_was_applied_and_a_rerun_converges(sw):
    p7, p8, p9 = sw.port(7), sw.port(8), sw.port(9)
    sw.reset(p7, p8, p9)
    drv = sw.driver()
    plan = [(p7, 100, False), (p7, 200, True), (p8, 100, False), (p9, 200, True)]
    # Each add sends 3 or 4 configuration lines: the 6th line is inside the second change.
    sw.sim.set_fault("drop_session", after=5)
    with pytest.raises(SwitchSessionLost) as ei:
        with drv.session() as s:
            for port, vlan, tagged in plan:
                s.add_vlan(port, vlan, tagged)
    e = ei.value
    assert e.transient and len(e.applied) == 1 and e.applied[0].startswith("add VLAN 100 untagged on ")
    assert "not saved" in str(e)
    assert sw.state(p7).untagged == 100 and not sw.saved()  # in the running config only
    assert sw.counters()["drops"] >= 1
    with drv.session(force_save=True) as s:  # the rerun: every change reads first
        for port, vlan, tagged in plan:
            s.add_vlan(port, vlan, tagged)
    assert [x.split(" on ")[0] for x in s.applied] == [
        "add VLAN 200 tagged",
        "add VLAN 100 untagged",
        "add VLAN 200 tagged",
    ]
    assert sw.state(p7) == PortVlans(100, frozenset({200}))
    assert sw.state(p8) == PortVlans(100)
    assert sw.state(p9) == PortVlans(None, frozenset({200}))
    assert sw.saved()


def test_a_rejected_login_fails_at_once_without_retries(sw):
    sw.sim.set_fault("reject_login", count=3)
    before = sw.counters()
    with pytest.raises(SwitchAuthFailed) as ei:
        sw.driver().port_vlans(sw.port(1))
    after = sw.counters()
    assert after["login_failures"] - before["login_failures"] == 1  # one try, no retry
    assert after["logins"] == before["logins"]
    assert not ei.value.transient and "rejected" in str(ei.value)


def test_a_wrong_enable_secret_is_an_auth_failure(sw):
    with pytest.raises(SwitchAuthFailed, match="enable secret"):
        sw.driver(enable="not-the-secret").port_vlans(sw.port(1))


def test_a_wrong_read_back_is_caught(sw):
    p = sw.port(10)
    sw.reset(p)
    # The next two show commands (the read before and the read after the change) report the
    # configuration as it was before the last change: the change seems not to have happened.
    sw.sim.set_fault("wrong_readback", count=2)
    with pytest.raises(SwitchVerifyFailed) as ei:
        sw.driver().add_vlan(p, 100, tagged=False)
    e = ei.value
    assert e.expected == PortVlans(100) and e.observed == PortVlans()
    assert e.port in str(e) and "expected" in str(e)
    assert sw.state(p) == PortVlans(100)
    assert sw.saved()  # lines were sent: running and startup still agree
    sw.driver().add_vlan(p, 100, tagged=False)  # a rerun reads the truth and has nothing to do


def test_a_busy_switch_is_retried(sw):
    p = sw.port(12)
    sw.reset(p)
    drv = sw.driver()
    lines = len(drv.dialect.commands_for("add", p, 100, tagged=True))
    sw.sim.set_fault("busy", count=2)
    before = sw.counters()
    drv.add_vlan(p, 100, tagged=True)
    assert sw.state(p) == PortVlans(None, frozenset({100}))
    assert sw.counters()["config_commands"] - before["config_commands"] == lines + 2  # two refused


def test_a_switch_that_stays_busy_gives_a_transient_error_with_the_line(sw):
    p = sw.port(13)
    sw.reset(p)
    drv = sw.driver(busy_backoff=Backoff(first=0.05, cap=0.05, attempts=2))
    sw.sim.set_fault("busy", count=50)
    with pytest.raises(SwitchCommandFailed) as ei:
        drv.add_vlan(p, 100, tagged=False)
    e = ei.value
    assert e.transient and e.line == drv.dialect.commands_for("add", p, 100, tagged=False)[0]
    assert "locked" in e.evidence
    assert sw.state(p) == PortVlans()


def test_bad_input_never_reaches_the_switch(sw):
    drv = sw.driver()
    before = sw.counters()
    for call in (
        lambda: drv.add_vlan(sw.port(1) + "\nreload", 100, tagged=False),
        lambda: drv.add_vlan(sw.port(1) + ";reload", 100, tagged=False),
        lambda: drv.add_vlan("Po1", 100, tagged=True),
        lambda: drv.port_vlans(""),
    ):
        with pytest.raises(InvalidPort):
            call()
    for vlan in (1, 0, 4095):
        with pytest.raises(InvalidVlan):
            drv.add_vlan(sw.port(1), vlan, tagged=False)
    after = sw.counters()
    assert (after["logins"], after["login_failures"], after["commands"]) == (
        before["logins"],
        before["login_failures"],
        before["commands"],
    )


def test_an_untagged_vlan_is_not_replaced_silently(sw):
    p = sw.port(14)
    sw.sim.set_port_vlans(p, LabPortVlans(10))  # the PXE VLAN, still on the port
    before = sw.counters()
    with pytest.raises(SwitchWrongState, match="untagged in VLAN 10"):
        sw.driver().add_vlan(p, 100, tagged=False)
    assert sw.counters()["config_commands"] == before["config_commands"]
    assert sw.state(p) == PortVlans(10)


def test_a_port_the_switch_does_not_have_is_a_fatal_command_error(sw):
    p = "1/1/99" if sw.sim.spec.dialect == "force10" else "GigabitEthernet1/0/99"
    with pytest.raises(SwitchCommandFailed) as ei:
        sw.driver().add_vlan(p, 100, tagged=True)
    assert not ei.value.transient and p.split()[-1][-6:] in ei.value.line  # the offending line


def test_a_silent_switch_gives_up_within_the_deadline(sw):
    p = sw.port(15)
    sw.reset(p)
    drv = sw.driver(timeout=1.0)
    with drv.session() as s:
        assert s.port_vlans(p) == PortVlans()
        sw.sim.set_fault("slow", delay=6.0)
        start = time.monotonic()
        with pytest.raises(SwitchSessionLost, match="did not answer"):
            s.add_vlan(p, 100, tagged=True)
        assert time.monotonic() - start < 6.0  # gave up before the switch answered
        sw.sim.set_fault("none")


@pytest.mark.parametrize(
    "dialect,question,answer",
    [
        ("force10", r"\[confirm yes/no\]", "yes"),
        ("cisco_ios", r"Destination filename \[startup-config\]\?", ""),
    ],
)
def test_a_question_is_answered_over_ssh(sims, dialect, question, answer):
    sim = sims[dialect]
    sim.set_fault("none")
    host, port = sim.address
    rack = SWITCHES[dialect][0]
    from metalflow.integrations.switches import dialect_for

    d = dialect_for(rack)
    cli = open_netmiko(
        d.netmiko_class, d.netmiko_device_type, host, port, "admin", Secret(PASSWORD), Secret(ENABLE), 10
    )
    try:
        saves = sim.snapshot()["counters"]["saves"]
        cli.send("copy running-config startup-config", timeout=10, confirm=(question, answer))
        assert sim.snapshot()["counters"]["saves"] == saves + 1
        assert cli.prompt.endswith("#")
    finally:
        cli.close()


def test_no_secret_in_any_error(sw):
    errors: list[BaseException] = []

    def collect(call):
        try:
            call()
        except SwitchError as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected a failure")

    p = sw.port(16)
    sw.reset(p)
    collect(lambda: sw.driver(password="wrong-" + PASSWORD).port_vlans(p))
    collect(lambda: sw.driver(enable=ENABLE + "-wrong").port_vlans(p))
    sw.sim.set_fault("wrong_readback", count=2)
    collect(lambda: sw.driver().add_vlan(p, 100, tagged=True))
    sw.sim.set_fault("busy", count=50)
    collect(lambda: sw.driver(busy_backoff=Backoff(first=0.01, cap=0.01, attempts=1)).add_vlan(p, 200, tagged=True))
    sw.sim.set_fault("drop_session", after=0)
    collect(lambda: sw.driver().add_vlan(p, 300, tagged=True))
    sw.sim.set_fault("none")
    assert [type(e).__name__ for e in errors] == [
        "SwitchAuthFailed",
        "SwitchAuthFailed",
        "SwitchVerifyFailed",
        "SwitchCommandFailed",
        "SwitchSessionLost",
    ]
    for exc in errors:
        text = str(exc) + repr(exc) + "".join(traceback.format_exception(exc)) + repr(vars(exc))
        for secret in (PASSWORD, ENABLE, "wrong-" + PASSWORD, ENABLE + "-wrong"):
            assert secret not in text, f"{type(exc).__name__} shows a secret"
        assert sw.sim.address[0] in str(exc)  # but it does say which switch


def test_a_refused_connection_is_retried_then_reported_unreachable():
    # Nothing listens on this address: every attempt is refused at once.
    drv = connect(
        "Force10",
        "127.160.0.250",
        "admin",
        Secret(PASSWORD),
        SSH_PORT,
        timeout=10,
        connect_backoff=Backoff(first=0.01, cap=0.02, attempts=3),
    )
    with pytest.raises(SwitchUnreachable) as ei:
        drv.port_vlans("1/1/1")
    e = ei.value
    assert e.transient and "3 attempt(s)" in str(e) and "127.160.0.250" in str(e)
    assert PASSWORD not in str(e)


def test_a_silent_listener_gives_up_within_the_deadline():
    """A TCP listener that never sends an SSH banner (a hung switch): the connect gives up at
    the operation deadline with SwitchUnreachable."""
    with socket.socket() as silent:
        silent.bind(("127.160.0.251", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever speaks
        drv = connect(
            "CiscoIOS",
            "127.160.0.251",
            "admin",
            Secret(PASSWORD),
            silent.getsockname()[1],
            timeout=1.0,
            connect_backoff=Backoff(first=0.05, cap=0.05, attempts=5),
        )
        start = time.monotonic()
        with pytest.raises(SwitchUnreachable) as ei:
            drv.port_vlans("GigabitEthernet1/0/1")
        assert time.monotonic() - start < 8.0  # bounded by our deadline, not netmiko's defaults
        assert ei.value.transient


# --- the group commit (integrations.switches.batch.SwitchBatch) over real SSH ----------------------------


def converge_at_once(sw, requests: dict[str, list]) -> tuple[dict[str, object], dict[str, int]]:
    """Each request converged from its own thread, as the runs of ``metalflow serve`` do, all
    queued before the first session opens. What each got (its lines, or its error) by host,
    and how the switch's counters moved."""
    from metalflow.integrations.switches.batch import SwitchBatches
    from metalflow.tasks.switches import converge_switch

    batches = SwitchBatches()
    batch = batches.of(sw.sim.spec.name)
    drv = sw.driver()
    all_queued = threading.Event()

    @contextmanager
    def open_session(force_save=False):
        assert all_queued.wait(10)
        with drv.session(force_save=force_save) as s:
            yield s

    results: dict[str, object] = {}

    def run(host: str, targets: list) -> None:
        try:
            results[host] = converge_switch(sw.sim.spec.name, host, targets, open_session, batches=batches, wait=30)
        except Exception as exc:  # noqa: BLE001 - recorded, asserted by the test
            results[host] = exc

    before = sw.counters()
    threads = [threading.Thread(target=run, args=item, name=item[0]) for item in requests.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while batch.pending < len(requests):
        assert time.monotonic() < deadline, "the requests were not all queued"
        time.sleep(0.01)
    all_queued.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{t.name} is still waiting"
    after = sw.counters()
    return results, {k: after[k] - before[k] for k in ("sessions", "saves", "drops")}


def test_runs_converging_at_once_share_one_session(sw):
    from metalflow.integrations.switches.batch import PortTarget

    name = sw.sim.spec.name
    ports = {f"host-{i}": sw.port(16 + i) for i in range(1, 9)}
    for p in ports.values():
        sw.sim.set_port_vlans(p, LabPortVlans(10))  # on the PXE VLAN
    requests = {h: [PortTarget(name, p, 100 + i, (200,))] for i, (h, p) in enumerate(ports.items(), 1)}
    results, moved = converge_at_once(sw, requests)

    assert moved == {"sessions": 1, "saves": 1, "drops": 0}  # 8 requests, one session, one save
    for i, (h, p) in enumerate(ports.items(), 1):
        assert sw.state(p) == PortVlans(100 + i, frozenset({200}))  # the switch's own view
        sent = results[h]
        assert isinstance(sent, list) and sent and all(line.startswith(f"{name}: ") for line in sent), sent
        others = [q for q in ports.values() if q != p]
        assert any(p in line for line in sent) and not any(q in line for line in sent for q in others), sent
    assert sw.saved()


def test_a_refused_port_fails_its_run_only_and_the_session_goes_on(sw):
    from metalflow.integrations.switches.batch import PortTarget

    name = sw.sim.spec.name
    missing = "1/1/99" if sw.sim.spec.dialect == "force10" else "GigabitEthernet1/0/99"
    good = {"host-1": sw.port(25), "host-3": sw.port(26)}
    sw.reset(*good.values())
    requests = {
        "host-1": [PortTarget(name, good["host-1"], 101)],
        "host-2": [PortTarget(name, missing, 102)],  # a port the switch does not have
        "host-3": [PortTarget(name, good["host-3"], 103)],
    }
    results, moved = converge_at_once(sw, requests)

    assert isinstance(results["host-2"], SwitchCommandFailed) and not results["host-2"].transient
    assert moved["sessions"] == 1 and moved["saves"] == 1
    assert sw.state(good["host-1"]) == PortVlans(101) and sw.state(good["host-3"]) == PortVlans(103)
    assert isinstance(results["host-1"], list) and isinstance(results["host-3"], list)


def test_a_dropped_session_fails_the_runs_it_took_and_the_others_get_a_new_one(sw):
    from metalflow.integrations.switches.batch import PortTarget

    name = sw.sim.spec.name
    ports = {f"host-{i}": sw.port(26 + i) for i in range(1, 5)}
    sw.reset(*ports.values())
    requests = {h: [PortTarget(name, p, 100 + i)] for i, (h, p) in enumerate(ports.items(), 1)}
    sw.sim.set_fault("drop_session", after=0)  # the first configuration line: host-1's change
    results, moved = converge_at_once(sw, requests)

    assert moved == {"sessions": 2, "saves": 1, "drops": 1}
    assert isinstance(results["host-1"], SwitchSessionLost) and results["host-1"].transient
    assert sw.state(ports["host-1"]) == PortVlans()  # the dropped line was not applied
    for i, h in enumerate(ports, 1):
        if h != "host-1":
            assert isinstance(results[h], list), results[h]
            assert sw.state(ports[h]) == PortVlans(100 + i)
