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

Scheduled every ``recover_interval`` over every host (a host whose lock another run still
holds is skipped until the next sweep), and on demand for one host (``host``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run

from metalflow.flows.models import HostRef
from metalflow.flows.runbook import Runbook, host_lock, md_cell, publish_markdown
from metalflow.flows.undo import ACTIONS
from metalflow.integrations.inventory import UndoInfo
from metalflow.tasks import clients
from metalflow.tasks.common import logger

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


def recover_host(host: str, runs: dict[str, tuple[str, dict[str, Any], list[UndoInfo]]], *, wait: float) -> list[str]:
    """Finish the dead runs of one host under its lock; the lines of what was done."""
    inv = clients.inventory()
    lines: list[str] = []
    failed: list[str] = []
    with host_lock(host, "recover", wait=wait), Runbook("recover", host) as rb:
        h = rb.load_host(host)
        for run_id, (state, params, undos) in runs.items():
            if completed_anyway(state, params, h.last_vm_uuid):
                inv.undos.clear(run_id)
                rb.note("inventory", f"run {run_id}", f"{state}: every change was made, nothing to undo")
                lines.append(f"{host}: run {run_id} ({state}) completed its changes: records cleared")
                continue
            for u in sorted(undos, key=lambda u: u.seq, reverse=True):
                try:
                    result = ACTIONS[u.action](rb, h, u.params)
                except Exception as exc:  # noqa: BLE001 - keep undoing; the record stays
                    inv.undos.failed(run_id, u.seq, f"{type(exc).__name__}: {exc}")
                    rb.note("rollback", f"{u.label} FAILED", str(exc))
                    failed.append(u.label)
                    continue
                inv.undos.done(run_id, u.seq)
                rb.note("rollback", u.label, result)
            lines.append(f"{host}: run {run_id} ({state}): {len(undos)} undos replayed")
        if failed:
            raise RecoveryIncomplete(
                f"{host}: {', '.join(failed)} did not finish; the host still needs recovery (the next sweep retries)"
            )
        rb.outcome = "; ".join(lines) or "nothing to recover"
    return lines


@flow(name="recover", flow_run_name=_name, log_prints=True)
def recover(host: HostRef | None = None) -> dict[str, Any]:
    """Finish the rollback of every run that died on ``host`` (all hosts when None)."""
    inv = clients.inventory()
    left = inv.undos.left(host) if host else inv.undos.left()
    by_host: dict[str, dict[str, list[UndoInfo]]] = defaultdict(lambda: defaultdict(list))
    for u in left:
        by_host[u.host][u.run_id].append(u)
    done: list[str] = []
    problems: list[str] = []
    by_state: dict[str, dict[str, tuple[str, dict[str, Any], list[UndoInfo]]]] = {}
    if by_host:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:  # one client for the whole sweep
            for name, runs in by_host.items():
                by_state[name] = {run_id: (*run_state(client, run_id), undos) for run_id, undos in runs.items()}
    for name, runs_now in sorted(by_state.items()):
        # a run still alive may roll itself back: never touched
        dead = {run_id: found for run_id, found in runs_now.items() if found[0] not in LIVE}
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
