"""Read the power state of many BMCs at once (the power poll).

Why processes: pyghmi runs every session of a process through one I/O thread, and its login
and packet handling are CPU-bound Python under the GIL, so more threads in one process give no
speedup; several processes do. ``BulkPowerReader`` keeps a small pool of worker processes
(started once, reused by every sweep, closed by ``close()``). Each sweep shards the targets
over the workers by a stable hash of their BMC address, so a BMC is always read by the same worker
(its session can be reused between close sweeps, and a call still stuck from the previous
sweep is found by the same guard).

Inside a worker, a thread pool bounds the concurrency; each read goes through the BMC's own
``PyghmiLink`` (one per BMC, kept between sweeps), i.e. through a ``CallGuard`` with the
per-call timeout. A silent BMC therefore costs its own per-call timeout and one slot for that
long, never the sweep, and at most one thread of it stays in pyghmi (see ``guard``). The
workers apply the pyghmi shim (``patch_pyghmi``) before their first read. After each sweep a
worker reports the calls still stuck in pyghmi; a worker that looks wedged (a call stuck for
minutes, or half its BMCs at once) is replaced by a fresh process before the next sweep. The
BMCs that failed the previous sweep are tried first (see ``read``).

Workers are fresh interpreters (``python -m integrations.ipmi.bulk_worker``) talking over a
socket pair: a forked child would inherit pyghmi's global state (an I/O thread object without
its thread) from a parent that already used pyghmi, and multiprocessing's ``spawn`` re-imports
the caller's ``__main__``, which breaks callers without a main guard.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections

from metalflow.integrations.common import Secret
from metalflow.integrations.ipmi.errors import BmcInvalidInput, BmcTimeout, IpmiError, scrub
from metalflow.integrations.ipmi.validate import check_address, check_password, check_port, check_username
from metalflow.integrations.ipmi.wire import PyghmiLink
from metalflow.integrations.ipmi.workerproc import WorkerProcess

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BmcTarget:
    """One BMC to read; ``key`` names it in the result (e.g. the host name)."""

    key: str
    address: str
    username: str
    password: Secret = field(repr=False)
    port: int = 623

    def __post_init__(self) -> None:
        if isinstance(self.password, (str, bytes)):
            object.__setattr__(self, "password", Secret(self.password))

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class PowerReading:
    """The outcome for one BMC: ``state`` 'on'/'off', or ``error`` (a message without secrets)
    and ``kind``, the error class name (``BmcTimeout``, ``BmcAuthFailed``...), so a caller can
    tell a silent BMC from a wrong password. ``elapsed`` is the time spent on it, in seconds;
    ``started`` when its read began (epoch seconds; None: never tried, e.g. refused offline)."""

    key: str
    state: str | None
    error: str | None
    elapsed: float
    kind: str | None = None
    started: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _failed(
    key: str, exc: BaseException, elapsed: float, password: Secret | None = None, started: float | None = None
) -> PowerReading:
    return PowerReading(key, None, scrub(str(exc), password), elapsed, type(exc).__name__, started)


def looks_wedged(stuck: list[float], shard: int, limit: float) -> bool:
    """Whether a worker's pyghmi should be given up on, from the ages of the calls still stuck
    in it after a sweep of ``shard`` BMCs."""
    return any(a > limit for a in stuck) or (len(stuck) >= 8 and 2 * len(stuck) >= shard)


class _SweepWorker:
    """The state of one worker process: its thread pool and one link per BMC."""

    def __init__(self, per_call_timeout: float, concurrency: int):
        self.per_call_timeout = per_call_timeout
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ipmi-sweep")
        self._links: dict[tuple, PyghmiLink] = {}  # by target and a digest of its credentials

    @staticmethod
    def _ident(t: BmcTarget) -> tuple:
        return (t.key, t.address, t.port, t.username, hashlib.sha256(t.password.reveal_bytes()).digest())

    def _link(self, t: BmcTarget) -> PyghmiLink:
        ident = self._ident(t)
        link = self._links.get(ident)
        if link is None:
            link = self._links[ident] = PyghmiLink(t.address, t.port, check_username(t.username), t.password)
        return link

    def _read(self, t: BmcTarget, end: float, endpoint: threading.Lock) -> PowerReading:
        start, started = time.monotonic(), time.time()
        try:
            # Two targets naming one BMC (a duplicated host record) are read one after the
            # other: pyghmi mixes up the replies of concurrent logins to one BMC with different
            # credentials (it routes them by BMC address and local port).
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
                on = self._link(t).power_is_on(timeout=timeout, operation="power_state")
            finally:
                endpoint.release()
            return PowerReading(t.key, "on" if on else "off", None, time.monotonic() - start, started=started)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a reading
            return _failed(t.key, exc, time.monotonic() - start, t.password, started)

    def sweep(self, targets: Sequence[BmcTarget], budget: float) -> list[PowerReading]:
        end = time.monotonic() + budget
        endpoints: dict[tuple[str, int], threading.Lock] = {}
        futures = [
            self._pool.submit(self._read, t, end, endpoints.setdefault((t.address, t.port), threading.Lock()))
            for t in targets
        ]
        # Every read returns by ``end`` (its timeout is capped by it); the margin only covers a
        # scheduling hiccup on a loaded machine.
        wait_futures(futures, timeout=budget + 1.0)
        out = []
        for t, f in zip(targets, futures):
            if f.done():
                out.append(f.result())
            else:
                f.cancel()
                out.append(
                    _failed(t.key, BmcTimeout("not read in time", target=t.target, operation="power_state"), budget)
                )
        return out

    def stuck(self) -> list[float]:
        """How long each call still running in pyghmi has been running (abandoned calls)."""
        return [a for a in (link.guard.stuck_for() for link in self._links.values()) if a > 0]

    def forget_except(self, targets: Sequence[BmcTarget]) -> None:
        """Log out of and drop the links of BMCs no longer polled (or polled with other
        credentials)."""
        keep = {self._ident(t) for t in targets}
        for ident in [i for i in self._links if i not in keep]:
            self._links.pop(ident).close()

    def close(self) -> None:
        self.forget_except(())
        self._pool.shutdown(wait=False, cancel_futures=True)


def worker_main(conn: Connection, per_call_timeout: float, concurrency: int, patch: bool) -> None:
    """A worker process: apply the shim, then answer sweeps until told to stop or until the
    parent goes away (end of file on the socket)."""
    from metalflow.integrations.ipmi.shim import patch_pyghmi, shim_active

    if patch:
        patch_pyghmi()
    worker = _SweepWorker(per_call_timeout, concurrency)
    try:
        conn.send(("ready", shim_active()))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            targets, budget = msg
            conn.send((worker.sweep(targets, budget), worker.stuck()))
            worker.forget_except(targets)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        worker.close()


class _Worker(WorkerProcess):
    """The parent's handle on one worker process."""

    def __init__(self, index: int, per_call_timeout: float, concurrency: int, patch: bool):
        super().__init__(
            ["-m", "metalflow.integrations.ipmi.bulk_worker"],
            repr(per_call_timeout),
            str(concurrency),
            "1" if patch else "0",
        )
        self.index = index

    def stop(self, wait: float) -> None:
        """Ask it to stop, then make sure it did."""
        self.ask_to_stop()
        self.kill(wait)


class BulkPowerReader:
    """Reads many BMCs' power states concurrently from a reusable pool of worker processes."""

    START_TIMEOUT = 60.0  # spawn + import of pyghmi on a loaded machine
    GRACE = 3.0  # beyond a sweep's deadline before a worker is declared hung
    RECYCLE_AFTER = 120.0  # a call stuck in pyghmi this long gets its worker restarted

    def __init__(self, processes: int = 2, per_call_timeout: float = 3.0, *, concurrency: int = 32, patch: bool = True):
        if processes < 1:
            raise ValueError("processes: at least 1")
        if per_call_timeout <= 0:
            raise ValueError("per_call_timeout: must be positive")
        if concurrency < 1:
            raise ValueError("concurrency: at least 1")
        self.processes = processes
        self.per_call_timeout = per_call_timeout
        self.concurrency = concurrency
        self.patch = patch
        self._workers: list[_Worker | None] = [None] * processes
        self._shim: list[bool] = [False] * processes
        self._failed_last: set[str] = set()  # keys whose previous read failed: tried first
        #: Calls the last read abandoned that were still running in pyghmi when it ended (a BMC
        #: that stopped answering mid-session holds one for about 20 s, even once it answers
        #: again). Until they end, the next read of those BMCs in this reader waits for them and
        #: fails; a caller that needs that read to count (an operator checking a repaired BMC)
        #: closes the reader instead of reusing it.
        self.calls_stuck = 0

    def __repr__(self) -> str:
        return f"BulkPowerReader(processes={self.processes}, per_call_timeout={self.per_call_timeout})"

    def __enter__(self) -> BulkPowerReader:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def shim_active(self) -> bool:
        """True when every worker started runs with the wake-up race closed."""
        return all(self._shim[i] for i, w in enumerate(self._workers) if w is not None)

    def start(self) -> None:
        """Start the missing workers (all of them the first time) and wait until they are ready."""
        pending = []
        for i, w in enumerate(self._workers):
            if w is not None and w.alive():
                continue
            if w is not None:
                w.kill()
            self._workers[i] = _Worker(i, self.per_call_timeout, self.concurrency, self.patch)
            pending.append(i)
        end = time.monotonic() + self.START_TIMEOUT
        for i in pending:
            conn = self._workers[i].conn
            try:
                if not conn.poll(max(0.0, end - time.monotonic())):
                    raise TimeoutError
                _, self._shim[i] = conn.recv()
            except (EOFError, OSError, TimeoutError):
                self._kill(i)
                raise RuntimeError(
                    f"IPMI bulk worker {i} did not start within {self.START_TIMEOUT:.0f} s (see its output above)"
                ) from None

    def worker_pids(self) -> list[int | None]:
        """The workers' process ids (None: not running), e.g. to check that sweeps reuse them."""
        return [w.pid if w is not None and w.alive() else None for w in self._workers]

    def read(self, targets: Sequence[BmcTarget], deadline: float) -> dict[str, PowerReading]:
        """Every target's power state or error, within ``deadline`` seconds (counted once the
        workers are up; the first call starts them). Targets that fail the offline checks get
        a ``BmcInvalidInput`` reading and are not sent."""
        keys = [t.key for t in targets]
        if len(set(keys)) != len(keys):
            raise ValueError("targets: keys must be unique")
        if deadline <= 0:
            raise ValueError("deadline: must be positive")
        results: dict[str, PowerReading] = {}
        shards: list[list[BmcTarget]] = [[] for _ in range(self.processes)]
        for t in targets:
            try:
                check_address(t.address, t.target)
                check_port(t.port, t.target)
                check_username(t.username, t.target)
                check_password(t.password, t.target)
            except BmcInvalidInput as exc:
                results[t.key] = _failed(t.key, exc, 0.0, t.password if isinstance(t.password, Secret) else None)
                continue
            # By BMC endpoint: one BMC is always read by the same worker (see _SweepWorker._read).
            shards[zlib.crc32(t.target.encode()) % self.processes].append(t)
        # A BMC that failed the previous read is likely silent again, and a silent one holds an
        # in-flight slot for its whole per-call deadline. Tried first, those deadlines run beside
        # the rest of the sweep; in list order, the last of them would only start well into the
        # sweep and end it a deadline later. (sort is stable: the others keep their order.)
        for shard in shards:
            shard.sort(key=lambda t: t.key not in self._failed_last)
        if any(shards):
            self.start()
        sent: dict[Connection, int] = {}
        for i, shard in enumerate(shards):
            if shard:
                conn = self._workers[i].conn
                try:
                    conn.send((shard, float(deadline)))
                    sent[conn] = i
                except (OSError, ValueError):
                    self._lost(i, shard, results, "the worker process is gone")
        end = time.monotonic() + deadline + self.GRACE
        self.calls_stuck = 0
        while sent:
            ready = wait_connections(list(sent), timeout=max(0.0, end - time.monotonic()))
            if not ready:
                break
            for conn in ready:
                i = sent.pop(conn)
                try:
                    readings, stuck = conn.recv()
                except (EOFError, OSError):
                    self._lost(i, shards[i], results, "the worker process died")
                    continue
                for reading in readings:
                    results[reading.key] = reading
                if not self._check_health(i, len(shards[i]), stuck):
                    self.calls_stuck += len(stuck)
        for i in sent.values():
            self._lost(i, shards[i], results, "the worker process did not answer in time")
        self._failed_last = {k for k, r in results.items() if not r.ok}
        return {k: results[k] for k in keys}

    def _check_health(self, i: int, shard: int, stuck: list[float]) -> bool:
        """Recycle a worker whose pyghmi looks wedged: a call stuck far longer than pyghmi's own
        retries take, or half its BMCs stuck at once. A fresh process costs a second and cold
        logins; a wedged pyghmi would fail every sweep until restarted. True: recycled."""
        if looks_wedged(stuck, shard, self.RECYCLE_AFTER):
            log.warning(
                "IPMI bulk worker %d has %d calls stuck in pyghmi (oldest %.0f s); restarting it",
                i,
                len(stuck),
                max(stuck),
            )
            self._kill(i)
            return True
        return False

    def _lost(self, i: int, shard: list[BmcTarget], results: dict, why: str) -> None:
        log.warning("IPMI bulk worker %d: %s; restarting it on the next sweep", i, why)
        self._kill(i)
        for t in shard:
            results.setdefault(t.key, _failed(t.key, IpmiError(why, target=t.target, operation="power_state"), 0.0))

    def _kill(self, i: int) -> None:
        w, self._workers[i] = self._workers[i], None
        if w is not None:
            w.kill()

    def close(self) -> None:
        """Stop the workers (they log out of their sessions first). Safe to call twice."""
        workers = [w for w in self._workers if w is not None]
        self._workers = [None] * self.processes
        for w in workers:
            w.ask_to_stop()
        for w in workers:
            w.stop(wait=10)
