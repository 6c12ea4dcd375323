"""The lab's BMC simulator, driven by independent clients: pyghmi and (when installed) ipmitool.

pyghmi runs in helper processes (spawn) with our own hard deadline around every call: it
keeps process-wide sessions and can hang, so a stuck call kills its helper process instead of
the test run. Credentials go to pyghmi as bytes (see reference/ipmi.md). Every test uses its
own BMCs, so pyghmi's cached sessions never leak a fault from one test into another.

Loopback block 127.150.0.0/16: the shared fleet on 127.150.1.x, the 300-BMC fleet on
127.150.10.x-11.x, one-off fleets on 127.150.20.x to 127.150.41.x.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from metalflow.lab.bmc import BmcEvent, BmcFleet, BmcFleetError, BmcStartError, BmcState, wire
from metalflow.lab.bmc.fleet import process_count
from metalflow.lab.bmc.model import Machine
from metalflow.lab.bmc.server import BmcServer
from metalflow.lab.spec import BmcSpec, Timing

USER, PASSWORD = "admin", "lab-secret-01"
SOFT_OFF = 0.4
CALL_DEADLINE = 20.0  # our own bound around one pyghmi call (a login included)


def spec(i: int, third: int = 1, password: str = PASSWORD) -> BmcSpec:
    return BmcSpec(
        host=f"bmc-{third}-{i}", address=f"127.150.{third}.{1 + i}", port=623, username=USER, password=password
    )


# -- pyghmi in a helper process ------------------------------------------------------------------


def _pyghmi_op(cmd, op: str, args: tuple):
    if op == "get_power":
        return cmd.get_power()["powerstate"]
    if op == "set_power":
        state, wait = args
        return cmd.set_power(state, wait=wait)
    if op == "get_bootdev":
        return cmd.get_bootdev()
    if op == "set_bootdev":
        device, persist = args
        return cmd.set_bootdev(device, persist=persist)
    if op == "raw":
        netfn, command, data = args
        rsp = cmd.raw_command(netfn=netfn, command=command, data=data)
        return {"code": rsp.get("code"), "data": bytes(rsp.get("data", b"")), "error": rsp.get("error")}
    raise ValueError(op)


def _client_main(conn) -> None:
    from pyghmi.ipmi import command

    while True:
        try:
            batch = conn.recv()
        except EOFError:
            return
        results = []
        try:
            for address, port, user, password, op, args in batch:
                c = command.Command(bmc=address, userid=user.encode(), password=password.encode(), port=port)
                results.append(_pyghmi_op(c, op, args))
            conn.send(("ok", results))
        except Exception as exc:  # noqa: BLE001 - reported as data
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class IpmiCallError(Exception):
    """pyghmi raised (the text is pyghmi's own message)."""


class ClientDeadline(Exception):
    """pyghmi did not return within our deadline; its process was killed."""


class PyghmiClient:
    """pyghmi in its own process. ``call`` returns within ``timeout`` or raises."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_client_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def batch(self, calls: list[tuple], timeout: float = CALL_DEADLINE) -> list:
        self.conn.send(calls)
        if not self.conn.poll(timeout):
            self.proc.kill()
            self.proc.join()
            self._start()
            raise ClientDeadline(f"pyghmi did not return within {timeout} s: {[c[4] for c in calls]}")
        status, value = self.conn.recv()
        if status == "error":
            raise IpmiCallError(value)
        return value

    def call(
        self,
        bmc: BmcSpec,
        op: str,
        *args,
        timeout: float = CALL_DEADLINE,
        password: str | None = None,
        user: str | None = None,
    ):
        pw = bmc.password if password is None else password
        return self.batch([(bmc.address, bmc.port, user or bmc.username, pw, op, args)], timeout)[0]

    def close(self) -> None:
        self.conn.close()
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class EventLog:
    """Collects fleet events (called from the fleet's event thread); waits with a deadline."""

    def __init__(self) -> None:
        self.events: list[BmcEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: BmcEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def of(self, host: str) -> list[tuple[str, str]]:
        with self._cond:
            return [(e.kind, e.bootdev) for e in self.events if e.host == host]

    def wait_for(self, host: str, count: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len([e for e in self.events if e.host == host]) >= count, timeout)
        got = self.of(host)
        assert ok, f"expected {count} events for {host} within {timeout} s, got {got}"
        return got


def wait_state(fleet: BmcFleet, host: str, pred: Callable[[BmcState], bool], timeout: float = 10.0) -> BmcState:
    deadline = time.monotonic() + timeout
    while True:
        state = fleet.state(host)
        if pred(state):
            return state
        assert time.monotonic() < deadline, f"{host} never reached the expected state; last {state}"
        time.sleep(0.05)


# -- fixtures --------------------------------------------------------------------------------------

N_SHARED = 16


@pytest.fixture(scope="module")
def events() -> EventLog:
    return EventLog()


@pytest.fixture(scope="module")
def fleet(events):
    f = BmcFleet([spec(i) for i in range(N_SHARED)], timing=Timing(soft_off=SOFT_OFF), processes=1, on_event=events)
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def client():
    c = PyghmiClient()
    yield c
    c.close()


# -- the machine behind the BMC (pure logic, fake timers) ----------------------------------------


class FakeTimers:
    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None], list[bool]]] = []

    def schedule(self, delay: float, fn: Callable[[], None]):
        cancelled = [False]
        self.pending.append((delay, fn, cancelled))

        class Handle:
            def cancel(self_inner) -> None:
                cancelled[0] = True

        return Handle()

    def fire_all(self) -> None:
        pending, self.pending = self.pending, []
        for _, fn, cancelled in pending:
            if not cancelled[0]:
                fn()


def make_machine() -> tuple[Machine, list[tuple[str, str]], FakeTimers]:
    emitted: list[tuple[str, str]] = []
    timers = FakeTimers()
    m = Machine("h", soft_off_delay=0.5, emit=lambda k, d: emitted.append((k, d)), schedule=timers.schedule)
    return m, emitted, timers


def test_machine_next_boot_override_is_consumed_by_any_boot():
    m, emitted, _ = make_machine()
    m.set_boot_flags(valid=True, persistent=False, device="disk", efi=False)
    assert m.state() == BmcState("off", "disk", False, "disk", "none")
    m.reset()  # from off: a plain power on
    m.set_boot_flags(valid=True, persistent=False, device="cdrom", efi=False)
    m.reset()
    m.reset()
    m.power_on()  # already on: nothing
    assert emitted == [("power_on", "disk"), ("reset", "cdrom"), ("reset", "pxe")]
    m.set_boot_flags(valid=True, persistent=True, device="disk", efi=False)
    m.set_boot_flags(valid=True, persistent=False, device="pxe", efi=False)
    m.set_boot_flags(valid=False, persistent=False, device="none", efi=False)  # drops the override
    m.power_off()
    m.power_off()
    assert emitted[3:] == [("power_off", "disk")]
    assert m.state() == BmcState("off", "disk", True, None, "none")


def test_machine_soft_off_is_honoured_ignored_or_cancelled():
    m, emitted, timers = make_machine()
    m.soft_off()  # off: nothing
    assert timers.pending == []
    m.power_on()
    m.soft_off()
    m.soft_off()  # one pending request only
    assert len(timers.pending) == 1
    timers.fire_all()
    assert m.state().power == "off" and emitted[-1] == ("power_off", "pxe")
    m.power_on()
    m.soft_off()
    m.power_off()  # hard off first: the pending soft off must not act on a later boot
    m.power_on()
    timers.fire_all()
    assert m.state().power == "on"
    m.set_fault("ignore_soft_off")
    m.soft_off()
    timers.fire_all()
    assert m.state().power == "on"
    with pytest.raises(ValueError, match="unknown BMC fault mode"):
        m.set_fault("explode")


def test_process_count_follows_fleet_size():
    assert process_count(1) == 1
    assert process_count(1000) == min(2, os.cpu_count() or 1)
    assert process_count(3, processes=8) == 3


# -- the wire, without a network ---------------------------------------------------------------------


def _open_request(auth: int, integrity: int, conf: int, remote_sid: int = 0x11223344) -> bytes:
    body = bytes([7, 4, 0, 0]) + struct.pack("<I", remote_sid)
    body += bytes([0, 0, 0, 8, auth, 0, 0, 0, 1, 0, 0, 8, integrity, 0, 0, 0, 2, 0, 0, 8, conf, 0, 0, 0])
    return wire.rmcpp_packet(wire.PT_OPEN_REQUEST, 0, 0, body)


def _server(suites: tuple[int, ...]) -> BmcServer:
    m, _, _ = make_machine()
    return BmcServer(spec(0), m, [wire.CIPHER_SUITES[s] for s in suites])


def test_open_session_negotiates_suite_17_or_refuses_it_per_spec():
    accepted = wire.parse_packet(_server((3, 17)).handle_datagram(_open_request(3, 4, 1)))
    assert accepted.payload_type == wire.PT_OPEN_RESPONSE
    p = accepted.payload
    assert p[0] == 7 and p[1] == 0 and struct.unpack_from("<I", p, 4)[0] == 0x11223344
    assert (p[16], p[24], p[32]) == (3, 4, 1)  # SHA-256 auth and integrity, never "suite 3"
    refused = wire.parse_packet(_server((3,)).handle_datagram(_open_request(3, 4, 1))).payload
    assert refused[1] == 0x11  # RMCP+ status: no cipher suite match with proposed algorithms
    none_suite = wire.parse_packet(_server((3, 17)).handle_datagram(_open_request(0, 0, 0))).payload
    assert none_suite[1] == 0x11  # cipher suite 0 (no authentication) is refused too


def test_sessionless_discovery_and_garbage():
    server = _server((3, 17))
    auth_cap = wire.ipmi15_packet(wire.build_request(0x06, 0x38, bytes([0x8E, 4])))
    reply = wire.parse_packet(server.handle_datagram(auth_cap))
    assert reply.authtype == 0 and reply.payload[6] == 0  # completion code
    assert reply.payload[8] & 0x80 and reply.payload[10] & 0x02  # IPMI 2.0 / RMCP+ supported
    suites = wire.ipmi15_packet(wire.build_request(0x06, 0x54, bytes([0x0E, 0, 0x80])))
    records = wire.parse_packet(server.handle_datagram(suites)).payload[8:-1]
    assert records == bytes([0xC0, 3, 1, 0x41, 0x81, 0xC0, 17, 3, 0x44, 0x81])
    # Outside a session, power commands are dropped; garbage never raises.
    assert server.handle_datagram(wire.ipmi15_packet(wire.build_request(0x00, 0x02, b"\x01"))) is None
    for junk in (b"", b"\x06\x00\xff\x07", b"\x06\x00\xff\x07\x06\x00" + b"\xff" * 40, bytes(range(64))):
        assert server.handle_datagram(junk) is None
    assert server.machine.state().power == "off"


# -- pyghmi against the running fleet ------------------------------------------------------------------


def test_power_on_reset_off_and_chassis_status(fleet, client, events):
    b = spec(0)
    assert client.call(b, "get_power") == "off"
    assert client.call(b, "set_power", "on", True) == {"powerstate": "on"}
    assert client.call(b, "get_power") == "on"
    assert events.wait_for(b.host, 1) == [("power_on", "pxe")]
    client.call(b, "set_power", "reset", False)
    assert events.wait_for(b.host, 2)[1] == ("reset", "pxe")
    assert client.call(b, "get_power") == "on"
    assert client.call(b, "set_power", "on", False) == {"powerstate": "on"}  # already on: no command
    assert client.call(b, "set_power", "off", True) == {"powerstate": "off"}
    assert events.wait_for(b.host, 3) == [("power_on", "pxe"), ("reset", "pxe"), ("power_off", "pxe")]
    status = client.call(b, "raw", 0x00, 0x01, ())
    assert status["code"] == 0 and status["data"][0] & 1 == 0
    assert fleet.state(b.host).power == "off"


def test_soft_off_is_honoured_after_the_os_delay(fleet, client, events):
    b = spec(1)
    client.call(b, "set_power", "on", True)
    events.wait_for(b.host, 1)
    asked = time.time()
    client.call(b, "set_power", "softoff", False)
    kinds = events.wait_for(b.host, 2)
    assert kinds[1] == ("power_off", "pxe")
    off = [e for e in events.events if e.host == b.host][-1]
    assert off.at - asked >= SOFT_OFF * 0.9  # the OS took its time (lower bound only)
    assert client.call(b, "get_power") == "off"
    client.call(b, "set_power", "softoff", False)  # soft off of an off machine: nothing happens
    assert client.call(b, "get_power") == "off"


def test_soft_off_ignored_with_fault_then_hard_off_works(fleet, client, events):
    b = spec(2)
    fleet.set_fault(b.host, "ignore_soft_off")
    client.call(b, "set_power", "on", True)
    client.call(b, "set_power", "softoff", False)
    time.sleep(SOFT_OFF * 3)  # nothing to wait for: the point is that nothing happens meanwhile
    assert client.call(b, "get_power") == "on"
    assert fleet.state(b.host) == BmcState("on", "pxe", True, None, "ignore_soft_off")
    client.call(b, "set_power", "off", True)  # the escalation a stop flow does
    assert events.wait_for(b.host, 2) == [("power_on", "pxe"), ("power_off", "pxe")]


def test_boot_device_next_boot_versus_persistent(fleet, client, events):
    b = spec(3)
    assert client.call(b, "get_bootdev")["bootdev"] == "network"  # MAAS servers boot PXE first
    client.call(b, "set_bootdev", "hd", False)
    assert client.call(b, "get_bootdev") == {"bootdev": "hd", "persistent": False, "uefimode": False}
    assert fleet.state(b.host) == BmcState("off", "disk", False, "disk", "none")
    client.call(b, "set_power", "on", True)
    assert events.wait_for(b.host, 1) == [("power_on", "disk")]
    # The boot consumed the override: back to the persistent default.
    assert client.call(b, "get_bootdev") == {"bootdev": "network", "persistent": True, "uefimode": False}
    client.call(b, "set_bootdev", "hd", True)
    client.call(b, "set_power", "reset", False)
    client.call(b, "set_power", "reset", False)
    assert events.wait_for(b.host, 3)[1:] == [("reset", "disk"), ("reset", "disk")]
    client.call(b, "set_bootdev", "pxe", False)
    client.call(b, "set_power", "reset", False)
    client.call(b, "set_power", "reset", False)
    assert events.wait_for(b.host, 5)[3:] == [("reset", "pxe"), ("reset", "disk")]
    assert fleet.state(b.host) == BmcState("on", "disk", True, None, "none")


def test_wrong_password_and_unknown_user_fail_fast_with_auth_errors(fleet, client):
    b = spec(4)
    with pytest.raises(IpmiCallError, match="Incorrect password"):
        client.call(b, "get_power", password="not-the-password", timeout=10)
    with pytest.raises(IpmiCallError, match="Unauthorized name"):
        client.call(b, "get_power", user="mallory", timeout=10)
    assert client.call(b, "get_power") == "off"


def test_silent_bmc_makes_the_client_time_out_then_recovers(fleet, client):
    b = spec(5)
    fleet.set_fault(b.host, "silent")
    with pytest.raises((IpmiCallError, ClientDeadline)):
        client.call(b, "get_power", timeout=15)
    fleet.set_fault(b.host, "none")
    assert client.call(b, "get_power") == "off"


def test_slow_bmc_delays_every_reply(fleet, client):
    b = spec(6)
    fleet.set_fault(b.host, "slow", delay=0.25)
    started = time.monotonic()
    assert client.call(b, "get_power") == "off"
    assert time.monotonic() - started >= 0.25  # lower bound: at least one delayed reply
    assert fleet.state(b.host).fault == "slow"
    fleet.set_fault(b.host, "none")


def test_reject_auth_refuses_every_login_like_a_wrong_password(fleet, client):
    b = spec(7)
    fleet.set_fault(b.host, "reject_auth")
    with pytest.raises(IpmiCallError, match="Incorrect password"):
        client.call(b, "get_power", timeout=10)
    fleet.set_fault(b.host, "none")
    assert client.call(b, "get_power") == "off"


def test_concurrent_clients_on_distinct_bmcs_do_not_interfere(fleet, events):
    """Four client processes, each with sessions to all four BMCs at once (from one socket per
    process: the case where sessions keyed by client address collided); each also changes its
    own BMC. Every read must succeed and every BMC must end as its own client left it."""
    bmcs = [spec(8 + i) for i in range(4)]
    clients = [PyghmiClient() for _ in bmcs]

    def reads(rounds: int) -> list[tuple]:
        return [(o.address, 623, USER, PASSWORD, "get_power", ()) for _ in range(rounds) for o in bmcs]

    def change_and_read(i: int) -> list:
        mine = bmcs[i]
        calls = [(mine.address, 623, USER, PASSWORD, "set_bootdev", ("hd", i % 2 == 0))]
        calls.append((mine.address, 623, USER, PASSWORD, "set_power", ("on", False)))
        return clients[i].batch(calls + reads(5), timeout=60)

    def read_again(i: int) -> list:
        return clients[i].batch(reads(3), timeout=60)

    try:
        with ThreadPoolExecutor(4) as pool:
            during = list(pool.map(change_and_read, range(4)))
            after = list(pool.map(read_again, range(4)))  # every change has returned by now
    finally:
        for c in clients:
            c.close()
    for r in during:
        assert all(p in ("on", "off") for p in r[2:])
    assert after == [["on"] * 12] * 4
    for i, b in enumerate(bmcs):
        persistent = i % 2 == 0
        # Persistent boot devices survive the boot; next-boot ones are consumed by it.
        assert events.wait_for(b.host, 1) == [("power_on", "disk")]
        assert fleet.state(b.host) == BmcState("on", "disk" if persistent else "pxe", True, None, "none")


def test_unsupported_commands_answer_invalid_command(fleet, client):
    b = spec(12)
    assert client.call(b, "raw", 0x0A, 0x20, ())["code"] == 0xC1  # Get SDR Repository Info
    assert client.call(b, "raw", 0x00, 0x04, (0,))["code"] == 0xC1  # Chassis Identify
    assert client.call(b, "raw", 0x00, 0x08, (0x20, 0))["code"] == 0x80  # unknown boot parameter
    assert client.call(b, "raw", 0x00, 0x02, (9,))["code"] == 0xCC  # no such chassis control
    device = client.call(b, "raw", 0x06, 0x01, ())
    assert device["code"] == 0 and device["data"][4] == 0x02  # IPMI version 2.0


def test_power_button_behind_the_bmcs_back_emits_events(fleet, client, events):
    b = spec(14)
    client.call(b, "set_bootdev", "hd", False)
    fleet.set_power(b.host, True)
    fleet.set_power(b.host, True)  # already on: no event
    fleet.set_power(b.host, False)
    assert events.wait_for(b.host, 2) == [("power_on", "disk"), ("power_off", "pxe")]
    assert client.call(b, "get_power") == "off"
    event = [e for e in events.events if e.host == b.host][0]
    assert isinstance(event, BmcEvent) and abs(event.at - time.time()) < 60


def test_fleet_api_errors(fleet):
    with pytest.raises(ValueError, match="unknown BMC fault mode"):
        fleet.set_fault(spec(15).host, "explode")
    with pytest.raises(KeyError, match="no-such-host"):
        fleet.state("no-such-host")
    assert set(fleet.states()) == {spec(i).host for i in range(N_SHARED)}
    with pytest.raises(ValueError, match="appears twice"):
        BmcFleet([spec(0), spec(0)])
    with pytest.raises(ValueError, match="at most 20 bytes"):
        BmcFleet([spec(0, password="x" * 21)])


# -- cipher suites, start-up and scale --------------------------------------------------------------


@pytest.mark.parametrize("suites", [(3,), (17,)])
def test_pyghmi_logs_in_with_suite_3_or_17(suites):
    """pyghmi offers 17 first: a suite-17 BMC accepts it, a suite-3-only BMC refuses it the way
    the spec says and pyghmi falls back to 3. Either way the client works (no crash)."""
    b = spec(0, third=20 + suites[0])
    client = PyghmiClient()
    try:
        with BmcFleet([b], cipher_suites=suites) as f:
            assert client.call(b, "get_power") == "off"
            client.call(b, "set_power", "on", True)
            assert f.state(b.host).power == "on"
    finally:
        client.close()


def test_bind_failure_names_the_address():
    b = spec(0, third=30)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind((b.address, b.port))
    fleet = BmcFleet([spec(1, third=30), b])
    try:
        with pytest.raises(BmcStartError, match=r"127\.150\.30\.1:623"):
            fleet.start(timeout=20)
    finally:
        blocker.close()
    fleet.stop()  # idempotent after a failed start
    with pytest.raises(BmcFleetError, match="not running"):
        fleet.state(b.host)


def _read_powers(batch: list[BmcSpec]) -> list[str]:
    client = PyghmiClient()
    try:
        calls = [(b.address, b.port, b.username, b.password, "get_power", ()) for b in batch]
        return client.batch(calls, timeout=120)
    finally:
        client.close()


@pytest.mark.slow
def test_fleet_of_300_bmcs_over_two_processes_all_answer():
    bmcs = [spec(i % 250, third=10 + i // 250) for i in range(300)]
    events = EventLog()
    with BmcFleet(bmcs, processes=2, on_event=events) as f:
        assert f.processes == 2
        f.set_power(bmcs[299].host, True)
        f.set_power(bmcs[0].host, True)
        chunks = [bmcs[i::4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            results = dict(zip(map(tuple, chunks), pool.map(_read_powers, chunks)))
        powers = {b.host: p for chunk, ps in results.items() for b, p in zip(chunk, ps)}
        assert len(powers) == 300
        assert {h for h, p in powers.items() if p == "on"} == {bmcs[0].host, bmcs[299].host}
        assert {h for h, s in f.states().items() if s.power == "on"} == {bmcs[0].host, bmcs[299].host}
        events.wait_for(bmcs[299].host, 1)
    f.stop()  # a second stop is a no-op


# -- ipmitool, the second independent client --------------------------------------------------------


def _ipmitool(b: BmcSpec, *args: str, suite: str | None = None) -> subprocess.CompletedProcess:
    cmd = ["ipmitool", "-I", "lanplus", "-H", b.address, "-p", str(b.port), "-U", b.username, "-P", b.password]
    if suite:
        cmd += ["-C", suite]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("ipmitool") is None, reason="ipmitool is not installed (apt-get install ipmitool)")
@pytest.mark.parametrize("suite", [None, "3", "17"])
def test_ipmitool_drives_power_and_boot_device(suite):
    b = spec({None: 0, "3": 1, "17": 2}[suite], third=40)
    events = EventLog()
    with BmcFleet([b], on_event=events) as fleet:
        r = _ipmitool(b, "chassis", "power", "status", suite=suite)
        assert r.returncode == 0 and "Chassis Power is off" in r.stdout, r.stderr
        r = _ipmitool(b, "chassis", "bootdev", "disk", suite=suite)
        assert r.returncode == 0 and "Set Boot Device to disk" in r.stdout, r.stderr
        assert fleet.state(b.host).override == "disk"
        r = _ipmitool(b, "chassis", "power", "on", suite=suite)
        assert r.returncode == 0, r.stderr
        assert events.wait_for(b.host, 1) == [("power_on", "disk")]
        assert "Chassis Power is on" in _ipmitool(b, "chassis", "power", "status", suite=suite).stdout
        r = _ipmitool(b, "chassis", "bootdev", "pxe", suite=suite)
        assert r.returncode == 0 and fleet.state(b.host).override == "pxe"
        r = _ipmitool(b, "chassis", "power", "off", suite=suite)
        assert r.returncode == 0 and fleet.state(b.host).power == "off"
        assert events.wait_for(b.host, 2)[1] == ("power_off", "pxe")
        bad = BmcSpec(b.host, b.address, b.port, b.username, "wrong-password")
        r = _ipmitool(bad, "chassis", "power", "status", suite=suite)
        assert r.returncode != 0 and "Unable to establish IPMI v2 / RMCP+ session" in r.stderr


@pytest.mark.skipif(shutil.which("ipmitool") is None, reason="ipmitool is not installed (apt-get install ipmitool)")
def test_ipmitool_suite_17_against_a_suite_3_bmc_is_refused_cleanly():
    b = spec(0, third=41)
    with BmcFleet([b], cipher_suites=(3,)):
        r = _ipmitool(b, "chassis", "power", "status", suite="17")
        assert r.returncode != 0 and "no matching cipher suite" in r.stderr
        r = _ipmitool(b, "chassis", "power", "status")  # ipmitool asks for the suites and picks 3
        assert r.returncode == 0 and "Chassis Power is off" in r.stdout
