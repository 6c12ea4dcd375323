"""recover: finish what a dead run left half-done (issue 18).

Every run registers the undo of each change in the inventory before it makes the change
(``Runbook.undo_action``); the records go when the run completes or its rollback finishes. So
records whose run is no longer alive are a run that died (a killed worker, a crashed process)
or a rollback that could not finish (a silent BMC, MAAS refusing). ``recover`` takes each such
host's lock and, per run:

- the run completed (or, for a provision, the host carries its VM: every change was made):
  nothing to undo, the records go;
- otherwise its undos run newest first, each a visible task, each record going when its undo
  ran; one that fails stays (the host still needs recovery) and the run ends Failed saying so.

A dead run's host lock is released first: each run writes the lease id of the host lock it
takes in the inventory (Prefect lists no leases), so the lock does not stay held until the
lease expires (300 s by default).

Started by Prefect the moment a run is marked Crashed (the automation made by
``metalflow deploy``: ``deployments.workers.ensure_recover_automation``), scheduled every
``recover_interval`` over every host (a host whose lock another run still holds is skipped until
the next sweep), and on demand for one host (``host``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run

from metalflow.flows.models import HostRef
from metalflow.flows.runbook import Runbook, canonical_host, host_lock, md_cell, publish_markdown
from metalflow.flows.undo import ACTIONS
from metalflow.integrations.common.names import host_lock_name
from metalflow.integrations.inventory import HostInfo, LeaseInfo, UndoInfo
from metalflow.tasks import clients
from metalflow.tasks.common import logger
from metalflow.tasks.locks import release_lease

#: A run in one of these states may still undo its own changes: never touched.
LIVE = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})
#: How long a sweep waits for a host's lock before it leaves the host to the next sweep.
SWEEP_LOCK_WAIT = 5.0


class RecoveryIncomplete(Exception):
    """An undo could not finish; the host still needs recovery (the records say which)."""


def _name() -> str:
    host = (flow_run.parameters or {}).get("host")
    return f"recover {host}" if host else "recover (sweep)"


def run_state(client: Any, run_id: str) -> tuple[str, dict[str, Any]]:
    """(state type, parameters) of a flow run, read with ``client`` (Prefect's sync client);
    ``GONE`` for one Prefect does not know (or a local run outside Prefect)."""
    from prefect.exceptions import ObjectNotFound

    try:
        uuid = UUID(run_id)
    except ValueError:
        return "GONE", {}
    try:
        run = client.read_flow_run(uuid)
    except ObjectNotFound:
        return "GONE", {}
    state = run.state.type.value if run.state is not None else "GONE"
    return state, dict(run.parameters or {})


def completed_anyway(state: str, params: dict[str, Any], carried: str | None) -> bool:
    """Whether the run made every change it meant to: it completed, or it was a provision and
    the host carries its VM (it died after recording it)."""
    if state == "COMPLETED":
        return True
    vm = params.get("vm")
    uuid = vm.get("uuid") if isinstance(vm, dict) else None
    return uuid is not None and carried == uuid


def replay(rb: Runbook, h: HostInfo, undos: list[UndoInfo]) -> list[str]:
    """Run the persisted ``undos`` (of one run) newest first, each record going when its undo
    ran; one that fails is marked and kept, and the others still run. The labels that failed."""
    inv = clients.inventory()
    failed = []
    for u in sorted(undos, key=lambda u: u.seq, reverse=True):
        try:
            result = ACTIONS[u.action](rb, h, u.params)
        except Exception as exc:  # noqa: BLE001 - keep undoing; the record stays
            inv.undos.failed(u.run_id, u.seq, f"{type(exc).__name__}: {exc}")
            rb.note("rollback", f"{u.label} FAILED", str(exc))
            failed.append(u.label)
            continue
        inv.undos.done(u.run_id, u.seq)
        rb.note("rollback", u.label, result)
    return failed


def finish_left_rollbacks(rb: Runbook, h: HostInfo) -> int:
    """At the start of an operation holding ``h``'s lock: finish what runs that died (or whose
    rollback met a fault) left on the host, so the operation starts from the idle state (MAAS
    Ready, off, PXE). This run's own earlier attempt (a rerun from the UI has the same run id)
    is left alone while its records are all pending: the rerun converges from where it stopped;
    once one of them failed its rollback had begun, and it is finished too. Returns the number
    of undos replayed; raises ``RecoveryIncomplete`` when one still fails (nothing else done)."""
    inv = clients.inventory()
    by_run: dict[str, list[UndoInfo]] = defaultdict(list)
    for u in inv.undos.left(h.name):
        by_run[u.run_id].append(u)
    mine = by_run.get(rb.run_id, [])
    if mine and all(u.state == "pending" for u in mine):
        del by_run[rb.run_id]
    if not by_run:
        return 0
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = {run_id: run_state(client, run_id) for run_id in by_run if run_id != rb.run_id}
    failed: list[str] = []
    replayed = 0
    for run_id, undos in by_run.items():
        state, params = states.get(run_id, ("RUNNING", {}))
        if run_id != rb.run_id and state in LIVE:
            raise RecoveryIncomplete(
                f"{h.name}: run {run_id} is {state} and left undo records, yet this run holds the host's "
                "lock; wait for it to end (or cancel it), then rerun this one"
            )
        if run_id != rb.run_id and completed_anyway(state, params, h.last_vm_uuid):
            inv.undos.clear(run_id)
            continue
        logger().info("finishing the rollback run %s left on %s (%d undos)", run_id, h.name, len(undos))
        failed += replay(rb, h, undos)
        replayed += len(undos)
    if failed:
        raise RecoveryIncomplete(
            f"{h.name}: the rollback an earlier run left ({', '.join(failed)}) still did not finish; "
            "fix what stops it (the BMC? MAAS?) and rerun"
        )
    return replayed


def recover_host(host: str, runs: dict[str, tuple[str, dict[str, Any], list[UndoInfo]]], *, wait: float) -> list[str]:
    """Finish the dead runs of one host under its lock; the lines of what was done."""
    inv = clients.inventory()
    lines: list[str] = []
    failed: list[str] = []
    with host_lock(host, "recover", wait=wait), Runbook("recover", host) as rb:
        h = rb.load_host(host)
        # Read again under the lock: another recovery (the sweep and the one a crash started)
        # may have finished these records meanwhile, and the host may be someone else's since.
        now_left: dict[str, list[UndoInfo]] = defaultdict(list)
        for u in inv.undos.left(host):
            now_left[u.run_id].append(u)
        for run_id, (state, params, _) in runs.items():
            undos = now_left.get(run_id, [])
            if not undos:
                continue
            if completed_anyway(state, params, h.last_vm_uuid):
                inv.undos.clear(run_id)
                rb.note("inventory", f"run {run_id}", f"{state}: every change was made, nothing to undo")
                lines.append(f"{host}: run {run_id} ({state}) completed its changes: records cleared")
                continue
            failed += replay(rb, h, undos)
            lines.append(f"{host}: run {run_id} ({state}): {len(undos)} undos replayed")
        if failed:
            raise RecoveryIncomplete(
                f"{host}: {', '.join(failed)} did not finish; the host still needs recovery (the next sweep retries)"
            )
        rb.outcome = "; ".join(lines) or "nothing to recover"
    return lines


def release_dead_leases(leases: list[LeaseInfo], states: dict[str, str], host: str | None) -> list[str]:
    """Release the host locks of runs no longer alive (of ``host`` only, when given); the lines
    of what was released."""
    lines = []
    wanted = host_lock_name(canonical_host(host)) if host else None
    for lease in leases:
        if states.get(lease.run_id, "GONE") in LIVE or (wanted and lease.limit_name != wanted):
            continue
        try:
            release_lease(lease.lease_id)
        except Exception as exc:  # noqa: BLE001 - it expires on its own; the next sweep tries again
            logger().warning("could not release %s of run %s: %s", lease.limit_name, lease.run_id, exc)
            continue
        clients.inventory().leases.released(lease.lease_id)
        lines.append(f"{lease.limit_name}: released the lock of run {lease.run_id} ({states.get(lease.run_id)})")
        logger().info("released %s, held by run %s (%s)", lease.limit_name, lease.run_id, states.get(lease.run_id))
    return lines


@flow(name="recover", flow_run_name=_name, log_prints=True)
def recover(host: HostRef | None = None) -> dict[str, Any]:
    """Finish the rollback of every run that died on ``host`` (all hosts when None)."""
    inv = clients.inventory()
    # Records first, run states after: a lease or undo read here whose run is found dead below
    # belongs to that dead attempt (a rerun of the same run would be found alive).
    leases = inv.leases.of_runs()
    left = inv.undos.left(host) if host else inv.undos.left()
    by_host: dict[str, dict[str, list[UndoInfo]]] = defaultdict(lambda: defaultdict(list))
    for u in left:
        by_host[u.host][u.run_id].append(u)
    done: list[str] = []
    problems: list[str] = []
    by_state: dict[str, dict[str, tuple[str, dict[str, Any], list[UndoInfo]]]] = {}
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    if by_host or leases:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:  # one client for the whole sweep
            found = {
                run_id: run_state(client, run_id) for run_id in {x.run_id for x in leases} | {u.run_id for u in left}
            }
    states = {run_id: state for run_id, (state, _) in found.items()}
    for name, runs in by_host.items():
        by_state[name] = {run_id: (*found[run_id], undos) for run_id, undos in runs.items()}
    done += release_dead_leases(leases, states, host)
    for name, runs_now in sorted(by_state.items()):
        # a run still alive may roll itself back: never touched
        dead = {run_id: entry for run_id, entry in runs_now.items() if entry[0] not in LIVE}
        if not dead:
            continue
        try:
            done += recover_host(name, dead, wait=SWEEP_LOCK_WAIT if host is None else 300.0)
        except TimeoutError as exc:
            problems.append(f"{name}: not now, its lock is held ({exc})")
        except Exception as exc:  # noqa: BLE001 - the other hosts go on
            problems.append(f"{name}: {exc}")
    lines = [f"# recover{' ' + host if host else ''}", ""]
    lines += [f"- {md_cell(x, 400)}" for x in done] or ["nothing to recover"]
    if problems:
        lines += ["", "## not finished", ""] + [f"- {md_cell(p, 400)}" for p in problems]
        logger().warning("recovery not finished: %s", "; ".join(problems))
    publish_markdown("recover", "\n".join(lines), f"{len(done)} runs recovered, {len(problems)} hosts left")
    if problems and host is not None:
        raise RecoveryIncomplete("; ".join(problems))
    return {"recovered": done, "left": problems}
