"""The group commit on a switch (``integrations.switches.batch.SwitchBatch``): its concurrency logic, with
threads of this process as the runs of ``metalflow serve``.

The switch here is a small in-memory fake (``FakeSwitch``) injected as the session opener:
that is deliberate, and only acceptable because this file tests the batch's own logic (who
leads, what shares a session, who gets which outcome, that no thread is left waiting). The
driver's part (read, change, verify, save over SSH) is tested against the lab's simulated
switches in tests/integrations/test_switches_lab.py, including the batch over real sockets.

Arrival order is made deterministic: each request is submitted once the one before is queued,
and the first session is held closed (``gate``) until every request of the test is queued."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

from metalflow.integrations.switches import PortVlans, SwitchCommandFailed, SwitchSessionLost
from metalflow.integrations.switches.batch import PortTarget, SessionAbandoned, SwitchBatches, SwitchOutcome
from metalflow.tasks.common import is_transient
from metalflow.tasks.switches import converge_switch

SW = "tor-1"
PXE = 10


def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def port(i: int) -> str:
    return f"1/1/{i}"


def target(i: int) -> PortTarget:
    """Host i's port: off the PXE VLAN, onto its own guest VLAN 100 + i."""
    return PortTarget(SW, port(i), 100 + i)


def lines(i: int) -> tuple[str, ...]:
    return (f"{port(i)} remove {PXE}", f"{port(i)} add {100 + i} untagged")


class FakeSwitch:
    """A switch in memory: the ports' VLANs, one record per session (the thread that opened
    it), the saves. Faults: a port whose change is refused, a port at whose read the session
    is lost, a port at whose read the leader is interrupted, a refused save; ``gate`` holds
    sessions from opening, ``stall`` holds the change of port ``stall_at`` (and its session)."""

    def __init__(self) -> None:
        self.ports: dict[str, PortVlans] = defaultdict(lambda: PortVlans(PXE))
        self.sessions: list[str] = []
        self.forced: list[bool] = []  # each session's force_save
        self.saves = 0
        self.refuse: set[str] = set()
        self.drop_at: str | None = None
        self.interrupt_at: str | None = None
        self.save_error: Exception | None = None
        self.stall_at: str | None = None
        self.gate = threading.Event()
        self.stall = threading.Event()

    @contextmanager
    def session(self, force_save: bool = False):
        assert self.gate.wait(10), "the test never opened the gate"
        self.sessions.append(threading.current_thread().name)
        self.forced.append(force_save)
        s = FakeSession(self)
        yield s
        if s.commands or force_save:
            if self.save_error is not None:
                raise self.save_error
            self.saves += 1


class FakeSession:
    def __init__(self, switch: FakeSwitch):
        self.sw = switch
        self.commands: list[str] = []
        self.lost = False

    def port_vlans(self, p: str) -> PortVlans:
        if self.lost or p == self.sw.drop_at:
            self.lost = True
            raise SwitchSessionLost("the session was lost", target=f"{SW} port {p}")
        if p == self.sw.interrupt_at:
            raise KeyboardInterrupt
        return self.sw.ports[p]

    def remove_vlan(self, p: str, vlan: int) -> None:
        self.commands.append(f"{p} remove {vlan}")
        self.sw.ports[p] = self.sw.ports[p].with_removed(vlan)

    def add_vlan(self, p: str, vlan: int, tagged: bool) -> None:
        self.commands.append(f"{p} add {vlan} {'tagged' if tagged else 'untagged'}")
        if p == self.sw.stall_at:
            assert self.sw.stall.wait(10)
        if p in self.sw.refuse:
            raise SwitchCommandFailed(
                "the switch refused the line", target=f"{SW} port {p}", line=self.commands[-1], transient=False
            )
        self.sw.ports[p] = self.sw.ports[p].with_added(vlan, tagged)


class Runs:
    """Requests submitted from threads named after their host, in a fixed order; each
    thread's outcome, or what it raised, by host."""

    def __init__(self, fake: FakeSwitch, **options):
        self.fake = fake
        self.batches = SwitchBatches(**options)
        self.batch = self.batches.of(SW)
        self.results: dict[str, object] = {}
        self.threads: list[threading.Thread] = []

    def submit(self, i: int, *, wait: float = 10.0, via_task: bool = False) -> None:
        host = f"host-{i}"

        def run() -> None:
            try:
                if via_task:
                    self.results[host] = converge_switch(
                        SW, host, [target(i)], self.fake.session, batches=self.batches, wait=wait
                    )
                else:
                    self.results[host] = self.batch.submit(host, [target(i)], self.fake.session, wait)
            except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt included: recorded
                self.results[host] = exc

        queued = self.batch.pending
        t = threading.Thread(target=run, name=host, daemon=True)
        t.start()
        self.threads.append(t)
        wait_until(lambda: self.batch.pending == queued + 1)

    def submit_all(self, n: int, **kw) -> None:
        for i in range(1, n + 1):
            self.submit(i, **kw)

    def finish(self) -> dict[str, object]:
        self.fake.gate.set()
        for t in self.threads:
            t.join(10)
            assert not t.is_alive(), f"{t.name} is still waiting"
        assert self.batch.pending == 0
        return self.results

    def outcome(self, i: int) -> SwitchOutcome:
        out = self.results[f"host-{i}"]
        assert isinstance(out, SwitchOutcome), out
        return out


def test_requests_that_overlap_share_one_session_and_each_gets_its_own_lines(caplog):
    caplog.set_level(logging.INFO, logger="metalflow")
    fake = FakeSwitch()
    runs = Runs(fake)
    runs.submit_all(8, via_task=True)
    results = runs.finish()

    assert fake.sessions == ["host-1"] and fake.saves == 1  # one session, led by the first
    for i in range(1, 9):
        assert results[f"host-{i}"] == [f"{SW}: {line}" for line in lines(i)]  # its own lines only
        assert fake.ports[port(i)] == PortVlans(100 + i)
    # Each run logs its own ports, in its own thread; the leader says whom it served.
    for i in range(1, 9):
        line = f"{SW} {port(i)}: remove 10 untagged, add {100 + i} untagged"
        mine = [r for r in caplog.records if r.getMessage() == line]
        assert [r.threadName for r in mine] == [f"host-{i}"]
    led = [r for r in caplog.records if "one session for" in r.getMessage()]
    assert [(r.threadName, r.getMessage()) for r in led] == [
        ("host-1", f"switch {SW}: one session for 8 hosts' ports ({', '.join(f'host-{i}' for i in range(1, 9))})")
    ]


def test_a_rerun_sends_nothing_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="metalflow")
    fake = FakeSwitch()
    fake.ports[port(1)] = PortVlans(101)
    runs = Runs(fake)
    runs.submit(1, via_task=True)
    assert runs.finish() == {"host-1": []}
    assert fake.saves == 0
    assert f"{SW} {port(1)} already as wanted ({target(1)})" in [r.getMessage() for r in caplog.records]


def test_a_refused_port_fails_only_its_own_request():
    fake = FakeSwitch()
    fake.refuse.add(port(3))
    runs = Runs(fake)
    runs.submit_all(5)
    runs.finish()

    assert len(fake.sessions) == 1 and fake.saves == 1
    failed = runs.outcome(3)
    assert isinstance(failed.error, SwitchCommandFailed) and failed.error.line == lines(3)[1]
    assert failed.commands == lines(3)  # what was sent for it, the refused line included
    assert [p.target.port for p in failed.ports] == []  # its one port did not get done
    for i in (1, 2, 4, 5):
        out = runs.outcome(i)
        assert out.error is None and out.commands == lines(i) and out.hosts == tuple(f"host-{k}" for k in range(1, 6))
        assert fake.ports[port(i)] == PortVlans(100 + i)


def test_a_lost_session_fails_every_request_it_took_and_the_rest_get_a_new_one():
    fake = FakeSwitch()
    fake.drop_at = port(3)  # lost at host-3's read; host-1 and host-2 are done but unsaved
    runs = Runs(fake)
    runs.submit_all(5)
    runs.finish()

    first = tuple(f"host-{i}" for i in (1, 2, 3))
    for i in (1, 2, 3):
        out = runs.outcome(i)
        assert isinstance(out.error, SwitchSessionLost) and is_transient(out.error), out.error
        assert out.hosts == first
    # Each waiting thread raises its own copy (same class, same message), caused by the original.
    original = runs.outcome(1).error  # the leader's
    for i in (2, 3):
        err = runs.outcome(i).error
        assert err is not original and str(err) == str(original) and err.__cause__ is original
    # host-4 and host-5 were still queued: the next session (led by host-4) served them.
    assert fake.sessions == ["host-1", "host-4"] and fake.saves == 1
    for i in (4, 5):
        assert runs.outcome(i).error is None and runs.outcome(i).hosts == ("host-4", "host-5")


def test_after_a_session_lost_with_changes_sent_the_next_session_saves_even_with_nothing_to_send():
    fake = FakeSwitch()
    fake.drop_at = port(2)  # host-1's change is in the running config, unsaved, when it drops
    runs = Runs(fake)
    runs.submit_all(2)
    runs.finish()
    assert isinstance(runs.outcome(1).error, SwitchSessionLost) and fake.saves == 0
    # host-1's retry finds its port right and sends nothing: its session saves all the same.
    fake.drop_at = None
    fake.gate.clear()
    runs.submit(1)
    runs.finish()
    assert runs.outcome(1).error is None and runs.outcome(1).commands == ()
    assert fake.forced == [False, True] and fake.saves == 1
    # Saved: the next session is an ordinary one again.
    fake.gate.clear()
    runs.submit(1)
    runs.finish()
    assert fake.forced == [False, True, False] and fake.saves == 1


def test_a_refused_save_fails_every_request_of_the_session_except_those_already_failed():
    fake = FakeSwitch()
    fake.refuse.add(port(2))
    fake.save_error = SwitchCommandFailed("'write memory' did not report success", target=SW, transient=True)
    runs = Runs(fake)
    runs.submit_all(4)
    runs.finish()

    assert "refused the line" in str(runs.outcome(2).error)  # its own error, not the save's
    for i in (1, 3, 4):
        err = runs.outcome(i).error
        assert isinstance(err, SwitchCommandFailed) and "did not report success" in str(err)
        assert is_transient(err)  # the class and its flag survive, so the step retries it


def test_a_session_that_cannot_open_fails_every_request_waiting_for_it():
    fake = FakeSwitch()
    runs = Runs(fake)

    @contextmanager
    def locked_elsewhere(force_save=False):
        assert fake.gate.wait(10)
        raise TimeoutError(f"switch {SW}: another worker's session held it for 300 s")
        yield  # pragma: no cover

    fake.session = locked_elsewhere
    runs.submit_all(3)
    runs.finish()
    for i in (1, 2, 3):
        err = runs.outcome(i).error
        assert isinstance(err, TimeoutError) and SW in str(err) and is_transient(err)


def test_the_lead_is_handed_over_after_the_cap():
    fake = FakeSwitch()
    runs = Runs(fake, max_requests=3)
    runs.submit_all(7)
    runs.finish()

    assert fake.sessions == ["host-1", "host-4", "host-7"]  # each session led by a different run
    assert fake.saves == 3
    for i in range(1, 8):
        out = runs.outcome(i)
        assert out.error is None and out.commands == lines(i)
        assert out.led == (i in (1, 4, 7))
    assert runs.outcome(5).hosts == ("host-4", "host-5", "host-6")


def test_a_session_takes_no_new_request_after_its_time():
    fake = FakeSwitch()
    runs = Runs(fake, max_seconds=0.0)  # every session ends after its first request
    runs.submit_all(3)
    runs.finish()
    assert fake.sessions == ["host-1", "host-2", "host-3"]
    assert all(runs.outcome(i).error is None for i in (1, 2, 3))


def test_an_interrupted_leader_still_resolves_every_waiter():
    fake = FakeSwitch()
    fake.interrupt_at = port(3)  # KeyboardInterrupt in host-1's thread, at host-3's read
    runs = Runs(fake)
    runs.submit_all(5)
    results = runs.finish()  # no thread is left waiting

    assert isinstance(results["host-1"], KeyboardInterrupt)  # the leader re-raises it
    for i in (2, 3):
        err = runs.outcome(i).error
        assert isinstance(err, SessionAbandoned) and is_transient(err)
        assert SW in str(err) and "KeyboardInterrupt in host-1's run" in str(err)
    assert fake.sessions == ["host-1", "host-4"]  # host-4 took the lead for those still queued
    for i in (4, 5):
        assert runs.outcome(i).error is None and fake.ports[port(i)] == PortVlans(100 + i)


def test_a_waiter_gives_up_on_time_and_is_withdrawn_unchanged():
    fake = FakeSwitch()
    runs = Runs(fake)
    runs.submit(1)  # leads, and waits at the gate
    start = time.monotonic()
    runs.submit(2, wait=0.3)
    wait_until(lambda: "host-2" in runs.results)
    assert time.monotonic() - start >= 0.3  # not before its wait ran out (how long after: not asserted)
    err = runs.results["host-2"]
    assert isinstance(err, TimeoutError) and SW in str(err) and "withdrawn unchanged" in str(err)
    assert "led by host-1's run" in str(err)
    assert runs.batch.pending == 1  # host-1's own request only
    runs.finish()
    assert runs.outcome(1).hosts == ("host-1",) and fake.ports[port(2)] == PortVlans(PXE)


def test_a_waiter_whose_session_does_not_end_gives_up_on_time():
    fake = FakeSwitch()
    fake.stall_at = port(2)  # the session stops in the middle of host-2's change
    runs = Runs(fake)
    runs.submit(1)
    runs.submit(2, wait=0.3)
    fake.gate.set()
    wait_until(lambda: "host-2" in runs.results)
    err = runs.results["host-2"]
    assert isinstance(err, TimeoutError) and SW in str(err) and "has not ended" in str(err)
    assert "led by host-1's run" in str(err)
    fake.stall.set()  # the change goes through: the leader ends its session
    runs.finish()
    assert runs.outcome(1).error is None and fake.ports[port(2)] == PortVlans(102)
