"""The power-poll engine: watch many BMCs' power states, each read once per period at its own
phase, or sweep them all at once; a sweep is one round of a watch.

Why a watch, not repeated sweeps: a sweep stamps every host at once and is published at its
end, so the age of a recorded state runs up to interval + start delay + sweep time, and every
run pays process starts and cold logins. ``PowerWatch`` keeps its worker processes and their
sessions for its whole life and spreads the reads over the period: the BMCs of the whole set,
sorted by key, get the phases ``j * period / n`` on the wall clock (so two watches one after
the other, e.g. consecutive scheduled poll runs, keep each BMC's slot). Each reading is
stamped with the time its read started and handed to the caller within about 0.1 s. A host's
recorded age then runs from ~0 to ~period, at one read per period. ``run`` drives it until a
deadline and hands the readings to the caller's sink.

A read still running at its BMC's next slot (the worker is overloaded) is not queued: the slot
is skipped and counted (``stats.skipped_in_flight``). A silent BMC holds one thread for its
per-call timeout and never delays another BMC.

A sweep (``sweep``: what an operator's by-hand poll does) reads every target now, within one
deadline, with the same workers and sessions. The BMCs that failed the previous sweep are
tried first (see ``sweep``); calls that the sweep left stuck in pyghmi are counted
(``calls_stuck``) so that a caller can decide not to keep the watch.

The targets are sharded over the workers by a stable hash of their BMC address, so a BMC is
always read by the same worker (its session is reused, a call still stuck from an earlier read
is found by the same guard, duplicated host records are serialised there). A worker that dies,
stops sending its heartbeat, or looks wedged in pyghmi is replaced with its shard (its sessions
are lost, the new one logs in again); its reads in flight are reported failed. A background
thread in the parent receives the workers' messages, so a caller that is slow to ``drain``
never stalls the workers. The workers themselves: ``worker``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any

from metalflow.integrations.common import Secret
from metalflow.integrations.ipmi.errors import BmcInvalidInput, IpmiError
from metalflow.integrations.ipmi.readings import (
    BmcTarget,
    PowerReading,
    TimedReading,
    WatchStats,
    failed,
    looks_wedged,
)
from metalflow.integrations.ipmi.worker import HEARTBEAT, Wire, WorkerProcess

log = logging.getLogger(__name__)

#: What ``run`` hands its sink; the sink raises when it could not take them (kept, retried).
Sink = Callable[[list[TimedReading]], None]


class _Handle(WorkerProcess):
    """The parent's handle on one worker process."""

    def __init__(self, index: int, per_call_timeout: float, concurrency: int, patch: bool):
        super().__init__(per_call_timeout, concurrency, patch)
        self.index = index
        self.started = self.heard = time.monotonic()
        self.ready = False
        self.shim = False
        self.sent: tuple[Any, ...] | None = None  # the shard last sent (its signature)
        self.inflight: dict[str, float] = {}
        self.skipped = 0
        self.sweeping_until = 0.0  # monotonic: a sweep keeps the worker quiet until then


@dataclass(frozen=True)
class RunStats:
    """What ``run`` did: the watch's counters over the run and how long it ran (seconds)."""

    stats: WatchStats
    seconds: float


class PowerWatch:
    """Reads every target's power state once per ``period`` seconds, each at its own phase,
    from ``processes`` long-lived worker processes; or reads them all at once (``sweep``).

    Continuous: ``set_targets`` gives the set (the first call starts the workers), ``drain``
    collects, ``run`` does both until a deadline and feeds a sink. Sweeps: ``sweep`` (a watch
    made without ``period`` does only those). ``close`` (or the context manager) logs out and
    stops. Not meant to be shared between threads, apart from ``stats`` and ``worker_pids``."""

    START_TIMEOUT = 60.0  # spawn + import of pyghmi on a loaded machine
    HEARTBEAT = HEARTBEAT  # a worker reports at least this often
    HANG_AFTER = 15.0  # silence after which a worker is declared hung and replaced
    RECYCLE_AFTER = 120.0  # a call stuck in pyghmi this long gets its worker replaced
    STUCK_AFTER = 30.0  # calls stuck longer count toward "half the shard is stuck"
    RESTART_GAP = 2.0  # at least this long between two starts of one worker
    GRACE = 3.0  # beyond a sweep's deadline before a worker is declared hung
    FLUSH_EVERY = 0.5  # run: seconds between two batches handed to the sink
    MAX_PENDING = 200_000  # run: readings kept while the sink fails

    def __init__(
        self,
        period: float | None = None,
        processes: int = 2,
        per_call_timeout: float = 3.0,
        concurrency: int = 32,
        *,
        patch: bool = True,
    ):
        """``period`` None: a watch for sweeps only."""
        if period is not None and not period >= 1.0:  # also refuses NaN
            raise ValueError("period: at least 1 second")
        if processes < 1:
            raise ValueError("processes: at least 1")
        if not per_call_timeout > 0 or (period is not None and not per_call_timeout < period):
            raise ValueError("per_call_timeout: must be positive and shorter than the period")
        if concurrency < 1:
            raise ValueError("concurrency: at least 1")
        self.period = float(period) if period is not None else None
        self.processes = processes
        self.per_call_timeout = float(per_call_timeout)
        self.concurrency = concurrency
        self.patch = patch
        self._lock = threading.RLock()
        self._handles: list[_Handle | None] = [None] * processes
        self._next_start = [0.0] * processes
        self._shards: list[tuple[tuple[BmcTarget, float], ...]] = [()] * processes  # (target, phase) per worker
        self._targets: dict[str, BmcTarget] = {}
        self._readings: queue.SimpleQueue[TimedReading] = queue.SimpleQueue()
        self._swept: queue.SimpleQueue[tuple[int, list[PowerReading] | None, list[float], str]] = queue.SimpleQueue()
        self._reads = self._failed = self._skipped_gone = self._restarts = 0
        self._pump: threading.Thread | None = None
        self._closed = threading.Event()
        self._failed_last: set[str] = set()  # keys whose previous sweep read failed: tried first
        #: Calls the last sweep abandoned that were still running in pyghmi when it ended (a BMC
        #: that stopped answering mid-session holds one for about 20 s, even once it answers
        #: again). Until they end, the next read of those BMCs in this watch waits for them and
        #: fails; a caller that needs that read to count (an operator checking a repaired BMC)
        #: closes the watch instead of reusing it.
        self.calls_stuck = 0

    def __repr__(self) -> str:
        period = "None" if self.period is None else f"{self.period:g}"
        return f"PowerWatch(period={period}, processes={self.processes}, targets={len(self._targets)})"

    def __enter__(self) -> PowerWatch:
        return self

    def __exit__(self, *exc: object) -> None:
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

    def start(self) -> None:
        """Start the workers (if not yet) and wait until they are all ready."""
        if self._closed.is_set():
            raise RuntimeError("this PowerWatch is closed")
        if self._pump is not None:
            self._await_ready()
            return
        with self._lock:
            for i in range(self.processes):
                self._start(i)
        self._pump = threading.Thread(target=self._run_pump, name="power-watch", daemon=True)
        self._pump.start()
        self._await_ready()

    def set_targets(self, targets: Sequence[BmcTarget]) -> None:
        """Watch exactly ``targets`` from now on. The first call starts the workers (and waits
        until they are ready); later calls add, remove and replace targets (changed
        credentials) without restarting workers or dropping the sessions of unchanged
        targets. Phases are recomputed over the whole set, so they stay evenly spread.
        Targets that fail the offline checks are not sent: each call reports them as failed
        readings (``BmcInvalidInput``)."""
        if self._closed.is_set():
            raise RuntimeError("this PowerWatch is closed")
        if self.period is None:
            raise RuntimeError("this PowerWatch was made for sweeps (no period): it cannot watch")
        valid = self._valid(targets, datetime.now(UTC))
        valid.sort(key=lambda t: t.key)
        n = len(valid)
        shards: list[list[tuple[BmcTarget, float]]] = [[] for _ in range(self.processes)]
        for j, t in enumerate(valid):
            # By BMC endpoint: one BMC is always read by the same worker (duplicated records
            # are serialised there); the phases are global, so the whole set is spread evenly.
            shards[self._worker_of(t)].append((t, j * self.period / n))
        with self._lock:
            self._targets = {t.key: t for t in valid}
            self._shards = [tuple(s) for s in shards]
            if self._pump is not None:
                for i in range(self.processes):
                    self._send_shard(i)
        if self._pump is None:
            self.start()  # each worker gets its shard when it says it is ready

    def report(self, reading: TimedReading) -> None:
        """Hand a reading the caller made (a target it could not build, e.g. credentials that
        cannot be loaded) to the same consumer as the watch's own readings; not a read, so not
        counted in ``stats``."""
        self._readings.put(reading)

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

    def run(
        self,
        until: float,
        sink: Sink,
        *,
        targets: Callable[[], Sequence[BmcTarget] | None],
        refresh_every: float,
        progress: Callable[[WatchStats], None] | None = None,
        progress_every: float = 30.0,
        ended: Callable[[], None] | None = None,
    ) -> RunStats:
        """Watch ``targets()`` until ``until`` (wall clock, epoch seconds), and at least one full
        period, so that every target is read once even by a run that started late; hand the
        readings to ``sink`` in batches every ``FLUSH_EVERY`` seconds. ``targets()`` is asked
        again every ``refresh_every`` seconds (None: keep the current set). A sink that raises
        keeps its batch: it is handed again with the next readings, backing off up to 10 s,
        keeping the newest ``MAX_PENDING``; at the end it gets five more tries, and the last
        failure is raised. ``progress(stats since the start)`` every ``progress_every`` s;
        ``ended()`` once the polling is over, before those last tries (a caller parks the watch
        there: a failing sink then fails the run, not the watch)."""
        if self.period is None:
            raise RuntimeError("this PowerWatch was made for sweeps (no period): it cannot watch")
        base = self.stats  # the run's figures are counted from here
        pending: list[TimedReading] = []

        def refresh() -> None:
            got = targets()
            if got is not None:
                self.set_targets(got)

        refresh()
        started = time.monotonic()
        min_end = started + self.period + self.per_call_timeout + 2 * self.FLUSH_EVERY  # one full round
        next_refresh = started + refresh_every
        next_progress = started + progress_every
        next_flush, flush_gap = started, self.FLUSH_EVERY
        while True:
            now = time.monotonic()
            done = time.time() >= until and now >= min_end
            pending += self.drain(timeout=0 if done else self.FLUSH_EVERY / 2)
            if done:
                break
            if len(pending) > self.MAX_PENDING:  # the sink has failed for long: keep the newest
                log.warning("dropping %d old readings that could not be recorded", len(pending) - self.MAX_PENDING)
                del pending[: len(pending) - self.MAX_PENDING]
            now = time.monotonic()
            if pending and now >= next_flush:
                if self._flush(sink, pending):
                    flush_gap = self.FLUSH_EVERY
                else:  # a failing sink: keep the readings, back off, try again
                    flush_gap = min(10.0, flush_gap * 2)
                next_flush = now + flush_gap
            if now >= next_refresh:
                refresh()
                next_refresh = now + refresh_every
            if progress is not None and now >= next_progress:
                progress(self.stats.since(base))
                next_progress = now + progress_every
        result = RunStats(self.stats.since(base), time.monotonic() - started)
        if ended is not None:
            ended()
        for attempt in range(5):  # the last readings; a sink still failing fails the run
            if not pending or self._flush(sink, pending, final=attempt == 4):
                break
            time.sleep(2**attempt)
        return result

    def sweep(self, targets: Sequence[BmcTarget], deadline: float) -> dict[str, PowerReading]:
        """One round: every target's power state or error, within ``deadline`` seconds (counted
        once the workers are up; the first call starts them). Targets that fail the offline
        checks get a ``BmcInvalidInput`` reading and are not sent."""
        if self._closed.is_set():
            raise RuntimeError("this PowerWatch is closed")
        keys = [t.key for t in targets]
        if len(set(keys)) != len(keys):
            raise ValueError("targets: keys must be unique")
        if deadline <= 0:
            raise ValueError("deadline: must be positive")
        if self._targets:
            raise RuntimeError("this PowerWatch is watching its targets continuously: it cannot sweep")
        results: dict[str, PowerReading] = {}
        shards: list[list[BmcTarget]] = [[] for _ in range(self.processes)]
        for t in targets:
            try:
                t.check()
            except BmcInvalidInput as exc:
                results[t.key] = failed(t.key, exc, 0.0, t.password if isinstance(t.password, Secret) else None)
                continue
            shards[self._worker_of(t)].append(t)
        # A BMC that failed the previous read is likely silent again, and a silent one holds an
        # in-flight slot for its whole per-call deadline. Tried first, those deadlines run beside
        # the rest of the sweep; in list order, the last of them would only start well into the
        # sweep and end it a deadline later. (sort is stable: the others keep their order.)
        for shard in shards:
            shard.sort(key=lambda t: t.key not in self._failed_last)
        self.calls_stuck = 0
        if any(shards):
            self.start()
            self._sweep_shards(shards, float(deadline), results)
        self._failed_last = {k for k, r in results.items() if not r.ok}
        return {k: results[k] for k in keys}

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

    # -- mechanics ------------------------------------------------------------------------------
    def _worker_of(self, t: BmcTarget) -> int:
        return zlib.crc32(t.target.encode()) % self.processes

    def _valid(self, targets: Sequence[BmcTarget], now: datetime) -> list[BmcTarget]:
        keys = [t.key for t in targets]
        if len(set(keys)) != len(keys):
            raise ValueError("targets: keys must be unique")
        valid: list[BmcTarget] = []
        for t in targets:
            try:
                t.check()
            except BmcInvalidInput as exc:
                password = t.password if isinstance(t.password, Secret) else None
                self._deliver(TimedReading(**vars(failed(t.key, exc, 0.0, password)), at=now))
                continue
            valid.append(t)
        return valid

    def _flush(self, sink: Sink, pending: list[TimedReading], final: bool = False) -> bool:
        """Hand ``pending`` to the sink and empty it; on failure keep it and say so (the sink
        already retried what it knows to be transient). ``final``: raise instead."""
        batch = list(pending)
        try:
            sink(batch)
        except Exception as exc:
            if final:
                raise
            log.warning("could not record %d readings (kept, retried): %s", len(batch), exc)
            return False
        del pending[: len(batch)]
        return True

    def _sweep_shards(self, shards: list[list[BmcTarget]], deadline: float, results: dict[str, PowerReading]) -> None:
        while True:  # answers of an earlier sweep that ended without them
            try:
                self._swept.get_nowait()
            except queue.Empty:
                break
        sent: set[int] = set()
        with self._lock:
            handles = list(self._handles)
            for i, h in enumerate(handles):
                if h is not None and shards[i]:
                    h.sweeping_until = time.monotonic() + deadline + self.GRACE
        for i, shard in enumerate(shards):
            if not shard:
                continue
            h = handles[i]
            try:
                if h is None or not h.ready:
                    raise OSError
                h.send(("sweep", shard, deadline))  # not under the lock: the pump goes on receiving
                sent.add(i)
            except (OSError, ValueError):
                self._lost_sweep(i, shard, results, "the worker process is gone")
        end = time.monotonic() + deadline + self.GRACE
        while sent:
            try:
                i, readings, stuck, why = self._swept.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if i not in sent:
                continue
            sent.discard(i)
            if readings is None:
                self._lost_sweep(i, shards[i], results, why)
                continue
            for reading in readings:
                results[reading.key] = reading
            if not self._check_health(i, len(shards[i]), stuck):
                self.calls_stuck += len(stuck)
        for i in sent:
            self._lost_sweep(i, shards[i], results, "the worker process did not answer in time")

    def _check_health(self, i: int, shard: int, stuck: list[float]) -> bool:
        """Replace a worker whose pyghmi looks wedged after a sweep: a call stuck far longer
        than pyghmi's own retries take, or half its BMCs stuck at once. A fresh process costs a
        second and cold logins; a wedged pyghmi would fail every sweep until restarted. True:
        replaced."""
        if not looks_wedged(stuck, shard, self.RECYCLE_AFTER):
            return False
        with self._lock:
            h = self._handles[i]
            if h is not None:
                self._lost(h, f"{len(stuck)} calls stuck in pyghmi (oldest {max(stuck):.0f} s)")
        return True

    def _lost_sweep(self, i: int, shard: list[BmcTarget], results: dict[str, PowerReading], why: str) -> None:
        with self._lock:
            h = self._handles[i]
            if h is not None:
                self._lost(h, why)
        for t in shard:
            results.setdefault(t.key, failed(t.key, IpmiError(why, target=t.target, operation="power_state"), 0.0))

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
                    assert isinstance(conn, Connection)
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

    def _receive(self, h: _Handle, msg: tuple[Any, ...]) -> None:
        h.heard = time.monotonic()
        if msg[0] == "ready":
            h.ready, h.shim = True, bool(msg[1])
            self._send_shard(h.index)
            return
        if msg[0] == "swept":
            h.sweeping_until = 0.0
            self._swept.put((h.index, msg[1], msg[2], ""))
            return
        _, readings, inflight, skipped, stuck = msg
        h.inflight, h.skipped = inflight, skipped
        self._receive_readings(readings)
        if self._shards[h.index]:  # a sweep's stuck calls are judged by the sweep
            long_stuck = [a for a in stuck if a > self.STUCK_AFTER]
            if looks_wedged(long_stuck, len(self._shards[h.index]), self.RECYCLE_AFTER):
                self._lost(h, f"{len(long_stuck)} calls stuck in pyghmi (oldest {max(long_stuck):.0f} s)")

    def _receive_readings(self, readings: list[Wire]) -> None:
        for key, state, error, kind, elapsed, at in readings:
            if key in self._targets:  # removed meanwhile: not reported
                self._deliver(TimedReading(key, state, error, elapsed, kind, at=datetime.fromtimestamp(at, UTC)))

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
            elif h.ready and now - h.heard > self.HANG_AFTER and now > h.sweeping_until:
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
        if h is None or not h.ready or self.period is None:
            return  # sent when it says it is ready
        signature = tuple((t.ident(), phase) for t, phase in self._shards[i])
        if signature == h.sent:
            return
        try:
            h.send(("shard", list(self._shards[i]), self.period))
            h.sent = signature
        except (OSError, ValueError):
            self._lost(h, "the worker process is gone")

    def _lost(self, h: _Handle, why: str) -> None:
        """Replace a worker: its reads in flight become failed readings (a sweep it was doing
        ends for it), a fresh process takes its shard (on the next pump round, at most every
        ``RESTART_GAP`` seconds)."""
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
                r = failed(key, exc, max(0.0, time.time() - at), t.password)
                self._deliver(TimedReading(**vars(r), at=datetime.fromtimestamp(at, UTC)))
        if h.sweeping_until:
            self._swept.put((h.index, None, [], why))
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
