"""power-poll: read every host's BMC, record state and time, and move hosts in and out of
maintenance (three failures in a row in, one success out). Scheduled.

Two ways to run:

- ``window == 0``: one sweep (the bulk reader: processes, bounded concurrency, a deadline per
  BMC), every host stamped with the sweep's start. What an operator triggers by hand. The
  reader is kept ``READER_LINGER`` seconds for the next by-hand sweep of the process (sessions
  less than 20 s idle are reused, and the BMCs that failed this sweep are tried first), unless
  the sweep left calls stuck on silent BMCs (see ``read_all``).
- ``window > 0``: long-running. The run polls until its *scheduled* start + ``window`` with
  ``PowerWatch``: each BMC read once per ``power_poll_period`` at its own phase, every reading
  stamped with the time of its read and recorded within about half a second. Scheduled every
  ``power_poll_interval`` seconds with ``window`` equal to it, consecutive runs hand over with
  neither gap nor overlap to speak of, and the recorded states are never older than about one
  period (a sweep every interval leaves them up to interval + sweep time old). One such run
  at a time: the global concurrency limit ``power-poll`` (limit 1) guards it.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from metalflow.integrations.common.names import POWER_POLL_LIMIT
from metalflow.integrations.inventory import PowerReading as InvReading
from metalflow.integrations.ipmi import BulkPowerReader, PowerWatch
from metalflow.integrations.ipmi.watch import WatchStats
from metalflow.tasks import clients
from metalflow.tasks.common import current_run_id, logger, write_journal
from metalflow.tasks.credentials import CredentialError
from metalflow.tasks.locks import acquire, ensure_limit
from metalflow.tasks.settings import settings

#: The global concurrency limit (limit 1) held by the long-running poll.
POLL_LIMIT = POWER_POLL_LIMIT
#: Seconds the limit outlives a poller that died without releasing it (Prefect renews the lease
#: every 3/4 of it while the run lives; its minimum is 60). The next scheduled run waits for it.
POLL_LOCK_LEASE = 60.0
FLUSH_EVERY = 0.5  # seconds between two inventory writes of the drained readings
PROGRESS_EVERY = 30.0  # seconds between two progress lines in the run's log
BUSY_MESSAGE = "another power-poll run is polling"
MAX_PENDING = 200_000  # readings kept while the inventory cannot be written
R = TypeVar("R", PowerWatch, BulkPowerReader)


#: Seconds a by-hand sweep's reader (its worker processes and BMC sessions) is kept for the next
#: by-hand sweep of this process. A session idle for longer than ``PyghmiLink.REUSE_IDLE`` (20 s;
#: real BMCs drop one after about a minute) is replaced by a fresh login, so a sweep within 20 s
#: skips the logins and a later one only the workers' start; pyghmi sends nothing between
#: calls, so a kept reader costs the BMCs nothing.
READER_LINGER = 120.0


@task(name="read-all-bmcs", cache_policy=NO_CACHE, persist_result=False, retries=0)
def read_all(targets: list) -> dict:
    cfg = settings()
    key = (cfg.power_poll_processes, cfg.power_poll_call_timeout)
    reader = READERS.take(key)
    if reader is not None:
        logger().info("reading with the previous by-hand sweep's BMC workers and sessions")
    reader = reader or BulkPowerReader(processes=cfg.power_poll_processes, per_call_timeout=cfg.power_poll_call_timeout)
    with ExitStack() as keep:
        keep.callback(reader.close)  # unless the sweep ends as it should and can be kept
        results = reader.read(targets, deadline=max(10.0, cfg.power_poll_interval * 0.8))
        if reader.calls_stuck:
            # Calls to BMCs that stopped answering are still running in pyghmi; a kept reader
            # would fail those BMCs again until the calls end (~20 s), even once they answer:
            # an operator who repairs one and polls by hand would see it stay in maintenance.
            logger().info(
                "not keeping the BMC workers for the next sweep: %d calls to silent BMCs are still running in them",
                reader.calls_stuck,
            )
            return results
        keep.pop_all()
    READERS.park(reader, key, linger=READER_LINGER)
    return results


@task(name="record-power", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1)
def record(readings: list[InvReading]):
    """One transaction for every reading; maintenance changes are journaled with this run's id."""
    return clients.inventory().record_power_bulk(readings, run_id=current_run_id() or None)


def journal_changes(transitions: list, journal: Callable[..., None] = write_journal) -> None:
    """A power state that changed between two readings changed behind metalflow's back (its
    own power actions record the state they verified): each goes into that host's journal."""
    for t in transitions:
        if {t.previous, t.state} != {"on", "off"}:
            continue  # first reading, or a failed one (counted toward maintenance instead)
        journal(t.host, "power-changed", "ipmi", "ok", f"{t.previous} → {t.state} (seen by power-poll)")


def apply_outcome(outcome, log, journal: Callable[..., None] = write_journal) -> list:
    """What both ways of polling do with what recording readings did (a ``BulkPowerResult``):
    say which hosts went into or out of maintenance, journal the power states that changed
    behind metalflow's back. Returns the transitions that changed a host's state."""
    for name in outcome.entered_maintenance:
        log.warning(
            "%s put in maintenance: its BMC failed %d polls in a row", name, settings().maintenance_after_failures
        )
    for name in outcome.left_maintenance:
        log.info("%s answers again: out of maintenance", name)
    changed = [t for t in outcome.transitions if t.changed and not t.stale]
    journal_changes(changed, journal)
    return changed


def _targets(hosts: Sequence, now: datetime) -> tuple[list, list[InvReading]]:
    """Each host's BMC target; a host whose credentials cannot be loaded gets a failed reading."""
    targets, failed = [], []
    for h in hosts:
        try:
            targets.append(clients.bmc_target(h))
        except CredentialError as exc:
            failed.append(InvReading(h.name, "unknown", now, f"credentials: {exc}"))
    return targets, failed


@dataclass
class _Tally:
    """What a run saw, for its summary and artifact."""

    hosts: int = 0
    last: dict[str, InvReading] = field(default_factory=dict)  # each host's latest reading
    changed: list = field(default_factory=list)
    entered: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def add(self, readings: Sequence[InvReading], outcome, changed: list) -> None:
        for r in readings:
            prev = self.last.get(r.host)
            if prev is None or prev.at is None or (r.at is not None and r.at >= prev.at):
                self.last[r.host] = r
        self.changed += changed
        self.entered += [n for n in outcome.entered_maintenance if n not in self.entered]
        self.left += [n for n in outcome.left_maintenance if n not in self.left]

    def summary(self, names: set[str] | None = None) -> dict:
        last = [r for h, r in self.last.items() if names is None or h in names]
        return {
            "hosts": self.hosts,
            "on": sum(1 for r in last if r.state == "on"),
            "off": sum(1 for r in last if r.state == "off"),
            "failed": sum(1 for r in last if r.error),
            "changed": len(self.changed),
            "entered_maintenance": list(self.entered),
            "left_maintenance": list(self.left),
        }

    def markdown(self, summary: dict, extra: list[str] = ()) -> str:
        bad = sorted((r for r in self.last.values() if r.error), key=lambda r: r.host)
        lines = [
            f"# power-poll: {summary['hosts']} hosts",
            "",
            f"on **{summary['on']}**, off **{summary['off']}**, failed **{summary['failed']}**, "
            f"changed **{summary['changed']}**",
            "",
            *extra,
        ]
        if self.changed:
            lines += ["| host | was | now |", "|---|---|---|"]
            lines += [f"| {t.host} | {t.previous} | {t.state} |" for t in self.changed[:200]]
        if bad:
            lines += ["", "| host | error |", "|---|---|"] + [f"| {r.host} | {r.error[:160]} |" for r in bad[:200]]
        if self.entered or self.left:
            lines += [
                "",
                f"into maintenance: {', '.join(self.entered) or '-'}",
                f"out of maintenance: {', '.join(self.left) or '-'}",
            ]
        return "\n".join(lines)


def _publish(markdown: str) -> None:
    create_markdown_artifact(markdown=markdown, key="power-poll", description="last power poll")


@flow(name="power-poll", flow_run_name="power-poll", log_prints=True)
def power_poll(window: float = 0) -> dict:
    """``window`` 0: one sweep of every host. ``window`` > 0: poll continuously until the run's
    scheduled start + ``window`` seconds (see the module docstring)."""
    if window < 0:
        raise ValueError(f"window: {window} is negative; give 0 (one sweep) or the seconds to poll for")
    if window == 0:
        return _sweep()
    return _watch(window)


def _sweep() -> dict:
    log = logger()
    hosts = clients.inventory().list_hosts()
    now = datetime.now(UTC)
    targets, failed = _targets(hosts, now)
    results = read_all(targets) if targets else {}
    readings = failed + [
        InvReading(key, r.state if r.ok else "unknown", now, None if r.ok else f"{r.kind}: {r.error}")
        for key, r in results.items()
    ]
    outcome = record(readings)
    tally = _Tally(hosts=len(hosts))
    tally.add(readings, outcome, apply_outcome(outcome, log))
    summary = tally.summary()
    _publish(tally.markdown(summary))
    return summary


# --- the long-running poll ------------------------------------------------------------------------


def _window_end(window: float) -> float:
    """The wall-clock end of this run: its scheduled start + ``window`` (now + ``window`` outside
    a run). Ending at the scheduled time, not at start + window, is what makes consecutive
    scheduled runs hand over without a gap or an overlap that grows with start delays."""
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time or datetime.now(UTC)
    return start.timestamp() + window


@contextmanager
def _poll_lock(until: float) -> Iterator[bool]:
    """Hold the ``power-poll`` limit for the body; yields False when another run held it until
    ``until`` (wall clock). One try at a time and no client timeout (see ``runbook.host_lock``:
    a client-side timeout can leave a slot the server granted held by nobody)."""
    ensure_limit(POLL_LIMIT)
    # A lease renewal that fails is retried, never fatal: at worst two pollers overlap until
    # one ends, which only doubles some reads.
    held = acquire(
        POLL_LIMIT,
        POLL_LOCK_LEASE,
        time.monotonic() + max(0.0, until - time.time()),
        on_wait=lambda: logger().info("waiting: %s; this run takes over when it ends", BUSY_MESSAGE),
    )
    got = held is not None
    held = held or ExitStack()
    with held:
        yield got


def _watch(window: float) -> dict:
    log = logger()
    until = _window_end(window)
    with _poll_lock(until) as got:
        if not got:
            log.info("%s; this run ends without polling", BUSY_MESSAGE)
            summary = {"hosts": 0, "reads": 0, "polled": False, "message": BUSY_MESSAGE}
            _publish(f"# power-poll: not polled\n\n{BUSY_MESSAGE} for the whole window of this run ({window:g} s).")
            return summary
        # The whole loop is ONE task: a task per batch of readings would cost 5-10 ms each alone
        # and 140-195 ms under load (reference/prefect.md), twice a second for hours.
        return watch_bmcs(until)


class Keeper(Generic[R]):
    """Keeps one poller (a ``PowerWatch`` or a ``BulkPowerReader``: worker processes and BMC
    sessions) alive between two runs of one process, so the next run takes it over instead of
    starting workers and logging in to every BMC again.

    For the long-running poll (``WATCHES``): without it, each handover left every host's state
    about two periods old (20 s at 10 s a read), every ``power_poll_interval``. A parked watch
    goes on reading at its phases; the next run drains what it read meanwhile, each reading
    stamped with its own time. For by-hand sweeps (``READERS``): the next sweep within
    ``READER_LINGER`` reuses the reader's workers, and its sessions if they idled less than
    20 s. A poller nobody takes within ``linger`` seconds is closed (logged out), and so is one
    parked when the process exits. Runs on process workers (a process per run) gain nothing
    from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parked: tuple[R, tuple, threading.Timer] | None = None
        atexit.register(self.close)

    def take(self, key: tuple) -> R | None:
        """The parked poller if it was made with ``key`` (else it is closed): None when none."""
        with self._lock:
            parked, self._parked = self._parked, None
        if parked is None:
            return None
        watch, parked_key, timer = parked
        timer.cancel()
        if parked_key == key:
            return watch
        watch.close()
        return None

    def park(self, watch: R, key: tuple, linger: float) -> None:
        timer = threading.Timer(linger, self._expire, args=(watch,))
        timer.daemon = True
        with self._lock:
            old, self._parked = self._parked, (watch, key, timer)
        timer.start()
        if old is not None:
            old[2].cancel()
            old[0].close()

    def _expire(self, watch: R) -> None:
        with self._lock:
            if self._parked is None or self._parked[0] is not watch:
                return  # taken meanwhile
            self._parked = None
        watch.close()

    def close(self) -> None:
        with self._lock:
            parked, self._parked = self._parked, None
        if parked is not None:
            parked[2].cancel()
            parked[0].close()


WATCHES: Keeper[PowerWatch] = Keeper()  # the long-running poll's, between scheduled runs
READERS: Keeper[BulkPowerReader] = Keeper()  # by-hand sweeps', between two of them


def _since(now: WatchStats, base: WatchStats) -> WatchStats:
    return WatchStats(
        now.reads - base.reads,
        now.failed - base.failed,
        now.skipped_in_flight - base.skipped_in_flight,
        now.worker_restarts - base.worker_restarts,
    )


@task(name="watch-bmcs", cache_policy=NO_CACHE, persist_result=False, retries=0)
def watch_bmcs(until: float) -> dict:
    """Poll every host continuously until ``until`` (wall clock, epoch seconds), and at least
    one full period, so that every host is read once even by a run that started late."""
    cfg = settings()
    log = logger()
    inv = clients.inventory()
    run_id = current_run_id() or None
    period = cfg.power_poll_period
    call_timeout = min(cfg.power_poll_call_timeout, 0.8 * period)
    tally = _Tally()
    pending: list[InvReading] = []
    names: set[str] = set()
    key = (period, cfg.power_poll_processes, call_timeout)
    watch = WATCHES.take(key)
    if watch is not None:
        log.info("took over the previous run's BMC workers and sessions")
    watch = watch or PowerWatch(period, processes=cfg.power_poll_processes, per_call_timeout=call_timeout)
    base = watch.stats  # this run's figures are counted from here
    with ExitStack() as keep:
        keep.callback(watch.close)  # unless the loop ends as it should (below)

        def refresh() -> None:
            nonlocal names
            try:
                hosts = inv.list_hosts()
            except Exception as exc:  # noqa: BLE001 - keep polling the hosts we know
                log.warning("could not read the host list (keeping the last one): %s", exc)
                return
            targets, failed = _targets(hosts, datetime.now(UTC))
            pending.extend(failed)  # one failed reading per refresh for unloadable credentials
            watch.set_targets(targets)
            names = {h.name for h in hosts}
            tally.hosts = len(names)

        refresh()
        started = time.monotonic()
        log.info(
            "polling %d hosts, each every %g s, until %s",
            len(names),
            period,
            datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds"),
        )
        min_end = started + period + call_timeout + 2 * FLUSH_EVERY  # one full round
        next_refresh = started + cfg.power_poll_refresh
        next_progress = started + PROGRESS_EVERY
        next_flush, flush_gap = started, FLUSH_EVERY
        while True:
            now = time.monotonic()
            done = time.time() >= until and now >= min_end
            for r in watch.drain(timeout=0 if done else FLUSH_EVERY / 2):
                pending.append(
                    InvReading(r.key, r.state if r.ok else "unknown", r.at, None if r.ok else f"{r.kind}: {r.error}")
                )
            if done:
                break
            if len(pending) > MAX_PENDING:  # the database has been down for long: keep the newest
                log.warning("dropping %d old readings that could not be recorded", len(pending) - MAX_PENDING)
                del pending[: len(pending) - MAX_PENDING]
            now = time.monotonic()
            if pending and now >= next_flush:
                if _flush(inv, pending, run_id, tally, log):
                    flush_gap = FLUSH_EVERY
                else:  # a failing database: keep the readings, back off, try again
                    flush_gap = min(10.0, flush_gap * 2)
                next_flush = now + flush_gap
            if now >= next_refresh:
                refresh()
                next_refresh = now + cfg.power_poll_refresh
            if now >= next_progress:
                s = _since(watch.stats, base)
                log.info(
                    "%d hosts: %d reads so far, %d failed, %d skipped in flight",
                    len(names),
                    s.reads,
                    s.failed,
                    s.skipped_in_flight,
                )
                next_progress = now + PROGRESS_EVERY
        stats = _since(watch.stats, base)
        seconds = time.monotonic() - started
        keep.pop_all()  # the next run of this process takes it over; closed if none does
        WATCHES.park(watch, key, linger=max(30.0, 3 * period))
    for attempt in range(5):  # the last readings; a database still down fails the run
        if not pending or _flush(inv, pending, run_id, tally, log, final=attempt == 4):
            break
        time.sleep(2**attempt)
    summary = tally.summary(names)
    summary.update(
        reads=stats.reads,
        failed_reads=stats.failed,
        seconds=round(seconds, 1),
        reads_per_bmc_per_minute=round(stats.reads / max(1, len(names)) / max(seconds, 1e-9) * 60, 2),
        skipped_in_flight=stats.skipped_in_flight,
        worker_restarts=stats.worker_restarts,
        polled=True,
    )
    extra = [
        f"polled **{seconds:.0f} s**, each BMC every {period:g} s: reads **{stats.reads}**, "
        f"failed reads **{stats.failed}**, reads per BMC per minute **{summary['reads_per_bmc_per_minute']}**, "
        f"skipped in flight **{stats.skipped_in_flight}**, worker restarts **{stats.worker_restarts}**",
        "",
    ]
    _publish(tally.markdown(summary, extra))
    log.info("done: %d hosts, %d reads, %d failed", len(names), stats.reads, stats.failed)
    return summary


def _flush(inv, pending: list[InvReading], run_id: str | None, tally: _Tally, log, final: bool = False) -> bool:
    """Record ``pending`` in one transaction and empty it; on failure keep it (the inventory
    already retried what it knows to be transient) and say so. ``final``: raise instead."""
    batch = list(pending)
    try:
        outcome = inv.record_power_bulk(batch, run_id=run_id)
    except Exception as exc:
        if final:
            raise
        log.warning("could not record %d readings (kept, retried): %s", len(batch), exc)
        return False
    del pending[: len(batch)]
    tally.add(batch, outcome, apply_outcome(outcome, log))
    return True
