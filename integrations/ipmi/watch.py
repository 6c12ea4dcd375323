"""Watch many BMCs' power states continuously: each BMC read once per period at its own phase.

Why not repeated sweeps (``BulkPowerReader``): a sweep stamps every host at once and is
published at its end, so the age of a recorded state runs up to interval + start delay + sweep
time, and every run pays process starts and cold logins. ``PowerWatch`` keeps its worker
processes and their sessions for its whole life and spreads the reads over the period: the BMCs
of the whole set, sorted by key, get the phases ``j * period / n`` on the wall clock (so two
watches one after the other, e.g. consecutive scheduled poll runs, keep each BMC's slot). Each
reading is stamped with the time its read started and handed to the caller within about 0.1 s.
A host's recorded age then runs from ~0 to ~period, at one read per period.

A read still running at its BMC's next slot (the worker is overloaded) is not queued: the slot
is skipped and counted (``stats.skipped_in_flight``). A silent BMC holds one thread for its
per-call timeout and never delays another BMC. Two targets naming one BMC (a duplicated host
record) are read one after the other (see ``bulk._SweepWorker._read``).

Workers are fresh interpreters talking over a socket pair (for the same reasons as
``bulk``: a forked child would inherit pyghmi's half state; ``spawn`` re-imports the caller's
``__main__``). A worker that dies, stops sending its heartbeat, or looks wedged in pyghmi is
replaced with its shard (its sessions are lost, the new one logs in again); its reads in flight
are reported failed. A background thread in the parent receives the workers' messages, so a
caller that is slow to ``drain`` never stalls the workers.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import queue
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections

from metalflow.integrations.common import Secret
from metalflow.integrations.ipmi.bulk import BmcTarget, PowerReading, _failed, looks_wedged
from metalflow.integrations.ipmi.errors import BmcInvalidInput, BmcTimeout, IpmiError
from metalflow.integrations.ipmi.validate import check_address, check_password, check_port, check_username
from metalflow.integrations.ipmi.wire import PyghmiLink
from metalflow.integrations.ipmi.workerproc import WorkerProcess

log = logging.getLogger(__name__)

_WORKER_CODE = "import sys; from metalflow.integrations.ipmi.watch import _worker_entry; _worker_entry(sys.argv[1:])"


@dataclass(frozen=True)
class TimedReading(PowerReading):
    """A ``PowerReading`` with ``at``, the aware UTC time its read started: the time the
    inventory records (the state was true at least then)."""

    at: datetime = field(kw_only=True)


@dataclass(frozen=True)
class WatchStats:
    """Counters since the watch started. ``reads`` counts every reading delivered (failed
    ones too); ``skipped_in_flight`` the slots skipped because the BMC's previous read was
    still running; ``worker_restarts`` the worker processes replaced."""

    reads: int = 0
    failed: int = 0
    skipped_in_flight: int = 0
    worker_restarts: int = 0


def _ident(t: BmcTarget) -> tuple:
    """What makes a session: the target and a digest of its credentials (never the password)."""
    return (t.key, t.address, t.port, t.username, hashlib.sha256(t.password.reveal_bytes()).digest())


def _check(t: BmcTarget) -> None:
    check_address(t.address, t.target)
    check_port(t.port, t.target)
    check_username(t.username, t.target)
    check_password(t.password, t.target)


def _next_slot(phase: float, period: float, not_before_wall: float) -> float:
    """The first wall-clock time >= ``not_before_wall`` that is ``phase`` modulo ``period``."""
    return not_before_wall + (phase - not_before_wall) % period


# ---------------------------------------------------------------------------------------------
# the worker process


class _Entry:
    """One BMC in a worker: its link (session), phase and next slot."""

    __slots__ = ("target", "ident", "phase", "link", "due", "busy", "last_start")

    def __init__(self, target: BmcTarget, ident: tuple, phase: float):
        self.target, self.ident, self.phase = target, ident, phase
        self.link: PyghmiLink | None = None
        self.due = 0.0  # monotonic
        self.busy = False  # a read is running (in our pool)
        self.last_start = float("-inf")  # monotonic start of the last read


class _WatchWorker:
    """A worker's state: its shard, a thread pool, one link per BMC, the readings to send."""

    def __init__(self, per_call_timeout: float, concurrency: int):
        self.per_call_timeout = per_call_timeout
        self.period = 1.0
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ipmi-watch")
        self._entries: dict[str, _Entry] = {}  # by key
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._lock = threading.Lock()  # entries' busy flags, the in-flight map, the outbox
        self._outbox: list[tuple] = []
        self._inflight: dict[str, float] = {}  # key -> wall time its read started
        self._endpoints: dict[tuple[str, int], threading.Lock] = {}
        self.skipped = 0

    # -- the shard --------------------------------------------------------------------------
    def assign(self, shard: Sequence[tuple[BmcTarget, float]], period: float) -> None:
        """Take a new shard: keep the links of unchanged targets, log out of dropped ones,
        move each target to its (possibly new) slot."""
        self.period = period
        now, wall = time.monotonic(), time.time()
        new: dict[str, _Entry] = {}
        with self._lock:
            for target, phase in shard:
                ident = _ident(target)
                entry = self._entries.get(target.key)
                if entry is None or entry.ident != ident:
                    entry = _Entry(target, ident, phase)
                    entry.due = -1.0  # scheduled below
                elif entry.phase != phase:
                    entry.phase, entry.due = phase, -1.0
                new[target.key] = entry
            dropped = [e for k, e in self._entries.items() if new.get(k) is not e]
            self._entries = new
            for e in new.values():
                if e.due < 0:
                    # At least half a period after its last read: a phase that moved a little
                    # must not cause a second read right after the first.
                    earliest = max(now, e.last_start + period / 2)
                    e.due = now + (_next_slot(e.phase, period, wall + (earliest - now)) - wall)
                    self._push(e)
        for e in dropped:
            if e.link is not None:
                self._pool.submit(e.link.close)  # serialised with a read in flight by its guard

    def _push(self, e: _Entry) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (e.due, self._seq, e.target.key))

    def dispatch(self) -> float:
        """Start the reads that are due; return the seconds until the next one is."""
        now = time.monotonic()
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                e = self._entries.get(key)
                if e is None or e.due != due:
                    continue  # removed or rescheduled since
                if e.busy:
                    self.skipped += 1  # not queued: the next slot comes soon enough
                else:
                    e.busy = True
                    self._pool.submit(self._read, e)
                e.due = due + self.period
                if e.due <= now:  # fell behind (a stall): the next slot after now
                    e.due = due + self.period * (1 + (now - due) // self.period)
                self._push(e)
            return max(0.0, self._heap[0][0] - now) if self._heap else 1.0

    def _read(self, e: _Entry) -> None:
        t = e.target
        start, at = time.monotonic(), time.time()
        with self._lock:
            e.last_start = start
            self._inflight[t.key] = at
            endpoint = self._endpoints.setdefault((t.address, t.port), threading.Lock())
        try:
            if not endpoint.acquire(timeout=self.per_call_timeout):
                raise BmcTimeout(
                    "not read: another target with this BMC address took the time",
                    target=t.target,
                    operation="power_state",
                )
            try:
                if e.link is None:
                    e.link = PyghmiLink(t.address, t.port, check_username(t.username), t.password)
                timeout = self.per_call_timeout - (time.monotonic() - start)
                if timeout <= 0:
                    raise BmcTimeout(
                        "not read: waited for another target with this BMC address",
                        target=t.target,
                        operation="power_state",
                    )
                on = e.link.power_is_on(timeout=timeout, operation="power_state")
            finally:
                endpoint.release()
            r = PowerReading(t.key, "on" if on else "off", None, time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reading
            r = _failed(t.key, exc, time.monotonic() - start, t.password)
        with self._lock:
            e.busy = False
            self._inflight.pop(t.key, None)
            current = self._entries.get(t.key) is e
            if current:  # a target removed meanwhile is not reported
                self._outbox.append((r.key, r.state, r.error, r.kind, r.elapsed, at))
        if not current and e.link is not None:
            e.link.close()  # removed while this read made its session

    # -- reporting --------------------------------------------------------------------------
    def report(self, with_stuck: bool) -> tuple[list[tuple], dict[str, float], int, list[float]]:
        """The readings since the last report, the reads in flight, the skipped slots so far and
        (``with_stuck``) the ages of calls stuck in pyghmi (abandoned by their guard, still
        running)."""
        with self._lock:
            out, self._outbox = self._outbox, []
            inflight = dict(self._inflight)
            links = [e.link for e in self._entries.values() if e.link is not None] if with_stuck else []
        stuck = [a for a in (link.guard.stuck_for() for link in links) if a > 0]
        return out, inflight, self.skipped, stuck

    def has_news(self) -> bool:
        """Readings to send, or reads in flight (the parent must know them, to report them
        failed if this process dies)."""
        with self._lock:
            return bool(self._outbox or self._inflight)

    def close(self) -> None:
        with self._lock:
            links = [e.link for e in self._entries.values() if e.link is not None]
            self._entries, self._heap = {}, []
        for link in links:
            link.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def worker_main(conn: Connection, per_call_timeout: float, concurrency: int, patch: bool) -> None:
    """A watch worker: apply the shim, then read its shard on schedule and send what it
    learns at least every ``HEARTBEAT`` seconds, until told to stop or the parent goes away."""
    from metalflow.integrations.ipmi.shim import patch_pyghmi, shim_active

    if patch:
        patch_pyghmi()
    worker = _WatchWorker(per_call_timeout, concurrency)
    heartbeat, flush = PowerWatch.HEARTBEAT, 0.1
    try:
        conn.send(("ready", shim_active()))
        last_sent = last_beat = time.monotonic()
        while True:
            wait = worker.dispatch()
            now = time.monotonic()
            beat = now - last_beat >= heartbeat
            if beat or (worker.has_news() and now - last_sent >= flush):
                conn.send(("report", *worker.report(with_stuck=beat)))
                last_sent = now
                if beat:
                    last_beat = now
            if conn.poll(min(wait, flush)):
                msg = conn.recv()
                if msg is None:
                    break
                _, shard, period = msg
                worker.assign(shard, period)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        worker.close()


def _worker_entry(argv: list[str]) -> None:
    fd, per_call_timeout, concurrency, patch = argv
    worker_main(Connection(int(fd)), float(per_call_timeout), int(concurrency), patch == "1")


# ---------------------------------------------------------------------------------------------
# the parent


class _Handle(WorkerProcess):
    """The parent's handle on one worker process."""

    def __init__(self, index: int, per_call_timeout: float, concurrency: int, patch: bool):
        super().__init__(["-c", _WORKER_CODE], repr(per_call_timeout), str(concurrency), "1" if patch else "0")
        self.index = index
        self.started = self.heard = time.monotonic()
        self.ready = False
        self.shim = False
        self.sent: tuple | None = None  # the shard last sent (its signature)
        self.inflight: dict[str, float] = {}
        self.skipped = 0


class PowerWatch:
    """Reads every target's power state once per ``period`` seconds, each at its own phase,
    from ``processes`` long-lived worker processes; ``drain()`` hands over the readings.

    ``set_targets`` gives the set (the first call starts the workers), ``drain`` collects,
    ``close`` (or the context manager) logs out and stops. Not meant to be shared between
    threads, apart from ``stats`` and ``worker_pids``."""

    START_TIMEOUT = 60.0  # spawn + import of pyghmi on a loaded machine
    HEARTBEAT = 1.0  # a worker reports at least this often
    HANG_AFTER = 15.0  # silence after which a worker is declared hung and replaced
    RECYCLE_AFTER = 120.0  # a call stuck in pyghmi this long gets its worker replaced
    STUCK_AFTER = 30.0  # calls stuck longer count toward "half the shard is stuck"
    RESTART_GAP = 2.0  # at least this long between two starts of one worker

    def __init__(
        self,
        period: float,
        processes: int = 2,
        per_call_timeout: float = 3.0,
        concurrency: int = 32,
        *,
        patch: bool = True,
    ):
        if not period >= 1.0:  # also refuses NaN
            raise ValueError("period: at least 1 second")
        if processes < 1:
            raise ValueError("processes: at least 1")
        if not 0 < per_call_timeout < period:
            raise ValueError("per_call_timeout: must be positive and shorter than the period")
        if concurrency < 1:
            raise ValueError("concurrency: at least 1")
        self.period = float(period)
        self.processes = processes
        self.per_call_timeout = float(per_call_timeout)
        self.concurrency = concurrency
        self.patch = patch
        self._lock = threading.RLock()
        self._handles: list[_Handle | None] = [None] * processes
        self._next_start = [0.0] * processes
        self._shards: list[tuple] = [()] * processes  # (target, phase) per worker
        self._targets: dict[str, BmcTarget] = {}
        self._readings: queue.SimpleQueue[TimedReading] = queue.SimpleQueue()
        self._reads = self._failed = self._skipped_gone = self._restarts = 0
        self._pump: threading.Thread | None = None
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"PowerWatch(period={self.period:g}, processes={self.processes}, targets={len(self._targets)})"

    def __enter__(self) -> PowerWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- public -----------------------------------------------------------------------------
    @property
    def stats(self) -> WatchStats:
        with self._lock:
            skipped = self._skipped_gone + sum(h.skipped for h in self._handles if h is not None)
            return WatchStats(self._reads, self._failed, skipped, self._restarts)

    @property
    def shim_active(self) -> bool:
        """True when every ready worker runs with pyghmi's wake-up race closed."""
        with self._lock:
            return all(h.shim for h in self._handles if h is not None and h.ready)

    def worker_pids(self) -> list[int | None]:
        """The workers' process ids (None: not running), e.g. to check they are kept."""
        with self._lock:
            return [h.pid if h is not None and h.alive() else None for h in self._handles]

    def targets(self) -> list[str]:
        """The keys being watched."""
        with self._lock:
            return list(self._targets)

    def set_targets(self, targets: Sequence[BmcTarget]) -> None:
        """Watch exactly ``targets`` from now on. The first call starts the workers (and waits
        until they are ready); later calls add, remove and replace targets (changed
        credentials) without restarting workers or dropping the sessions of unchanged
        targets. Phases are recomputed over the whole set, so they stay evenly spread.
        Targets that fail the offline checks are not sent: each call reports them as failed
        readings (``BmcInvalidInput``)."""
        if self._closed.is_set():
            raise RuntimeError("this PowerWatch is closed")
        keys = [t.key for t in targets]
        if len(set(keys)) != len(keys):
            raise ValueError("targets: keys must be unique")
        valid: list[BmcTarget] = []
        now = datetime.now(UTC)
        for t in targets:
            try:
                _check(t)
            except BmcInvalidInput as exc:
                password = t.password if isinstance(t.password, Secret) else None
                self._deliver(TimedReading(**vars(_failed(t.key, exc, 0.0, password)), at=now))
                continue
            valid.append(t)
        valid.sort(key=lambda t: t.key)
        n = len(valid)
        shards: list[list[tuple[BmcTarget, float]]] = [[] for _ in range(self.processes)]
        for j, t in enumerate(valid):
            # By BMC endpoint: one BMC is always read by the same worker (duplicated records
            # are serialised there); the phases are global, so the whole set is spread evenly.
            shards[zlib.crc32(t.target.encode()) % self.processes].append((t, j * self.period / n))
        first = self._pump is None
        with self._lock:
            self._targets = {t.key: t for t in valid}
            self._shards = [tuple(s) for s in shards]
            if first:
                for i in range(self.processes):
                    self._start(i)
            else:
                for i in range(self.processes):
                    self._send_shard(i)
        if first:
            self._pump = threading.Thread(target=self._run_pump, name="power-watch", daemon=True)
            self._pump.start()
            self._await_ready()

    def drain(self, timeout: float) -> list[TimedReading]:
        """The readings that arrived since the last call, waiting up to ``timeout`` seconds
        for at least one."""
        out: list[TimedReading] = []
        try:
            out.append(self._readings.get(timeout=max(0.0, timeout)) if timeout > 0 else self._readings.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._readings.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop the workers (they log out of their sessions first). Safe to call twice."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._pump is not None:
            self._pump.join(timeout=5)
        with self._lock:
            handles = [h for h in self._handles if h is not None]
            self._handles = [None] * self.processes
            self._skipped_gone += sum(h.skipped for h in handles)
        for h in handles:
            h.ask_to_stop()
        for h in handles:
            h.kill(wait=10)

    # -- the pump (a background thread) -------------------------------------------------------
    def _run_pump(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                conns = {h.conn: h for h in self._handles if h is not None}
            try:
                ready = wait_connections(list(conns), timeout=0.2) if conns else []
            except (OSError, ValueError):
                ready = []  # a connection closed under us: the checks below find out
            if not conns:
                time.sleep(0.2)
            with self._lock:
                if self._closed.is_set():
                    return
                for conn in ready:
                    h = conns[conn]
                    if self._handles[h.index] is not h:
                        continue
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        self._lost(h, "the worker process died")
                        continue
                    self._receive(h, msg)
                self._check_workers()

    def _receive(self, h: _Handle, msg: tuple) -> None:
        h.heard = time.monotonic()
        if msg[0] == "ready":
            h.ready, h.shim = True, bool(msg[1])
            self._send_shard(h.index)
            return
        _, readings, inflight, skipped, stuck = msg
        h.inflight, h.skipped = inflight, skipped
        for key, state, error, kind, elapsed, at in readings:
            if key in self._targets:  # removed meanwhile: not reported
                self._deliver(TimedReading(key, state, error, elapsed, kind, at=datetime.fromtimestamp(at, UTC)))
        long_stuck = [a for a in stuck if a > self.STUCK_AFTER]
        if looks_wedged(long_stuck, len(self._shards[h.index]), self.RECYCLE_AFTER):
            self._lost(h, f"{len(long_stuck)} calls stuck in pyghmi (oldest {max(long_stuck):.0f} s)")

    def _check_workers(self) -> None:
        now = time.monotonic()
        for i, h in enumerate(self._handles):
            if h is None:
                if now >= self._next_start[i]:
                    self._start(i)
                continue
            if not h.alive():
                self._lost(h, "the worker process died")
            elif not h.ready and now - h.started > self.START_TIMEOUT:
                self._lost(h, f"the worker process did not start within {self.START_TIMEOUT:.0f} s")
            elif h.ready and now - h.heard > self.HANG_AFTER:
                self._lost(h, f"the worker process sent nothing for {now - h.heard:.0f} s")

    def _deliver(self, r: TimedReading) -> None:
        with self._lock:
            self._reads += 1
            self._failed += 0 if r.ok else 1
        self._readings.put(r)

    def _start(self, i: int) -> None:
        self._next_start[i] = time.monotonic() + self.RESTART_GAP
        self._handles[i] = _Handle(i, self.per_call_timeout, self.concurrency, self.patch)

    def _send_shard(self, i: int) -> None:
        h = self._handles[i]
        if h is None or not h.ready:
            return  # sent when it says it is ready
        signature = tuple((_ident(t), phase) for t, phase in self._shards[i])
        if signature == h.sent:
            return
        try:
            h.conn.send(("shard", list(self._shards[i]), self.period))
            h.sent = signature
        except (OSError, ValueError):
            self._lost(h, "the worker process is gone")

    def _lost(self, h: _Handle, why: str) -> None:
        """Replace a worker: its reads in flight become failed readings, a fresh process takes
        its shard (on the next pump round, at most every ``RESTART_GAP`` seconds)."""
        if self._handles[h.index] is not h:
            return
        log.warning("IPMI power-watch worker %d (pid %d): %s; restarting it", h.index, h.pid, why)
        self._handles[h.index] = None
        self._restarts += 1
        self._skipped_gone += h.skipped
        for key, at in h.inflight.items():
            t = self._targets.get(key)
            if t is not None:
                exc = IpmiError(why, target=t.target, operation="power_state")
                r = _failed(key, exc, max(0.0, time.time() - at), t.password)
                self._deliver(TimedReading(**vars(r), at=datetime.fromtimestamp(at, UTC)))
        h.kill()

    def _await_ready(self) -> None:
        end = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < end:
            with self._lock:
                if all(h is not None and h.ready for h in self._handles):
                    return
            time.sleep(0.05)
        self.close()
        raise RuntimeError(
            f"IPMI power-watch workers did not start within {self.START_TIMEOUT:.0f} s (see their output above)"
        )
