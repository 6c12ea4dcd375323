"""IPMI client logic without a BMC: validation, error classification, the deadline guard, the
power/boot logic under a fake clock, and the shim's safety checks.

The client logic tests use ``FakeLink``, a stand-in for the UDP wire: a fake clock cannot
drive real sockets, and these tests are about what the client decides (when to poll, when to
give up, what to verify). ``test_ipmi_lab.py`` runs the same paths over RMCP+ against the
lab's simulated BMCs.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pyghmi.exceptions
import pytest

from metalflow.integrations.common import Deadline, MetalflowError, Secret
from metalflow.integrations.ipmi import (
    BmcAuthFailed,
    BmcBusy,
    BmcClient,
    BmcInvalidInput,
    BmcTarget,
    BmcTimeout,
    BmcUnreachable,
    BmcWrongState,
    BootDevice,
    IpmiError,
    PowerReading,
    PowerWatch,
)
from metalflow.integrations.ipmi.errors import classify, error_for_code, scrub
from metalflow.integrations.ipmi.guard import CallGuard, CallGuards
from metalflow.integrations.ipmi.wire import PyghmiLink, parse_boot_options

PASSWORD = "Zq9-unit-pw"


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


class FakeLink:
    """The wire, simulated in fake time: a machine that takes ``on_delay``/``soft_delay``
    seconds to change state, optionally ignores soft off, and can fail reads."""

    def __init__(
        self,
        clock: FakeClock,
        power: str = "off",
        *,
        on_delay: float = 0.0,
        soft_delay: float = 3.0,
        ignore_soft: bool = False,
    ):
        self.clock = clock
        self.power = power
        self.on_delay = on_delay
        self.soft_delay = soft_delay
        self.ignore_soft = ignore_soft
        self.pending: tuple[float, str] | None = None
        self.boot = BootDevice("pxe", True)
        self.sticky_boot = True
        self.calls: list[tuple[str, float]] = []
        self.read_errors: list[Exception] = []  # raised by the next reads, in order
        self.control_errors: list[Exception] = []
        self.read_errors_after_control: list[Exception] = []  # armed by the next power command
        self.timeouts: list[float] = []
        self.closed = False

    def _settle(self) -> None:
        if self.pending and self.clock.now() >= self.pending[0]:
            self.power = self.pending[1]
            self.pending = None

    def power_is_on(self, *, timeout: float, operation: str) -> bool:
        self.calls.append(("read", self.clock.now()))
        self.timeouts.append(timeout)
        if self.read_errors:
            raise self.read_errors.pop(0)
        self._settle()
        return self.power == "on"

    def chassis_control(self, action: str, *, timeout: float, operation: str) -> None:
        self.calls.append((action, self.clock.now()))
        if self.control_errors:
            raise self.control_errors.pop(0)
        self.read_errors, self.read_errors_after_control = self.read_errors_after_control, []
        now = self.clock.now()
        if action == "on":
            self.pending = (now + self.on_delay, "on")
        elif action == "off":
            self.power, self.pending = "off", None
        elif action == "soft" and not self.ignore_soft:
            self.pending = (now + self.soft_delay, "off")
        elif action == "reset":
            self.power = "on"

    def get_boot(self, *, timeout: float, operation: str) -> BootDevice:
        self.calls.append(("get_boot", self.clock.now()))
        return self.boot

    def set_boot(self, device: str, persistent: bool, *, timeout: float, operation: str) -> None:
        self.calls.append(("set_boot", self.clock.now()))
        if self.sticky_boot:
            self.boot = BootDevice(device, persistent)

    def close(self) -> None:
        self.closed = True


def client(link: FakeLink, clock: FakeClock, **kw) -> BmcClient:
    return BmcClient("10.0.0.5", "admin", PASSWORD, clock=clock, link=link, **kw)


def actions(link: FakeLink) -> list[str]:
    return [name for name, _ in link.calls]


# -- validate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("address", ["10.1.2.3", "fd00::12", "bmc-12.rack1.example.net", "bmc7"])
def test_validate_accepts_good_addresses(address):
    BmcClient(address, "admin", PASSWORD).validate()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"address": ""}, "address"),
        ({"address": "10.0.0.300"}, "address"),
        ({"address": "10.0.0.1:623"}, "address"),
        ({"address": "[fd00::1]"}, "address"),
        ({"address": "http://10.0.0.1"}, "address"),
        ({"address": "bmc 1"}, "address"),
        ({"address": "-bad-.example"}, "address"),
        ({"address": "bmc-1.example\n"}, "address"),
        ({"address": "bmc-\u0661.example"}, "address"),
        ({"address": "fe80::1%eth0"}, "address"),
        ({"port": "\u0666\u0662\u0663"}, "port"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"port": "623"}, "port"),
        ({"port": True}, "port"),
        ({"username": ""}, "username"),
        ({"username": "u" * 17}, "username"),
        ({"password": ""}, "password"),
        ({"password": "p" * 21}, "password"),
        ({"password": None}, "password"),
        ({"call_timeout": 0}, "call_timeout"),
        ({"min_gap": -1}, "min_gap"),
    ],
)
def test_validate_names_the_bad_field(kwargs, field):
    args = {"address": "10.0.0.5", "username": "admin", "password": PASSWORD, "port": 623}
    extra = {k: kwargs.pop(k) for k in ("call_timeout", "min_gap") if k in kwargs}
    args.update(kwargs)
    c = BmcClient(args["address"], args["username"], args["password"], args["port"], **extra)
    with pytest.raises(BmcInvalidInput) as ei:
        c.validate()
    assert str(ei.value).startswith(f"{field}:")
    assert ei.value.operation == "validate"
    assert not ei.value.transient


def test_validate_never_shows_the_password():
    long_pw = "Leak-me-please-0123456789"  # 25 bytes: too long
    with pytest.raises(BmcInvalidInput) as ei:
        BmcClient("10.0.0.5", "admin", long_pw).validate()
    assert long_pw not in str(ei.value) and long_pw not in repr(ei.value.args)


def test_operations_validate_before_touching_the_wire():
    clock = FakeClock()
    link = FakeLink(clock)
    c = BmcClient("10.0.0.5:623", "admin", PASSWORD, clock=clock, link=link)
    with pytest.raises(BmcInvalidInput):
        c.power_on()
    assert link.calls == []


def test_reprs_show_no_secret():
    c = BmcClient("10.0.0.5", "admin", Secret(PASSWORD))
    t = BmcTarget("host-1", "10.0.0.5", "admin", PASSWORD)
    assert PASSWORD not in repr(c) and PASSWORD not in repr(t) and PASSWORD not in str(t)
    assert isinstance(t.password, Secret)


# -- classification -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, cls",
    [
        ("Incorrect password provided", BmcAuthFailed),
        ("Unauthorized name in RAKP2", BmcAuthFailed),
        (
            "Insufficient privilege level or firmware firewall while requesting privelege level 4 for b'x'",
            BmcAuthFailed,
        ),
        ("timeout", BmcTimeout),
        ("Session no longer connected", BmcUnreachable),
        ("Insufficient resources to create new session (wait for existing sessions to timeout)", BmcBusy),
        ("No Cipher suite match with proposed security algorithms", IpmiError),
    ],
)
def test_classify_pyghmi_texts(text, cls):
    err = classify(pyghmi.exceptions.IpmiException(text), target="10.0.0.5:623", operation="power_on")
    assert type(err) is cls
    assert err.target == "10.0.0.5:623" and err.operation == "power_on"
    assert isinstance(err, MetalflowError)
    assert text[:40] in err.evidence


def test_classify_transience():
    assert BmcTimeout("x").transient and BmcUnreachable("x").transient and BmcBusy("x").transient
    assert not BmcAuthFailed("x").transient and not BmcWrongState("x").transient and not IpmiError("x").transient
    assert isinstance(BmcTimeout("x"), BmcUnreachable)


def test_classify_socket_and_protocol_errors():
    import socket
    import struct

    assert type(classify(socket.gaierror(-2, "Name or service not known"), target="t", operation="o")) is BmcUnreachable
    err = classify(struct.error("unpack requires a buffer of 32 bytes"), target="t", operation="o")
    assert type(err) is IpmiError and "unpack requires" in err.evidence and not err.transient


@pytest.mark.parametrize(
    "code, cls",
    [
        (0xC0, BmcBusy),
        (0xD2, BmcBusy),
        (0xD4, BmcAuthFailed),
        (0xD5, BmcWrongState),
        (0xFFFF, BmcTimeout),
        (0xC1, IpmiError),
        (0xCC, IpmiError),
    ],
)
def test_completion_codes(code, cls):
    err = error_for_code(code, target="t", operation="power_on", text="x")
    assert type(err) is cls


def test_classify_scrubs_the_password_from_evidence():
    exc = pyghmi.exceptions.IpmiException(f"weird failure with {PASSWORD} and {PASSWORD.encode()!r}")
    err = classify(exc, target="t", operation="o", password=Secret(PASSWORD))
    assert PASSWORD not in str(err) and PASSWORD not in err.evidence
    assert scrub(f"x {PASSWORD.encode().hex()} y", Secret(PASSWORD)) == "x *** y"


def test_errors_survive_pickling():  # readings and errors cross process boundaries
    import pickle

    err = pickle.loads(pickle.dumps(BmcTimeout("no answer", target="t:623", operation="power_state")))
    assert type(err) is BmcTimeout and err.target == "t:623" and err.transient


# -- boot options parsing -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, expected",
    [
        (bytes([1, 5, 0x80, 0x04, 0, 0, 0]), BootDevice("pxe", False)),
        (bytes([1, 5, 0xC0, 0x08, 0, 0, 0]), BootDevice("disk", True)),
        (bytes([1, 5, 0xE0, 0x04, 0, 0, 0]), BootDevice("pxe", True)),  # EFI bit ignored
        (bytes([1, 5, 0x00, 0x04, 0, 0, 0]), BootDevice("default", False)),  # flags not valid
        (bytes([1, 0x85, 0x80, 0x04, 0, 0, 0]), BootDevice("default", False)),  # parameter invalid
        (bytes([1, 5, 0x80, 0x00, 0, 0, 0]), BootDevice("default", False)),
    ],
)
def test_parse_boot_options(data, expected):
    assert parse_boot_options(data) == expected


def test_parse_boot_options_rejects_garbage():
    with pytest.raises(IpmiError):
        parse_boot_options(bytes([1, 4, 0]))


# -- the deadline guard (real threads, released by events: no timing assertions) ------------------
def test_guard_returns_result_and_exception():
    g = CallGuard("t")
    assert g.run(lambda: 42, timeout=5, operation="o") == 42
    with pytest.raises(BmcAuthFailed):
        g.run(lambda: (_ for _ in ()).throw(BmcAuthFailed("no", target="t")), timeout=5, operation="o")


def test_guard_gives_up_at_the_deadline_and_keeps_one_call_in_flight():
    g = CallGuard("10.0.0.5:623")
    release = threading.Event()
    started = []

    def stuck():
        started.append(1)
        release.wait(30)
        return "late"

    with pytest.raises(BmcTimeout) as ei:
        g.run(stuck, timeout=0.2, operation="power_state")
    assert ei.value.target == "10.0.0.5:623" and ei.value.operation == "power_state"
    assert g.busy() and g.abandoned == 1
    # While the abandoned call is stuck, a new call does not start a second thread into pyghmi.
    with pytest.raises(BmcTimeout, match="still stuck"):
        g.run(lambda: started.append(2), timeout=0.2, operation="power_state")
    assert started == [1]
    release.set()
    # Once it ended, calls go through again.
    assert g.run(lambda: "fresh", timeout=5, operation="power_state") == "fresh"
    assert not g.busy()


def test_guards_one_per_bmc_and_idle_ones_are_pruned_but_not_a_stuck_one():
    guards = CallGuards()
    a, b = guards.of("10.0.0.5:623"), guards.of("10.0.0.6:623")
    assert guards.of("10.0.0.5:623") is a and len(guards) == 2
    release = threading.Event()
    with pytest.raises(BmcTimeout):
        b.run(lambda: release.wait(30), timeout=0.1, operation="power_state")  # b stays stuck
    a.last_call -= CallGuards.PRUNE_IDLE + 1
    b.last_call -= CallGuards.PRUNE_IDLE + 1
    try:
        assert guards.prune() == 1  # the idle one; the stuck one must keep its caller waiting
        assert a.retired and not b.retired and guards.of("10.0.0.6:623") is b
        assert guards.of("10.0.0.5:623") is not a  # a fresh one
    finally:
        release.set()


def test_a_link_holding_a_pruned_guard_takes_the_current_one():
    guards = CallGuards()
    link = PyghmiLink("10.0.0.5", 623, b"admin", Secret(PASSWORD), guards)
    old = link.guard
    old.last_call -= CallGuards.PRUNE_IDLE + 1
    guards.prune()
    assert link.guard is guards.of("10.0.0.5:623") is not old


# -- power logic under a fake clock -----------------------------------------------------------------
def test_power_on_is_a_noop_when_on():
    clock = FakeClock()
    link = FakeLink(clock, "on")
    assert client(link, clock).power_on() == "on"
    assert actions(link) == ["read"]


def test_power_on_sends_then_polls_with_backoff_until_on():
    clock = FakeClock()
    link = FakeLink(clock, "off", on_delay=2.0)
    assert client(link, clock).power_on(deadline=30) == "on"
    assert actions(link)[:2] == ["read", "on"]
    assert actions(link).count("on") == 1
    gaps = clock.sleeps
    assert gaps == sorted(gaps) and gaps[0] == BmcClient.poll_interval  # growing waits
    assert link.calls[-1][1] >= 2.0


def test_soft_off_ignored_raises_wrong_state_at_the_deadline():
    clock = FakeClock()
    link = FakeLink(clock, "on", ignore_soft=True)
    with pytest.raises(BmcWrongState) as ei:
        client(link, clock).power_off(soft=True, deadline=10)
    assert ei.value.operation == "soft_power_off" and "still on" in str(ei.value)
    assert "hard power off" in ei.value.evidence
    assert clock.t == pytest.approx(10)  # gave up at the deadline, not before, not after
    assert actions(link).count("soft") == 1


def test_soft_off_honoured_in_time():
    clock = FakeClock()
    link = FakeLink(clock, "on", soft_delay=3.0)
    assert client(link, clock).power_off(soft=True, deadline=10) == "off"
    assert "off" not in actions(link)  # no hard off was sent


def test_hard_off_and_reset_from_off_and_from_on():
    clock = FakeClock()
    link = FakeLink(clock, "on")
    c = client(link, clock)
    assert c.power_off() == "off"
    assert c.power_off() == "off"
    assert actions(link).count("off") == 1  # the second was a no-op
    assert c.reset() == "on"
    assert "on" in actions(link)  # from off, reset powers on
    assert c.reset() == "on"
    assert actions(link)[-2:] == ["reset", "read"]


def test_polling_tolerates_transient_read_errors():
    clock = FakeClock()
    link = FakeLink(clock, "off", on_delay=1.0)
    link.read_errors_after_control = [BmcTimeout("silent", target="t"), BmcUnreachable("dropped", target="t")]
    assert client(link, clock).power_on(deadline=30) == "on"
    assert actions(link).count("read") >= 4  # the state, two failed polls, the good one


def test_polling_with_only_errors_raises_the_last_error_at_the_deadline():
    clock = FakeClock()
    link = FakeLink(clock, "off")
    link.read_errors_after_control = [BmcTimeout("silent", target="t")] * 1000
    with pytest.raises(BmcTimeout):
        client(link, clock).power_on(deadline=5)
    assert clock.t == pytest.approx(5)


def test_busy_bmc_is_retried_other_errors_are_not():
    clock = FakeClock()
    link = FakeLink(clock, "off")
    link.read_errors = [BmcBusy("busy", target="t"), BmcBusy("busy", target="t")]
    assert client(link, clock).power_state() == "off"
    assert actions(link) == ["read", "read", "read"]
    link2 = FakeLink(clock, "off")
    link2.read_errors = [BmcAuthFailed("bad password", target="t")]
    with pytest.raises(BmcAuthFailed):
        client(link2, clock).power_state()
    assert actions(link2) == ["read"]


def test_call_timeout_is_capped_by_the_operation_deadline():
    clock = FakeClock()
    link = FakeLink(clock, "off", on_delay=100)
    with pytest.raises(BmcWrongState):
        client(link, clock, call_timeout=10).power_on(deadline=4)
    assert link.timeouts[0] == pytest.approx(4)
    assert all(t <= 10 for t in link.timeouts)
    assert clock.t == pytest.approx(4)


def test_min_gap_spaces_commands():
    clock = FakeClock()
    link = FakeLink(clock, "off")
    c = client(link, clock, min_gap=1.5)
    c.power_state()
    c.power_state()
    c.power_state()
    times = [t for _, t in link.calls]
    assert [b - a for a, b in zip(times, times[1:])] == [pytest.approx(1.5)] * 2


def test_min_gap_is_per_client():
    clock = FakeClock()
    a, b = client(FakeLink(clock), clock, min_gap=5), client(FakeLink(clock), clock, min_gap=5)
    a.power_state()
    b.power_state()
    assert clock.sleeps == []


def test_set_boot_device_reads_back():
    clock = FakeClock()
    link = FakeLink(clock)
    c = client(link, clock)
    c.set_boot_device("disk", persistent=True)
    assert actions(link) == ["set_boot", "get_boot"]
    assert c.boot_device() == BootDevice("disk", True)


def test_set_boot_device_mismatch_is_an_error():
    clock = FakeClock()
    link = FakeLink(clock)
    link.sticky_boot = False
    with pytest.raises(BmcWrongState) as ei:
        client(link, clock).set_boot_device("pxe", persistent=False)
    assert "pxe next boot" in ei.value.evidence and "pxe persistent" in ei.value.evidence


def test_set_boot_device_rejects_unknown_devices():
    clock = FakeClock()
    link = FakeLink(clock)
    with pytest.raises(BmcInvalidInput, match="device"):
        client(link, clock).set_boot_device("floppy")
    assert link.calls == []


def test_close_closes_the_link():
    clock = FakeClock()
    link = FakeLink(clock)
    with client(link, clock):
        pass
    assert link.closed


# -- the engine's sweep, offline parts -------------------------------------------------------------------
def test_sweep_rejects_duplicate_keys_and_reports_bad_targets_without_sending():
    reader = PowerWatch(processes=1)
    t = BmcTarget("h1", "10.0.0.1", "admin", PASSWORD)
    with pytest.raises(ValueError, match="unique"):
        reader.sweep([t, t], deadline=5)
    bad = BmcTarget("h2", "10.0.0.1:623", "admin", PASSWORD)
    try:
        got = reader.sweep([bad], deadline=5)
    finally:
        reader.close()
    assert got["h2"].kind == "BmcInvalidInput" and got["h2"].state is None and "address" in got["h2"].error
    assert isinstance(got["h2"], PowerReading) and not got["h2"].ok


@pytest.mark.parametrize(
    "stuck, shard, wedged",
    [
        ([], 100, False),
        ([3.0, 4.0], 100, False),
        ([200.0], 100, True),
        ([5.0] * 8, 100, False),
        ([5.0] * 50, 100, True),
        ([5.0] * 3, 4, False),
    ],
)
def test_worker_health_rule(stuck, shard, wedged):
    from metalflow.integrations.ipmi.readings import looks_wedged

    assert looks_wedged(stuck, shard, limit=120) is wedged


# -- the shim refuses pyghmi it was not checked against ----------------------------------------------
def _in_fresh_process(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip() + "|" + out.stderr


def test_shim_skips_when_pyghmi_source_differs():
    out = _in_fresh_process(
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from metalflow.integrations.ipmi import shim\n"
        "shim.SESSION_SHA256 = frozenset({'0' * 64})\n"
        "print(shim.patch_pyghmi(), shim.shim_active())"
    )
    assert out.startswith("False False|") and "session.py differs from the checked source" in out


def test_shim_skips_unknown_pyghmi_versions():
    out = _in_fresh_process(
        "from metalflow.integrations.ipmi import shim\n"
        "shim.SUPPORTED_VERSIONS = frozenset({'0.0.1'})\n"
        "print(shim.patch_pyghmi(), shim.shim_active())"
    )
    assert out.startswith("False False|") and "not a version" in out


def test_shim_applies_once():
    out = _in_fresh_process(
        "from metalflow.integrations.ipmi import shim\n"
        "from pyghmi.ipmi.private import session\n"
        "print(shim.shim_active(), shim.patch_pyghmi(), shim.patch_pyghmi(), shim.shim_active(),"
        " session.Session.awaitresponse is shim._awaitresponse, session._poller is shim._poller,"
        " session._io_recvfrom is shim._io_recvfrom, session.Session._timedout.metalflow_shim)"
    )
    assert out.startswith("False True True True True True True True|")


def test_patched_recvfrom_never_blocks_even_on_a_blocking_socket():
    import socket

    from metalflow.integrations.ipmi import shim

    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.161.0.1", 0))
        a.setblocking(True)  # what pyghmi's _io_sendto leaves behind
        assert shim._io_recvfrom(a, 3000) is None  # returns at once: nothing to read
        b.sendto(b"hello", a.getsockname())
        Deadline(5).wait_for(
            lambda: shim._io_recvfrom(a, 3000),
            lambda v: v is not None,
            what="datagram",
            interval=0.01,
            max_interval=0.1,
        )
    finally:
        a.close()
        b.close()


def test_timedout_runs_with_the_waiting_lock_released_and_gets_it_back():
    from pyghmi.ipmi.private import session as s

    from metalflow.integrations.ipmi import shim

    wrapped = shim._make_timedout(lambda self: s.WAITING_SESSIONS._is_owned())
    with s.util.protect(s.WAITING_SESSIONS), s.util.protect(s.WAITING_SESSIONS):  # held twice
        assert wrapped(None) is False  # not held during the call
        assert s.WAITING_SESSIONS._is_owned()  # held again afterwards, at the same depth
    assert not s.WAITING_SESSIONS._is_owned()
    assert wrapped(None) is False  # not held: called as is


def test_timedout_no_longer_deadlocks_with_a_retransmit():
    """The deadlock, staged: thread B (a send) holds KEEPALIVE and waits for WAITING; thread A
    (wait_for_rsp) holds WAITING and times a session out, which needs KEEPALIVE."""
    from pyghmi.ipmi.private import session as s

    from metalflow.integrations.ipmi import shim

    def original_timedout(self):  # what pyghmi's _timedout does first when it retransmits
        with s.util.protect(s.KEEPALIVE_SESSIONS):
            return "retransmitted"

    timedout = shim._make_timedout(original_timedout)
    b_holds_keepalive, results = threading.Event(), []

    def sender():
        with s.util.protect(s.KEEPALIVE_SESSIONS):
            b_holds_keepalive.set()
            with s.util.protect(s.WAITING_SESSIONS):
                results.append("sent")

    def waiter():
        with s.util.protect(s.WAITING_SESSIONS):
            b = threading.Thread(target=sender, daemon=True)
            b.start()
            b_holds_keepalive.wait(10)
            results.append(timedout(None))
        b.join(10)

    a = threading.Thread(target=waiter, daemon=True)
    a.start()
    a.join(20)
    assert not a.is_alive(), "deadlocked"
    assert sorted(results) == ["retransmitted", "sent"]
