"""BmcClient and the power-poll engine's sweeps (PowerWatch.sweep) over real RMCP+ (UDP) against the lab's simulated BMCs.

Every power change is checked twice: by the client's own read-back and by the simulator's
view (``fleet.state``). Deadline tests assert that the call returned with the right error,
never how long it took (speed lives in ``bench/ipmi_race.py``).
"""

from __future__ import annotations

import logging
import threading
import traceback

import pytest

from metalflow.integrations.common import Deadline
from metalflow.integrations.ipmi import (
    BmcAuthFailed,
    BmcClient,
    BmcTarget,
    BmcTimeout,
    BmcUnreachable,
    BmcWrongState,
    BootDevice,
    CallGuards,
    PowerWatch,
    shim,
    shim_active,
)
from metalflow.lab.bmc import BmcFleet
from metalflow.lab.spec import BmcSpec, Timing

N_BMCS = 200
PASSWORD = "Lab-S3cret-ipmi"  # the BMCs' password
WRONG = "Wr0ng-S3cret-pw"  # what a misconfigured host record holds
USER = "admin"
NOWHERE = "127.161.9.9"  # nothing listens there


def address(i: int) -> str:
    return f"127.161.1.{i + 1}"


def host(i: int) -> str:
    return f"h{i:03d}"


@pytest.fixture(scope="module")
def events():
    return []


@pytest.fixture(scope="module")
def fleet(events):
    lock = threading.Lock()

    def record(ev):
        with lock:
            events.append(ev)

    specs = [BmcSpec(host(i), address(i), 623, USER, PASSWORD) for i in range(N_BMCS)]
    f = BmcFleet(specs, timing=Timing(soft_off=0.3), processes=1, on_event=record)
    f.start()
    yield f
    f.stop()


@pytest.fixture
def fault(fleet):
    """Set a fault on a host for one test; cleared afterwards."""
    touched = []

    def set_fault(i: int, mode: str, delay: float = 0.0) -> None:
        touched.append(i)
        fleet.set_fault(host(i), mode, delay)

    yield set_fault
    for i in touched:
        fleet.set_fault(host(i), "none")


#: The test process's call guards (one per BMC), as the runtime keeps them for a metalflow process.
GUARDS = CallGuards()


def bmc(i: int, password: str = PASSWORD, **kw) -> BmcClient:
    kw.setdefault("call_timeout", 3.0)
    kw.setdefault("guards", GUARDS)
    return BmcClient(address(i), kw.pop("username", USER), password, **kw)


def wait_for_event(events, hostname: str, kind: str, after: int) -> None:
    """Events reach the fleet's thread asynchronously: wait for one, with a deadline."""
    Deadline(10).wait_for(
        lambda: [e for e in events[after:] if e.host == hostname and e.kind == kind],
        bool,
        what=f"{kind} event of {hostname}",
        interval=0.02,
        factor=1.5,
        max_interval=0.2,
    )


def test_power_on_off_soft_reset_with_read_back(fleet, events):
    with bmc(0) as c:
        assert c.power_state() == "off" == fleet.state(host(0)).power
        before_on = len(events)
        assert c.power_on(deadline=10) == "on"
        assert fleet.state(host(0)).power == "on" and c.power_state() == "on"
        # The power_on event travels to this process asynchronously: count from after it
        # arrived, or it would be taken for something the second power_on sent.
        wait_for_event(events, host(0), "power_on", before_on)
        seen = len(events)
        assert c.power_on(deadline=10) == "on"  # already on: nothing sent
        assert c.power_off(soft=True, deadline=10) == "off"
        assert fleet.state(host(0)).power == "off"
        wait_for_event(events, host(0), "power_off", seen)
        assert [e.kind for e in events[seen:] if e.host == host(0)] == ["power_off"]
        assert c.reset(deadline=10) == "on"  # from off: powers on
        assert fleet.state(host(0)).power == "on"
        seen = len(events)
        assert c.reset(deadline=10) == "on"  # from on: a real reboot
        wait_for_event(events, host(0), "reset", seen)
        assert c.power_off(deadline=10) == "off"
        assert fleet.state(host(0)).power == "off"


def test_soft_off_ignored_raises_wrong_state_then_hard_off_works(fleet, fault):
    fleet.set_power(host(1), True)
    fault(1, "ignore_soft_off")
    with bmc(1) as c:
        with pytest.raises(BmcWrongState) as ei:
            c.power_off(soft=True, deadline=1.5)
        assert ei.value.target == f"{address(1)}:623" and ei.value.operation == "soft_power_off"
        assert "still on" in str(ei.value)
        assert fleet.state(host(1)).power == "on"
        assert c.power_off(deadline=10) == "off"  # the flow's escalation
        assert fleet.state(host(1)).power == "off"


def test_boot_device_next_boot_versus_persistent(fleet):
    with bmc(2) as c:
        assert c.boot_device() == BootDevice("pxe", True)  # the lab's default: network boot
        c.set_boot_device("disk")
        assert c.boot_device() == BootDevice("disk", False)
        assert fleet.state(host(2)).override == "disk"
        c.power_on(deadline=10)  # the next boot consumes a one-shot override
        assert c.boot_device() == BootDevice("pxe", True)
        assert fleet.state(host(2)).override is None
        c.set_boot_device("disk", persistent=True)
        assert c.boot_device() == BootDevice("disk", True)
        c.reset(deadline=10)  # a persistent device survives boots
        assert c.boot_device() == BootDevice("disk", True)
        assert fleet.state(host(2)).bootdev == "disk"
        c.set_boot_device("pxe", persistent=True)
        assert fleet.state(host(2)).bootdev == "pxe" and fleet.state(host(2)).persistent
        c.power_off(deadline=10)


def test_slow_bmc_within_the_deadline_succeeds(fleet, fault):
    fault(3, "slow", 0.3)
    with bmc(3, call_timeout=6.0) as c:  # 0.3 s per answer: a login takes about 1.5 s
        assert c.power_on(deadline=15) == "on"
        assert fleet.state(host(3)).power == "on"
        c.set_boot_device("pxe")
        assert c.boot_device() == BootDevice("pxe", False)


def _failure(make_call) -> BaseException:
    try:
        make_call()
    except BaseException as exc:  # noqa: BLE001 - inspected by the caller
        return exc
    raise AssertionError("the call did not fail")


def _assert_no_secret(exc: BaseException, *texts: str) -> None:
    rendered = "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args) + str(vars(exc))
    for secret in (PASSWORD, WRONG):
        for form in (secret, secret.encode().hex(), repr(secret.encode())):
            assert form not in rendered
            for t in texts:
                assert form not in t


def test_bad_password_fails_fast_as_auth_failure(fleet, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    # A generous call timeout: a BmcAuthFailed (not a BmcTimeout) shows the answer came from
    # the BMC's handshake, not from waiting out the deadline.
    exc = _failure(lambda: bmc(4, WRONG, call_timeout=20).power_on(deadline=30))
    assert type(exc) is BmcAuthFailed and not exc.transient
    assert exc.target == f"{address(4)}:623" and exc.operation == "power_on"
    assert fleet.state(host(4)).power == "off"  # nothing was done
    _assert_no_secret(exc, caplog.text, *capsys.readouterr())


def test_unknown_user_and_rejected_logins_are_auth_failures(fault, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    exc = _failure(lambda: bmc(5, username="nobody", call_timeout=20).power_state())
    assert type(exc) is BmcAuthFailed
    fault(6, "reject_auth")
    exc2 = _failure(lambda: bmc(6, call_timeout=20).power_state())
    assert type(exc2) is BmcAuthFailed
    _assert_no_secret(exc, caplog.text, *capsys.readouterr())
    _assert_no_secret(exc2)


def test_silent_bmc_times_out_within_the_deadline(fault, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    fault(7, "silent")
    c = bmc(7, call_timeout=1.0)
    exc = _failure(lambda: c.power_on(deadline=1.5))
    assert isinstance(exc, BmcTimeout) and exc.transient
    assert exc.target == f"{address(7)}:623" and exc.operation == "power_on"
    _assert_no_secret(exc, caplog.text, *capsys.readouterr())


def test_unreachable_bmc_is_a_transient_error(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    exc = _failure(lambda: BmcClient(NOWHERE, USER, WRONG, call_timeout=1.0).power_state())
    assert isinstance(exc, BmcUnreachable) and exc.transient
    assert exc.target == f"{NOWHERE}:623"
    _assert_no_secret(exc, caplog.text, *capsys.readouterr())


def test_recovers_after_a_silent_spell(fleet, fault):
    fault(8, "silent")
    c = bmc(8, call_timeout=1.0)
    with pytest.raises(BmcTimeout):
        c.power_state()
    fleet.set_fault(host(8), "none")
    # The abandoned call may still be in pyghmi: the client waits for it (bounded) or starts
    # afresh; either way a later read succeeds once the BMC answers again.
    state = Deadline(20).wait_for(
        lambda: _try_read(c), lambda v: v is not None, what="recovery", interval=0.2, max_interval=1.0
    )
    assert state == fleet.state(host(8)).power
    c.close()


def _try_read(c: BmcClient) -> str | None:
    try:
        return c.power_state()
    except BmcUnreachable:
        return None


def test_shim_is_active_and_sequential_reads_all_succeed(fleet):
    with bmc(9) as c:
        assert c.power_state() == "off"  # the conftest applied the shim
        assert shim_active()
        from pyghmi.ipmi.private import session

        assert session.Session.awaitresponse is shim._awaitresponse and session._poller is shim._poller
        fleet.set_power(host(9), True)
        assert all(c.power_state() == "on" for _ in range(300))


def test_bulk_read_of_many_bmcs_with_two_silent(fleet, fault):
    silent = {11, 12}
    for i in silent:
        fault(i, "silent")
    for i in range(20, N_BMCS, 3):
        fleet.set_power(host(i), True)
    targets = [BmcTarget(host(i), address(i), USER, PASSWORD) for i in range(10, N_BMCS)]
    # A second host record naming h013's BMC with a wrong password: an auth error for it alone.
    targets.append(BmcTarget("dup", address(13), USER, WRONG))
    truth = fleet.states()
    reader = PowerWatch(processes=2, per_call_timeout=3.0)
    try:
        first = reader.sweep(targets, deadline=30)
        pids = reader.worker_pids()
        assert None not in pids
        second = reader.sweep(targets, deadline=30)  # the pool is reused
        assert reader.worker_pids() == pids
        assert reader.shim_active
    finally:
        reader.close()
    for got in (first, second):
        assert set(got) == {t.key for t in targets}
        assert got["dup"].kind == "BmcAuthFailed" and WRONG not in got["dup"].error
        for i in range(10, N_BMCS):
            r = got[host(i)]
            if i in silent:
                assert r.state is None and r.kind == "BmcTimeout" and r.error
                assert PASSWORD not in r.error
            else:
                assert r.ok and r.state == truth[host(i)].power, r
    assert sum(1 for r in first.values() if r.state == "on") == len(range(20, N_BMCS, 3))
    assert all(r.elapsed >= 0 for r in first.values())


def test_bulk_read_tries_first_the_bmcs_that_failed_the_previous_read(fleet, fault):
    """A silent BMC holds an in-flight slot for its whole deadline: tried last, it would end
    the sweep a deadline after the rest. One slot makes the order the reader chose visible in
    the readings' start times."""
    quiet, others = 45, range(30, 40)
    targets = [BmcTarget(host(i), address(i), USER, PASSWORD) for i in (*others, quiet)]
    reader = PowerWatch(processes=1, per_call_timeout=1.0, concurrency=1)

    def starts(got):
        assert all(r.started is not None for r in got.values())
        return got[host(quiet)], [got[host(i)].started for i in others]

    try:
        fault(quiet, "silent")
        first = reader.sweep(targets, deadline=20)
        q, rest = starts(first)
        assert q.kind == "BmcTimeout" and q.started > max(rest)  # in list order: last
        assert all(first[host(i)].ok for i in others)
        second = reader.sweep(targets, deadline=20)
        q, rest = starts(second)
        assert q.kind == "BmcTimeout" and q.started < min(rest)  # it failed last time: first
        assert all(second[host(i)].ok for i in others)
        fleet.set_fault(host(quiet), "none")
        third = reader.sweep(targets, deadline=20)
        q, rest = starts(third)
        assert q.ok and q.started < min(rest)  # still first: it failed the read before
        fourth = reader.sweep(targets, deadline=20)
        q, rest = starts(fourth)
        assert q.ok and q.started > max(rest)  # answered last time: back in list order
    finally:
        reader.close()


def test_many_clients_of_one_bmc_at_once_in_one_process(fleet):
    """Fifty status runs of one host at once are fifty clients of one BMC in one process:
    pyghmi's session tables are process-wide, and logins from several threads at once raced on
    them (KeyError on the BMC's socket address). All of them must read the power state."""
    errors: list[str] = []
    start = threading.Barrier(24)

    def one(k: int) -> None:
        try:
            start.wait(10)
            for _ in range(3):
                with bmc(7) as c:
                    assert c.power_state() in ("on", "off")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(f"client {k}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
