"""PowerWatch over real RMCP+ (UDP) against the lab's simulated BMCs (loopback block 150:
127.250.x.y).

The schedule is checked from the readings themselves (their ``at`` stamps), with tolerances of
a fraction of the period: the assertions are about which slot a read took, not about speed
(speed lives in ``bench/power_freshness.py``). Waits are deadlines on a condition.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from metalflow.integrations.common import Deadline
from metalflow.integrations.ipmi import BmcTarget, PowerWatch, TimedReading
from metalflow.lab.bmc import BmcFleet
from metalflow.lab.spec import BmcSpec

N_BMCS = 8
PASSWORD = "Lab-S3cret-watch"
WRONG = "Wr0ng-S3cret-watch"
TOO_LONG = "Wr0ng-S3cret-watch-far-too-long"  # > 20 bytes: refused offline
USER = "admin"
PERIOD = 1.0
CALL_TIMEOUT = 0.8


def address(i: int) -> str:
    return f"127.250.0.{i + 1}"


def host(i: int) -> str:
    return f"w{i:02d}"


def target(i: int, password: str = PASSWORD, key: str | None = None) -> BmcTarget:
    return BmcTarget(key or host(i), address(i), USER, password)


@pytest.fixture(scope="module")
def fleet():
    specs = [BmcSpec(host(i), address(i), 623, USER, PASSWORD) for i in range(N_BMCS)]
    f = BmcFleet(specs, processes=1)
    f.start()
    for i in range(0, N_BMCS, 2):
        f.set_power(host(i), True)  # a mix of on and off
    yield f
    f.stop()


@pytest.fixture
def fault(fleet):
    touched = []

    def set_fault(i: int, mode: str) -> None:
        touched.append(i)
        fleet.set_fault(host(i), mode)

    yield set_fault
    for i in touched:
        fleet.set_fault(host(i), "none")


@pytest.fixture
def watch():
    w = PowerWatch(PERIOD, processes=2, per_call_timeout=CALL_TIMEOUT, concurrency=8)
    yield w
    w.close()


class Collector:
    """Drains a watch into per-key lists until a condition holds (with a deadline)."""

    def __init__(self, w: PowerWatch):
        self.w = w
        self.by_key: dict[str, list[TimedReading]] = defaultdict(list)
        self.received: list[tuple[float, TimedReading]] = []  # (wall time drained, reading)

    def until(self, cond, what: str, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while not cond(self.by_key):
            assert time.monotonic() < end, f"timed out waiting for {what}: {dict(self.counts())}"
            for r in self.w.drain(timeout=0.2):
                self.by_key[r.key].append(r)
                self.received.append((time.time(), r))

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.by_key.items()}

    def clear(self) -> None:
        self.by_key.clear()
        self.received.clear()


def at_least(keys, n: int):
    return lambda by_key: all(len(by_key.get(k, ())) >= n for k in keys)


def gaps(readings: list[TimedReading]) -> list[float]:
    ts = [r.at.timestamp() for r in readings]
    return [b - a for a, b in zip(ts, ts[1:])]


def circular(a: float, b: float, period: float) -> float:
    d = (a - b) % period
    return min(d, period - d)


def test_each_bmc_read_once_per_period_at_its_own_phase(fleet, watch):
    keys = [host(i) for i in range(4)]
    before = datetime.now(UTC)
    watch.set_targets([target(i) for i in range(4)])
    c = Collector(watch)
    c.until(at_least(keys, 3), "three readings of every BMC")

    for drained, r in c.received:
        assert r.ok, r
        assert r.state == fleet.state(r.key).power
        # Stamped when the read started: aware UTC, after the watch began, before we got it.
        assert r.at.tzinfo is not None and r.at.utcoffset().total_seconds() == 0
        assert before <= r.at and r.at.timestamp() <= drained
    for k in keys:
        assert len({r.at for r in c.by_key[k]}) == len(c.by_key[k])  # each read has its own time
        g = gaps(c.by_key[k])
        # once per period: never twice in one slot, never a slot missed
        assert all(0.5 * PERIOD < x < 1.5 * PERIOD for x in g), (k, g)
    # Staggered: the four BMCs (sorted by key) hold the slots 0, P/4, P/2, 3P/4 of the wall
    # clock's period, so their reads are a quarter period apart, not all at once.
    phases = [c.by_key[k][-1].at.timestamp() % PERIOD for k in keys]
    for j, ph in enumerate(phases):
        assert circular(ph, j * PERIOD / 4, PERIOD) < PERIOD / 8, (keys[j], phases)
    s = watch.stats
    assert s.reads == len(c.received) and s.failed == 0 and s.worker_restarts == 0


def test_a_silent_bmc_is_reported_failed_and_delays_no_other(fleet, watch, fault):
    fault(4, "silent")
    healthy = [host(i) for i in (5, 6, 7)]
    watch.set_targets([target(i) for i in (4, 5, 6, 7)])
    c = Collector(watch)
    c.until(at_least([host(4)], 2), "two readings of the silent BMC")
    c.until(at_least(healthy, 3), "three readings of the others")

    assert all(not r.ok and r.kind == "BmcTimeout" and r.state is None for r in c.by_key[host(4)])
    assert all("127.250.0.5:623" in r.error for r in c.by_key[host(4)])
    for k in healthy:
        assert all(r.ok and r.state == fleet.state(k).power for r in c.by_key[k])
        assert all(0.5 * PERIOD < x < 1.5 * PERIOD for x in gaps(c.by_key[k])), (k, gaps(c.by_key[k]))
    assert watch.stats.failed == len(c.by_key[host(4)])


def test_set_targets_adds_removes_and_replaces_without_restarting_workers(fleet, watch):
    a, b, new = host(0), host(1), host(2)
    watch.set_targets([target(0), target(1)])
    pids = watch.worker_pids()
    assert all(pids)
    c = Collector(watch)
    c.until(at_least([a, b], 1), "a reading of both")

    watch.set_targets([target(0), target(2)])  # b removed, new added
    assert sorted(watch.targets()) == [a, new]
    c.clear()
    c.until(at_least([a, new], 2), "two readings of the kept and the added BMC")
    assert b not in c.by_key  # a removed target is no longer read (nor reported)
    assert all(r.ok for rs in c.by_key.values() for r in rs)

    watch.set_targets([target(0, WRONG), target(2)])  # a's credentials changed
    c.clear()
    c.until(lambda by: any(r.kind == "BmcAuthFailed" for r in by.get(a, ())), "a's new password used")
    watch.set_targets([target(0), target(2)])
    c.clear()
    c.until(lambda by: any(r.ok for r in by.get(a, ())), "a read with the right password again")

    assert watch.worker_pids() == pids and watch.stats.worker_restarts == 0


def test_a_killed_worker_is_restarted_and_its_reads_in_flight_fail(fleet, fault):
    fault(3, "silent")  # its reads are in flight most of the time
    keys = [host(i) for i in (0, 1, 3)]
    with PowerWatch(PERIOD, processes=1, per_call_timeout=CALL_TIMEOUT) as w:
        w.set_targets([target(i) for i in (0, 1, 3)])
        c = Collector(w)
        c.until(at_least(keys, 1), "a reading of every BMC")
        # Kill while the silent BMC's read is known to be in flight (the parent's view of the
        # worker: there is no public hook for "in flight", and this is what the test is about).
        Deadline(10).wait_for(
            lambda: host(3) in w._handles[0].inflight, bool, what="a read in flight", interval=0.02, factor=1.0
        )
        (old,) = w.worker_pids()
        os.kill(old, signal.SIGKILL)
        killed = datetime.now(UTC)
        c.clear()
        c.until(
            lambda by: any(r.error and "worker process died" in r.error for r in by.get(host(3), ())),
            "the read in flight reported failed",
        )
        c.until(
            lambda by: all(any(r.ok and r.at > killed for r in by.get(k, ())) for k in keys[:2]),
            "readings after the restart",
        )
        (pid,) = w.worker_pids()
        assert pid is not None and pid != old
        assert w.stats.worker_restarts == 1


def _rendered(exc_or_obj) -> str:
    if isinstance(exc_or_obj, BaseException):
        return "".join(traceback.format_exception(exc_or_obj)) + repr(exc_or_obj.args)
    return repr(exc_or_obj) + str(exc_or_obj)


def test_no_password_in_reprs_readings_logs_or_errors(fleet, fault, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    fault(6, "silent")
    targets = [target(5, WRONG), target(6, WRONG), target(7, TOO_LONG)]
    with PowerWatch(PERIOD, processes=1, per_call_timeout=CALL_TIMEOUT) as w:
        w.set_targets(targets)
        c = Collector(w)
        c.until(at_least([host(5), host(6), host(7)], 1), "a reading of each")
        first = {k: v[0] for k, v in c.by_key.items()}
        assert first[host(5)].kind == "BmcAuthFailed"
        assert first[host(6)].kind == "BmcTimeout"
        assert first[host(7)].kind == "BmcInvalidInput" and "password" in first[host(7)].error
        texts = [repr(w), str(w), repr(targets), *map(_rendered, [r for rs in c.by_key.values() for r in rs])]
    with pytest.raises(ValueError) as dup:
        PowerWatch(PERIOD).set_targets([target(5, WRONG), target(5, WRONG)])
    texts += [_rendered(dup.value), caplog.text, *capsys.readouterr()]
    for secret in (WRONG, TOO_LONG, PASSWORD):
        for form in (secret, secret.encode().hex(), repr(secret.encode())):
            assert not [t for t in texts if form in t]


def test_bad_arguments_are_refused():
    for kwargs in (
        {"period": 0.5},
        {"period": 10, "processes": 0},
        {"period": 10, "per_call_timeout": 10},
        {"period": 10, "concurrency": 0},
    ):
        with pytest.raises(ValueError):
            PowerWatch(**kwargs)
    w = PowerWatch(10)
    w.close()
    w.close()  # safe twice, even never started
    with pytest.raises(RuntimeError):
        w.set_targets([target(0)])


# --- the handover between two power-poll runs of one process (integrations.ipmi.Keeper) ----------


def _watching(*hosts_i: int) -> PowerWatch:
    w = PowerWatch(PERIOD, processes=1, per_call_timeout=CALL_TIMEOUT)
    w.set_targets([target(i) for i in hosts_i])
    Collector(w).until(at_least([host(i) for i in hosts_i], 1), "a first reading of each")
    return w


def test_a_parked_watch_goes_on_reading_and_is_taken_over_with_its_workers(fleet):
    from metalflow.integrations.ipmi import Keeper

    keeper, key = Keeper(), (PERIOD, 1, CALL_TIMEOUT)
    w = _watching(0, 1)
    try:
        pids = w.worker_pids()
        parked_at = datetime.now(UTC)
        keeper.park(w, key, linger=30)
        time.sleep(2.5 * PERIOD)  # between two runs: nobody drains
        assert keeper.take(key) is w
        assert keeper.take(key) is None  # taken once
        read_while_parked = [r for r in w.drain(timeout=0) if r.at > parked_at]
        assert {r.key for r in read_while_parked} == {host(0), host(1)}
        assert all(r.ok for r in read_while_parked)
        assert w.worker_pids() == pids  # the same workers, so the same BMC sessions
    finally:
        w.close()


def test_a_parked_watch_made_otherwise_or_not_taken_in_time_is_closed(fleet):
    from metalflow.integrations.ipmi import Keeper

    keeper, key = Keeper(), (PERIOD, 1, CALL_TIMEOUT)
    w = _watching(2)
    keeper.park(w, key, linger=30)
    assert keeper.take((PERIOD, 2, CALL_TIMEOUT)) is None  # another process count: not reused
    Deadline(10).wait_for(w.worker_pids, lambda pids: not any(pids), what="the workers stopped", interval=0.1)

    w = _watching(3)
    keeper.park(w, key, linger=0.3)
    Deadline(10).wait_for(w.worker_pids, lambda pids: not any(pids), what="the workers stopped", interval=0.1)
    assert keeper.take(key) is None


def test_the_power_poll_keepers_are_parts_of_the_process_runtime_and_close_with_it():
    """No atexit of their own: the runtime that owns them closes them, and the watch parked."""
    from metalflow.integrations.runtime import Runtime
    from metalflow.tasks import poll

    rt = Runtime.install(Runtime("test"))
    try:
        keeper = poll.watch_keeper()
        assert poll.watch_keeper() is keeper and poll.sweep_keeper() is not keeper
        w = PowerWatch(10)
        keeper.park(w, "key", linger=60)
    finally:
        Runtime.uninstall(rt)
    with pytest.raises(RuntimeError, match="closed"):
        w.set_targets([target(0)])


def test_a_by_hand_sweep_reads_with_the_previous_sweeps_reader(fleet, tmp_path, monkeypatch):
    """power-poll by hand twice in one process: the second sweep's ``read-all-bmcs`` takes over
    the first one's reader (same worker processes, so the same BMC sessions); a sweep that
    raises closes its reader instead of keeping it."""
    from metalflow.tasks import poll

    monkeypatch.setenv("METALFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("METALFLOW_POWER_POLL_PROCESSES", "1")
    key = (1, poll.settings().power_poll_call_timeout)
    poll.sweep_keeper().close()
    targets = [target(i) for i in range(4)]
    truth = fleet.states()
    try:
        first = poll.read_all.fn(targets)
        reader = poll.sweep_keeper().take(key)
        assert reader is not None
        pids = reader.worker_pids()
        poll.sweep_keeper().park(reader, key, linger=60)
        second = poll.read_all.fn(targets)
        for got in (first, second):
            assert {k: r.state for k, r in got.items()} == {host(i): truth[host(i)].power for i in range(4)}
        assert poll.sweep_keeper().take(key) is reader and reader.worker_pids() == pids
        poll.sweep_keeper().park(reader, key, linger=60)
        with pytest.raises(ValueError, match="unique"):
            poll.read_all.fn(targets + [target(0)])  # two targets with one key: refused
        assert poll.sweep_keeper().take(key) is None
        assert not any(reader.worker_pids())  # closed, not left running
    finally:
        poll.sweep_keeper().close()


def test_a_by_hand_sweep_with_a_bmc_gone_silent_keeps_no_reader(fleet, fault, tmp_path, monkeypatch):
    """A BMC that stops answering mid-session leaves a call running in pyghmi for about 20 s,
    even once it answers again; a kept reader would fail it on the next sweeps (measured: for
    14 s after the BMC came back from two silent sweeps). So such a sweep closes its reader,
    and the operator who repairs the BMC and polls again at once reads it."""
    from metalflow.tasks import poll

    monkeypatch.setenv("METALFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("METALFLOW_POWER_POLL_PROCESSES", "1")
    key = (1, poll.settings().power_poll_call_timeout)
    poll.sweep_keeper().close()
    targets = [target(i) for i in range(4, 8)]
    truth = fleet.states()
    try:
        assert all(r.ok for r in poll.read_all.fn(targets).values())  # sessions now logged in
        reader = poll.sweep_keeper().take(key)
        assert reader is not None and reader.calls_stuck == 0
        poll.sweep_keeper().park(reader, key, linger=60)
        fault(5, "silent")
        silent = poll.read_all.fn(targets)  # with the kept reader
        assert silent[host(5)].kind == "BmcTimeout"
        assert all(silent[host(i)].ok for i in (4, 6, 7))
        assert reader.calls_stuck >= 1 and not any(reader.worker_pids())  # closed, not kept
        assert poll.sweep_keeper().take(key) is None
        silent = poll.read_all.fn(targets)  # still silent (as over the polls into maintenance)
        assert silent[host(5)].kind == "BmcTimeout" and poll.sweep_keeper().take(key) is None
        fleet.set_fault(host(5), "none")
        again = poll.read_all.fn(targets)
        assert {k: r.state for k, r in again.items()} == {host(i): truth[host(i)].power for i in range(4, 8)}
    finally:
        poll.sweep_keeper().close()
