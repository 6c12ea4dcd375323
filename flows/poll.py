"""power-poll: read every host's BMC, record state and time, and move hosts in and out of
maintenance (three failures in a row in, one success out). Scheduled.

Two ways to run, both with the power-poll engine (``integrations.ipmi.PowerWatch``):

- ``window == 0``: one sweep (worker processes, bounded concurrency, a deadline per BMC),
  every host stamped with the sweep's start. What an operator triggers by hand. The watch is
  kept ``tasks.poll.READER_LINGER`` seconds for the next by-hand sweep of the process (sessions less than
  20 s idle are reused, and the BMCs that failed this sweep are tried first), unless the sweep
  left calls stuck on silent BMCs (see ``tasks.poll.read_all``).
- ``window > 0``: long-running. The run polls until its *scheduled* start + ``window``: each
  BMC read once per ``power_poll_period`` at its own phase, every reading stamped with the
  time of its read and recorded within about half a second. Scheduled every
  ``power_poll_interval`` seconds with ``window`` equal to it, consecutive runs hand over with
  neither gap nor overlap to speak of, and the recorded states are never older than about one
  period (a sweep every interval leaves them up to interval + sweep time old). One such run
  at a time: the global concurrency limit ``power-poll`` (limit 1) guards it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import flow

from metalflow.flows.runbook import md_cell, publish_markdown
from metalflow.integrations.common.names import POWER_POLL_LIMIT
from metalflow.tasks import clients
from metalflow.tasks.common import logger
from metalflow.tasks.locks import acquire, ensure_limit
from metalflow.tasks.poll import (
    PollTally,
    apply_outcome,
    inventory_reading,
    power_targets,
    read_all,
    record,
    watch_bmcs,
)

#: Seconds the limit outlives a poller that died without releasing it (Prefect renews the lease
#: every 3/4 of it while the run lives; its minimum is 60). The next scheduled run waits for it.
POLL_LOCK_LEASE = 60.0
BUSY_MESSAGE = "another power-poll run is polling"


@flow(name="power-poll", flow_run_name="power-poll", log_prints=True)
def power_poll(window: float = 0) -> dict[str, Any]:
    """``window`` 0: one sweep of every host. ``window`` > 0: poll continuously until the run's
    scheduled start + ``window`` seconds (see the module docstring)."""
    if window < 0:
        raise ValueError(f"window: {window} is negative; give 0 (one sweep) or the seconds to poll for")
    if window == 0:
        return _sweep()
    return _watch(window)


def _sweep() -> dict[str, Any]:
    hosts = clients.inventory().hosts.all()
    now = datetime.now(UTC)
    targets, failed = power_targets(hosts, now)
    results = read_all(targets) if targets else {}
    readings = failed + [inventory_reading(r, now) for r in results.values()]
    outcome = record(readings)
    tally = PollTally(hosts=len(hosts))
    tally.add(readings, outcome, apply_outcome(outcome, logger()))
    summary = tally.summary()
    _publish(_markdown(tally, summary))
    return summary


def _window_end(window: float) -> float:
    """The wall-clock end of this run: its scheduled start + ``window`` (now + ``window`` outside
    a run). Ending at the scheduled time, not at start + window, is what makes consecutive
    scheduled runs hand over without a gap or an overlap that grows with start delays."""
    from prefect.runtime import flow_run

    start = flow_run.scheduled_start_time or datetime.now(UTC)
    return float(start.timestamp()) + window


@contextmanager
def _poll_lock(until: float) -> Iterator[bool]:
    """Hold the ``power-poll`` limit for the body; yields False when another run held it until
    ``until`` (wall clock). One try at a time and no client timeout (see ``runbook.host_lock``:
    a client-side timeout can leave a slot the server granted held by nobody)."""
    ensure_limit(POWER_POLL_LIMIT)
    # A lease renewal that fails is retried, never fatal: at worst two pollers overlap until
    # one ends, which only doubles some reads.
    lease = acquire(
        POWER_POLL_LIMIT,
        POLL_LOCK_LEASE,
        time.monotonic() + max(0.0, until - time.time()),
        on_wait=lambda: logger().info("waiting: %s; this run takes over when it ends", BUSY_MESSAGE),
    )
    held: AbstractContextManager[object] = lease if lease is not None else ExitStack()
    with held:
        yield lease is not None


def _watch(window: float) -> dict[str, Any]:
    until = _window_end(window)
    with _poll_lock(until) as got:
        if not got:
            logger().info("%s; this run ends without polling", BUSY_MESSAGE)
            _publish(f"# power-poll: not polled\n\n{BUSY_MESSAGE} for the whole window of this run ({window:g} s).")
            return {"hosts": 0, "reads": 0, "polled": False, "message": BUSY_MESSAGE}
        done = watch_bmcs(until)
    stats, seconds = done.stats, done.seconds
    summary = done.tally.summary(done.names)
    summary.update(
        reads=stats.reads,
        failed_reads=stats.failed,
        seconds=round(seconds, 1),
        reads_per_bmc_per_minute=round(stats.reads / max(1, len(done.names)) / max(seconds, 1e-9) * 60, 2),
        skipped_in_flight=stats.skipped_in_flight,
        worker_restarts=stats.worker_restarts,
        polled=True,
    )
    extra = [
        f"polled **{seconds:.0f} s**, each BMC every {done.period:g} s: reads **{stats.reads}**, "
        f"failed reads **{stats.failed}**, reads per BMC per minute **{summary['reads_per_bmc_per_minute']}**, "
        f"skipped in flight **{stats.skipped_in_flight}**, worker restarts **{stats.worker_restarts}**",
        "",
    ]
    _publish(_markdown(done.tally, summary, extra))
    return summary


def _markdown(tally: PollTally, summary: dict[str, Any], extra: list[str] | None = None) -> str:
    bad = sorted((r for r in tally.last.values() if r.error), key=lambda r: r.host)
    lines = [
        f"# power-poll: {summary['hosts']} hosts",
        "",
        f"on **{summary['on']}**, off **{summary['off']}**, failed **{summary['failed']}**, "
        f"changed **{summary['changed']}**",
        "",
        *(extra or []),
    ]
    if tally.changed:
        lines += ["| host | was | now |", "|---|---|---|"]
        lines += [f"| {md_cell(t.host)} | {md_cell(t.previous)} | {md_cell(t.state)} |" for t in tally.changed[:200]]
    if bad:
        lines += ["", "| host | error |", "|---|---|"] + [
            f"| {md_cell(r.host)} | {md_cell(r.error, 160)} |" for r in bad[:200]
        ]
    if tally.entered or tally.left:
        lines += [
            "",
            f"into maintenance: {', '.join(tally.entered) or '-'}",
            f"out of maintenance: {', '.join(tally.left) or '-'}",
        ]
    return "\n".join(lines)


def _publish(markdown: str) -> None:
    publish_markdown("power-poll", markdown, "last power poll")
