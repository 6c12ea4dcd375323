"""power-poll's steps: read every host's BMC (a sweep, or a watch until a deadline) with the
power-poll engine (``integrations.ipmi.PowerWatch``), and record what it read.

The engines outlive a run: the long-running poll parks its watch for the next scheduled run
of the process, a by-hand sweep parks its watch for the next by-hand sweep (see ``Keeper``).
Both keepers are parts of the process ``Runtime``, which closes them when the process ends."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from metalflow.integrations.inventory import BulkPowerResult, HostInfo
from metalflow.integrations.inventory import PowerReading as InvReading
from metalflow.integrations.inventory.records import PowerTransition
from metalflow.integrations.ipmi import BmcTarget, Keeper, PowerReading, PowerWatch, TimedReading, WatchStats
from metalflow.tasks import clients
from metalflow.tasks.common import current_run_id, logger, write_journal
from metalflow.tasks.credentials import CredentialError
from metalflow.tasks.runtime import runtime
from metalflow.tasks.settings import settings

#: Seconds a by-hand sweep's watch (its worker processes and BMC sessions) is kept for the next
#: by-hand sweep of this process. A session idle for longer than ``PyghmiLink.REUSE_IDLE`` (20 s;
#: real BMCs drop one after about a minute) is replaced by a fresh login, so a sweep within 20 s
#: skips the logins and a later one only the workers' start; pyghmi sends nothing between
#: calls, so a kept watch costs the BMCs nothing.
READER_LINGER = 120.0
PROGRESS_EVERY = 30.0  # seconds between two progress lines in the run's log


def watch_keeper() -> Keeper:
    """The long-running poll's watch, between two scheduled runs of this process."""
    return runtime().part(("power-poll", "watch"), Keeper, Keeper.close)


def sweep_keeper() -> Keeper:
    """By-hand sweeps' watch, between two of them in this process."""
    return runtime().part(("power-poll", "sweep"), Keeper, Keeper.close)


def power_targets(hosts: Sequence[HostInfo], now: datetime) -> tuple[list[BmcTarget], list[InvReading]]:
    """Each host's BMC target; a host whose credentials cannot be loaded gets a failed reading."""
    targets, failed = [], []
    for h in hosts:
        try:
            targets.append(clients.bmc_target(h))
        except CredentialError as exc:
            failed.append(InvReading(h.name, "unknown", now, f"credentials: {exc}"))
    return targets, failed


def inventory_reading(r: PowerReading, at: datetime) -> InvReading:
    """What the inventory records of an engine's reading."""
    return InvReading(r.key, r.state or "unknown" if r.ok else "unknown", at, None if r.ok else f"{r.kind}: {r.error}")


def journal_changes(transitions: Sequence[PowerTransition], journal: Callable[..., None] = write_journal) -> None:
    """A power state that changed between two readings changed behind metalflow's back (its
    own power actions record the state they verified): each goes into that host's journal."""
    for t in transitions:
        if {t.previous, t.state} != {"on", "off"}:
            continue  # first reading, or a failed one (counted toward maintenance instead)
        journal(t.host, "power-changed", "ipmi", "ok", f"{t.previous} → {t.state} (seen by power-poll)")


def apply_outcome(
    outcome: BulkPowerResult,
    log: logging.Logger | logging.LoggerAdapter[Any],
    journal: Callable[..., None] = write_journal,
    recover: Callable[..., object] | None = None,
) -> list[PowerTransition]:
    """What both ways of polling do with what recording readings did: say which hosts went
    into or out of maintenance, journal the power states that changed behind metalflow's back.
    Returns the transitions that changed a host's state."""
    for name in outcome.entered_maintenance:
        log.warning(
            "%s put in maintenance: its BMC failed %d polls in a row", name, settings().maintenance_after_failures
        )
    for name in outcome.left_maintenance:
        log.info("%s answers again: out of maintenance", name)
    changed = [t for t in outcome.transitions if t.changed and not t.stale]
    journal_changes(changed, journal)
    (recover or recover_when_answering)(outcome, log)
    return changed


#: The deployment a BMC answering again starts for its host when a rollback is left unfinished.
RECOVER_DEPLOYMENT = "recover/metalflow"


def recover_when_answering(
    outcome: BulkPowerResult,
    log: logging.Logger | logging.LoggerAdapter[Any],
    start: Callable[[str], object] | None = None,
) -> list[str]:
    """Hosts whose BMC answers again (a reading after a failed one) and that still have undo
    records (a rollback that met the silent BMC): start ``recover`` for each now, instead of at
    the next scheduled sweep. Returns those hosts. Never fails the poll."""
    back = [t.host for t in outcome.transitions if t.previous == "unknown" and t.state != "unknown" and not t.stale]
    if not back:
        return []
    try:
        waiting = {u.host for u in clients.inventory().undos.left()}
    except Exception as exc:  # noqa: BLE001 - the sweep will see them
        log.warning("could not read the hosts that need recovery: %s", exc)
        return []
    todo = [h for h in back if h in waiting]
    for host in todo:
        try:
            (start or _start_recover)(host)
            log.info("%s answers again and has a rollback left: recover started", host)
        except Exception as exc:  # noqa: BLE001 - the scheduled sweep retries
            log.warning("%s answers again; recover not started (%s): the next sweep retries", host, exc)
    return todo


def _start_recover(host: str) -> None:
    from prefect.deployments import run_deployment

    run_deployment(RECOVER_DEPLOYMENT, parameters={"host": host}, timeout=0, as_subflow=False)


@dataclass
class PollTally:
    """What a run saw, for its summary and artifact."""

    hosts: int = 0
    last: dict[str, InvReading] = field(default_factory=dict)  # each host's latest reading
    changed: list[PowerTransition] = field(default_factory=list)
    entered: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    def add(self, readings: Sequence[InvReading], outcome: BulkPowerResult, changed: list[PowerTransition]) -> None:
        for r in readings:
            prev = self.last.get(r.host)
            if prev is None or prev.at is None or (r.at is not None and r.at >= prev.at):
                self.last[r.host] = r
        self.changed += changed
        self.entered += [n for n in outcome.entered_maintenance if n not in self.entered]
        self.left += [n for n in outcome.left_maintenance if n not in self.left]

    def summary(self, names: set[str] | None = None) -> dict[str, Any]:
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


@task(name="read-all-bmcs", cache_policy=NO_CACHE, persist_result=False, retries=0)
def read_all(targets: list[BmcTarget]) -> dict[str, PowerReading]:
    """One sweep of ``targets`` with the previous by-hand sweep's watch when there is one."""
    cfg = settings()
    key = (cfg.power_poll_processes, cfg.power_poll_call_timeout)
    keeper = sweep_keeper()
    watch = keeper.take(key)
    if watch is not None:
        logger().info("reading with the previous by-hand sweep's BMC workers and sessions")
    watch = watch or PowerWatch(processes=cfg.power_poll_processes, per_call_timeout=cfg.power_poll_call_timeout)
    with ExitStack() as keep:
        keep.callback(watch.close)  # unless the sweep ends as it should and can be kept
        results = watch.sweep(targets, deadline=max(10.0, cfg.power_poll_interval * 0.8))
        if watch.calls_stuck:
            # Calls to BMCs that stopped answering are still running in pyghmi; a kept watch
            # would fail those BMCs again until the calls end (~20 s), even once they answer:
            # an operator who repairs one and polls by hand would see it stay in maintenance.
            logger().info(
                "not keeping the BMC workers for the next sweep: %d calls to silent BMCs are still running in them",
                watch.calls_stuck,
            )
            return results
        keep.pop_all()
    keeper.park(watch, key, linger=READER_LINGER)
    return results


@task(name="record-power", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1)
def record(readings: list[InvReading]) -> BulkPowerResult:
    """One transaction for every reading; maintenance changes are journaled with this run's id."""
    return clients.inventory().power.record_bulk(readings, run_id=current_run_id() or None)


@dataclass(frozen=True)
class WatchResult:
    """What ``watch_bmcs`` saw: the tally, the hosts polled at the end, the engine's counters
    over the run, how long it polled and each BMC's period."""

    tally: PollTally
    names: set[str]
    stats: WatchStats
    seconds: float
    period: float


@task(name="watch-bmcs", cache_policy=NO_CACHE, persist_result=False, retries=0)
def watch_bmcs(until: float) -> WatchResult:
    """Poll every host continuously until ``until`` (wall clock, epoch seconds), and at least
    one full period, so that every host is read once even by a run that started late. The
    whole loop is ONE task: a task per batch of readings would cost 5-10 ms each alone and
    140-195 ms under load (reference/prefect.md), twice a second for hours."""
    cfg = settings()
    log = logger()
    inv = clients.inventory()
    run_id = current_run_id() or None
    period = cfg.power_poll_period
    call_timeout = min(cfg.power_poll_call_timeout, 0.8 * period)
    tally = PollTally()
    names: set[str] = set()
    told = False
    key = (period, cfg.power_poll_processes, call_timeout)
    keeper = watch_keeper()
    watch = keeper.take(key)
    if watch is not None:
        log.info("took over the previous run's BMC workers and sessions")
    watch = watch or PowerWatch(period, processes=cfg.power_poll_processes, per_call_timeout=call_timeout)

    def targets() -> list[BmcTarget] | None:
        nonlocal names, told
        try:
            hosts = inv.hosts.all()
        except Exception as exc:  # noqa: BLE001 - keep polling the hosts we know
            log.warning("could not read the host list (keeping the last one): %s", exc)
            return None
        now = datetime.now(UTC)
        found, failed = power_targets(hosts, now)
        for r in failed:  # one failed reading per refresh for unloadable credentials
            kind, _, error = (r.error or "").partition(": ")
            watch.report(TimedReading(r.host, None, error, 0.0, kind, at=now))
        names = {h.name for h in hosts}
        tally.hosts = len(names)
        if not told:
            told = True
            log.info(
                "polling %d hosts, each every %g s, until %s",
                len(hosts),
                period,
                datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds"),
            )
        return found

    def sink(readings: list[TimedReading]) -> None:
        batch = [inventory_reading(r, r.at) for r in readings]
        outcome = inv.power.record_bulk(batch, run_id=run_id)
        tally.add(batch, outcome, apply_outcome(outcome, log))

    def progress(s: WatchStats) -> None:
        log.info(
            "%d hosts: %d reads so far, %d failed, %d skipped in flight",
            len(names),
            s.reads,
            s.failed,
            s.skipped_in_flight,
        )

    with ExitStack() as keep:
        keep.callback(watch.close)  # unless the polling ends as it should (below)

        def park() -> None:
            keep.pop_all()  # the next run of this process takes it over; closed if none does
            keeper.park(watch, key, linger=max(30.0, 3 * period))

        ran = watch.run(
            until,
            sink,
            targets=targets,
            refresh_every=cfg.power_poll_refresh,
            progress=progress,
            progress_every=PROGRESS_EVERY,
            ended=park,  # before the last batches: a database still down fails the run, not the watch
        )
    log.info("done: %d hosts, %d reads, %d failed", len(names), ran.stats.reads, ran.stats.failed)
    return WatchResult(tally, names, ran.stats, ran.seconds, period)
