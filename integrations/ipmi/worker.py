"""A worker process of the power-poll engine (``watch.PowerWatch``), and its one bootstrap.

Started by the engine, not by hand::

    python -m metalflow.integrations.ipmi.worker <socket fd> <per_call_timeout> <concurrency> <patch 0|1>

Why processes: pyghmi runs every session of a process through one I/O thread, and its login
and packet handling are CPU-bound Python under the GIL, so more threads in one process give no
speedup; several processes do. Why fresh interpreters talking over a socket pair: pyghmi keeps
process-wide state (one I/O thread, its sessions); a forked child would inherit it half-way
through a call of another thread, and multiprocessing's ``spawn`` re-imports the caller's
``__main__``, which breaks callers without a main guard.

A worker applies the pyghmi shim (``patch_pyghmi``) before its first read, says it is ready,
then does what its parent asks, in one of two ways (a watch uses one of them):

- a **shard** (``("shard", [(target, phase)...], period)``): read each BMC once per period at
  its own phase (``_Worker.assign``/``dispatch``), sending the readings at least every 0.1 s
  while there are any, and a heartbeat with the ages of the calls stuck in pyghmi every
  ``PowerWatch.HEARTBEAT`` seconds;
- a **sweep** (``("sweep", [target...], budget)``): one round, every target read now, in the
  order given, all within ``budget`` seconds (``_Worker.sweep``); the answer carries the
  readings and the calls still stuck in pyghmi.

Inside, a thread pool bounds the concurrency; each read goes through the BMC's own
``PyghmiLink`` (one per BMC, kept between reads: sessions are reused), i.e. through the BMC's
``CallGuard`` with the per-call timeout. A silent BMC therefore costs its own per-call timeout
and one slot for that long, never the round, and at most one thread of it stays in pyghmi (see
``guard``). Two targets naming one BMC (a duplicated host record) are read one after the other:
pyghmi mixes up the replies of concurrent logins to one BMC with different credentials (it
routes them by BMC address and local port).
"""

from __future__ import annotations

import heapq
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from metalflow.integrations.ipmi.errors import BmcTimeout
from metalflow.integrations.ipmi.guard import CallGuards
from metalflow.integrations.ipmi.readings import BmcTarget, PowerReading, failed
from metalflow.integrations.ipmi.validate import check_username
from metalflow.integrations.ipmi.wire import PyghmiLink

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
HEARTBEAT = 1.0  # a worker reports at least this often (PowerWatch.HEARTBEAT)
FLUSH = 0.1  # readings are sent at most this long after they were read

Ident = tuple[str, str, int, str, bytes]
#: A reading on the wire of a shard: key, state, error, kind, elapsed, start (epoch seconds).
Wire = tuple[str, str | None, str | None, str | None, float, float]


def _next_slot(phase: float, period: float, not_before_wall: float) -> float:
    """The first wall-clock time >= ``not_before_wall`` that is ``phase`` modulo ``period``."""
    return not_before_wall + (phase - not_before_wall) % period


class _Entry:
    """One BMC of a shard: its link (session), phase and next slot."""

    __slots__ = ("target", "ident", "phase", "link", "due", "busy", "last_start")

    def __init__(self, target: BmcTarget, ident: Ident, phase: float):
        self.target, self.ident, self.phase = target, ident, phase
        self.link: PyghmiLink | None = None
        self.due = 0.0  # monotonic
        self.busy = False  # a read is running (in our pool)
        self.last_start = float("-inf")  # monotonic start of the last read


class _Worker:
    """A worker's state: a thread pool, one link per BMC, its shard's schedule, the readings to
    send."""

    def __init__(self, per_call_timeout: float, concurrency: int):
        self.per_call_timeout = per_call_timeout
        self.period = 1.0
        self._guards = CallGuards()  # this process's, one per BMC
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ipmi-watch")
        self._entries: dict[str, _Entry] = {}  # the shard, by key
        self._links: dict[Ident, PyghmiLink] = {}  # the sweeps', by target and credentials
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._lock = threading.Lock()  # entries' busy flags, the in-flight map, the outbox
        self._outbox: list[Wire] = []
        self._inflight: dict[str, float] = {}  # key -> wall time its read started
        self._endpoints: dict[tuple[str, int], threading.Lock] = {}
        self.skipped = 0

    def _new_link(self, t: BmcTarget) -> PyghmiLink:
        return PyghmiLink(t.address, t.port, check_username(t.username), t.password, self._guards)

    # -- a shard, each BMC at its phase --------------------------------------------------------
    def assign(self, shard: Sequence[tuple[BmcTarget, float]], period: float) -> None:
        """Take a new shard: keep the links of unchanged targets, log out of dropped ones,
        move each target to its (possibly new) slot."""
        self.period = period
        now, wall = time.monotonic(), time.time()
        new: dict[str, _Entry] = {}
        with self._lock:
            for target, phase in shard:
                ident = target.ident()
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
                    self._pool.submit(self._read_entry, e)
                e.due = due + self.period
                if e.due <= now:  # fell behind (a stall): the next slot after now
                    e.due = due + self.period * (1 + (now - due) // self.period)
                self._push(e)
            return max(0.0, self._heap[0][0] - now) if self._heap else 1.0

    def _read_entry(self, e: _Entry) -> None:
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
                    e.link = self._new_link(t)
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
            r = failed(t.key, exc, time.monotonic() - start, t.password)
        with self._lock:
            e.busy = False
            self._inflight.pop(t.key, None)
            current = self._entries.get(t.key) is e
            if current:  # a target removed meanwhile is not reported
                self._outbox.append((r.key, r.state, r.error, r.kind, r.elapsed, at))
        if not current and e.link is not None:
            e.link.close()  # removed while this read made its session

    def report(self, with_stuck: bool) -> tuple[list[Wire], dict[str, float], int, list[float]]:
        """The readings since the last report, the reads in flight, the skipped slots so far and
        (``with_stuck``) the ages of calls stuck in pyghmi (abandoned by their guard, still
        running)."""
        with self._lock:
            out, self._outbox = self._outbox, []
            inflight = dict(self._inflight)
        return out, inflight, self.skipped, self.stuck() if with_stuck else []

    def has_news(self) -> bool:
        """Readings to send, or reads in flight (the parent must know them, to report them
        failed if this process dies)."""
        with self._lock:
            return bool(self._outbox or self._inflight)

    # -- a sweep, every BMC now ----------------------------------------------------------------
    def sweep(self, targets: Sequence[BmcTarget], budget: float) -> list[PowerReading]:
        """Read every target now, in the order given (the pool starts them in that order),
        all within ``budget`` seconds."""
        end = time.monotonic() + budget
        endpoints: dict[tuple[str, int], threading.Lock] = {}
        futures = [
            self._pool.submit(self._read_now, t, end, endpoints.setdefault((t.address, t.port), threading.Lock()))
            for t in targets
        ]
        # Every read returns by ``end`` (its timeout is capped by it); the margin only covers a
        # scheduling hiccup on a loaded machine.
        wait_futures(futures, timeout=budget + 1.0)
        out = []
        for t, f in zip(targets, futures, strict=True):
            if f.done():
                out.append(f.result())
            else:
                f.cancel()
                out.append(
                    failed(t.key, BmcTimeout("not read in time", target=t.target, operation="power_state"), budget)
                )
        return out

    def _read_now(self, t: BmcTarget, end: float, endpoint: threading.Lock) -> PowerReading:
        start, started = time.monotonic(), time.time()
        try:
            if not endpoint.acquire(timeout=max(0.0, min(self.per_call_timeout, end - start))):
                raise BmcTimeout(
                    "not read: another target with this BMC address took the time",
                    target=t.target,
                    operation="power_state",
                )
            try:
                timeout = min(self.per_call_timeout - (time.monotonic() - start), end - time.monotonic())
                if timeout <= 0:
                    raise BmcTimeout(
                        "not read: the sweep deadline came first", target=t.target, operation="power_state"
                    )
                on = self._sweep_link(t).power_is_on(timeout=timeout, operation="power_state")
            finally:
                endpoint.release()
            return PowerReading(t.key, "on" if on else "off", None, time.monotonic() - start, started=started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reading
            return failed(t.key, exc, time.monotonic() - start, t.password, started)

    def _sweep_link(self, t: BmcTarget) -> PyghmiLink:
        # Only this sweep's reads touch ``_links`` meanwhile, and one key is in a sweep once.
        ident = t.ident()
        link = self._links.get(ident)
        if link is None:
            link = self._links[ident] = self._new_link(t)
        return link

    def forget_except(self, targets: Sequence[BmcTarget]) -> None:
        """Log out of and drop the sweep links of BMCs no longer polled (or polled with other
        credentials)."""
        keep = {t.ident() for t in targets}
        with self._lock:
            gone = [self._links.pop(i) for i in [i for i in self._links if i not in keep]]
        for link in gone:
            link.close()

    # -- both ----------------------------------------------------------------------------------
    def stuck(self) -> list[float]:
        """How long each call still running in pyghmi has been running (abandoned calls)."""
        with self._lock:
            links = [e.link for e in self._entries.values() if e.link is not None] + list(self._links.values())
        return [a for a in (link.guard.stuck_for() for link in links) if a > 0]

    def close(self) -> None:
        with self._lock:
            links = [e.link for e in self._entries.values() if e.link is not None] + list(self._links.values())
            self._entries, self._heap, self._links = {}, [], {}
        for link in links:
            link.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def worker_main(conn: Connection, per_call_timeout: float, concurrency: int, patch: bool) -> None:
    """A worker: apply the shim, then serve its shard or its sweeps until told to stop or until
    the parent goes away (end of file on the socket)."""
    from metalflow.integrations.ipmi.shim import patch_pyghmi, shim_active

    if patch:
        patch_pyghmi()
    worker = _Worker(per_call_timeout, concurrency)
    try:
        conn.send(("ready", shim_active()))
        last_sent = last_beat = time.monotonic()
        while True:
            wait = worker.dispatch()
            now = time.monotonic()
            beat = now - last_beat >= HEARTBEAT
            if beat or (worker.has_news() and now - last_sent >= FLUSH):
                conn.send(("report", *worker.report(with_stuck=beat)))
                last_sent = now
                if beat:
                    last_beat = now
            if conn.poll(min(wait, FLUSH)):
                msg = conn.recv()
                if msg is None:
                    break
                if msg[0] == "sweep":
                    _, targets, budget = msg
                    conn.send(("swept", worker.sweep(targets, budget), worker.stuck()))
                    worker.forget_except(targets)
                    last_sent = last_beat = time.monotonic()
                else:
                    _, shard, period = msg
                    worker.assign(shard, period)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        worker.close()


def main(argv: list[str]) -> None:
    fd, per_call_timeout, concurrency, patch = argv
    worker_main(Connection(int(fd)), float(per_call_timeout), int(concurrency), patch == "1")


class WorkerProcess:
    """The parent's handle on one worker process: ``python -m ...worker <fd> <args...>``;
    ``conn`` is the parent's end of the socket pair."""

    def __init__(self, per_call_timeout: float, concurrency: int, patch: bool):
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
        args = [str(child.fileno()), repr(per_call_timeout), str(concurrency), "1" if patch else "0"]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metalflow.integrations.ipmi.worker", *args],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, msg: Any) -> None:
        self.conn.send(msg)

    def ask_to_stop(self) -> None:
        """Ask the worker to log out and exit (it also exits when the socket closes)."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass

    def kill(self, wait: float = 0.0) -> None:
        """Give it ``wait`` s to exit on its own, then close the socket and end it."""
        if wait > 0:
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: pyghmi's threads are daemons, the process just ends
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
