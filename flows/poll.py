"""power-poll: one run reads every host's BMC (the bulk reader: processes, bounded
concurrency, a deadline per BMC), records state and time, and moves hosts in and out of
maintenance (three failures in a row in, one success out). Scheduled."""
from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from integrations.inventory import PowerReading as InvReading
from integrations.ipmi import BulkPowerReader
from tasks import clients
from tasks.common import current_run_id, logger, write_journal
from tasks.credentials import CredentialError
from tasks.settings import settings


@task(name="read-all-bmcs", cache_policy=NO_CACHE, persist_result=False, retries=0)
def read_all(targets: list) -> dict:
    cfg = settings()
    with BulkPowerReader(processes=cfg.power_poll_processes, per_call_timeout=cfg.power_poll_call_timeout) as reader:
        return reader.read(targets, deadline=max(10.0, cfg.power_poll_interval * 0.8))


@task(name="record-power", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1)
def record(readings: list[InvReading]):
    """One transaction for every reading; maintenance changes are journaled with this run's id."""
    return clients.inventory().record_power_bulk(readings, run_id=current_run_id() or None)


def journal_changes(transitions: list) -> None:
    """A power state that changed between two readings changed behind metalflow's back (its
    own power actions record the state they verified): each goes into that host's journal."""
    for t in transitions:
        if {t.previous, t.state} != {"on", "off"}:
            continue  # first reading, or a failed one (counted toward maintenance instead)
        write_journal(t.host, "power-changed", "ipmi", "ok", f"{t.previous} → {t.state} (seen by power-poll)")


@flow(name="power-poll", flow_run_name="power-poll", log_prints=True)
def power_poll() -> dict:
    log = logger()
    inv = clients.inventory()
    hosts = inv.list_hosts()
    now = datetime.now(timezone.utc)
    targets, failed = [], []
    for h in hosts:
        try:
            targets.append(clients.bmc_target(h))
        except CredentialError as exc:
            failed.append(InvReading(h.name, "unknown", now, f"credentials: {exc}"))
    results = read_all(targets) if targets else {}
    readings = failed + [
        InvReading(key, r.state if r.ok else "unknown", now, None if r.ok else f"{r.kind}: {r.error}")
        for key, r in results.items()
    ]
    outcome = record(readings)
    on = sum(1 for r in readings if r.state == "on")
    off = sum(1 for r in readings if r.state == "off")
    bad = [r for r in readings if r.error]
    for name in outcome.entered_maintenance:
        log.warning("%s put in maintenance: its BMC failed %d polls in a row", name, settings().maintenance_after_failures)
    for name in outcome.left_maintenance:
        log.info("%s answers again: out of maintenance", name)
    changed = [t for t in outcome.transitions if t.changed and not t.stale]
    journal_changes(changed)
    summary = {"hosts": len(hosts), "on": on, "off": off, "failed": len(bad),
               "changed": len(changed), "entered_maintenance": list(outcome.entered_maintenance),
               "left_maintenance": list(outcome.left_maintenance)}
    lines = [f"# power-poll: {len(hosts)} hosts", "",
             f"on **{on}**, off **{off}**, failed **{len(bad)}**, changed **{len(changed)}**", ""]
    if changed:
        lines += ["| host | was | now |", "|---|---|---|"] + [f"| {t.host} | {t.previous} | {t.state} |" for t in changed[:200]]
    if bad:
        lines += ["", "| host | error |", "|---|---|"] + [f"| {r.host} | {r.error[:160]} |" for r in bad[:200]]
    if outcome.entered_maintenance or outcome.left_maintenance:
        lines += ["", f"into maintenance: {', '.join(outcome.entered_maintenance) or '-'}",
                  f"out of maintenance: {', '.join(outcome.left_maintenance) or '-'}"]
    create_markdown_artifact(markdown="\n".join(lines), key="power-poll", description="last power poll")
    return summary
