"""Serve metalflow's deployments with every flow run in a thread of this one process.

Why not Prefect's ``serve``: it starts one Python interpreter per flow run (about 1-2 CPU
seconds and 90-250 MB each, ../shared/reference/prefect.md). Fifty provisions at once then
cost about 4.6 GB and both cores for a minute before the first of them reaches MAAS, and the
makespan grows to T + 60-70 s. metalflow's flows spend their time waiting on MAAS, BMCs and
switches, not computing, so they share one interpreter well: fifty in threads cost about
150 MB and start in well under a second. What a process per run buys, isolation from a run
that corrupts the interpreter, is kept for who wants it: ``metalflow serve --isolated``.

What this loop does, and what Prefect's runner does that it keeps:

- **claim**: every ``poll`` seconds it asks the server for scheduled runs of its deployments
  that are due and gives each a thread, which proposes Pending before running it; the server
  refuses a run another runner already claimed, so two servers of the same deployments never
  run one run twice. The claims go out from the runs' own threads, all at once: one after the
  other, fifty of them took seconds on a busy server before the last run could start.
- **run**: ``prefect.flow_engine.run_flow`` with the claimed run, in a thread of its own (the
  engine's context is per thread, so runs do not see each other's state). The engine does
  everything else: Running, task runs, logs, artifacts, flow retries, the final state.
- **cancel**: a run an operator cancels (Cancelling) gets ``RunCancelled`` raised in its
  thread at its next Python instruction. Every client call has its own deadline, so that is
  within seconds. The flow sees an exception: provision's rollback runs as for any failure,
  then the run is set Cancelled with a message that says it was rolled back.
- **limit**: at most ``limit`` runs at once; runs beyond it stay Scheduled until a slot frees.
- **schedules**: the server's scheduler creates the scheduled runs (power-poll, audit); this
  loop only runs them.

A process that dies takes its runs with it, as with ``serve``; runs left Running are marked
Crashed by the heartbeat automation (``metalflow deploy --crash-after``) or by an operator.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

log = logging.getLogger("metalflow.pool")


class RunCancelled(Exception):
    """Raised inside a flow run's thread when an operator cancels the run.

    An ``Exception`` on purpose: the flows' rollback (``except Exception``) undoes what the
    run changed, exactly as for a failure."""


def raise_in_thread(thread: threading.Thread, exc: type[BaseException]) -> bool:
    """Ask the interpreter to raise ``exc`` in ``thread`` at its next bytecode. False when the
    thread is already gone."""
    if thread.ident is None or not thread.is_alive():
        return False
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))
    if hit > 1:  # never expected; undo so no other thread gets it
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), None)
        return False
    return hit == 1


@dataclass
class _Active:
    run_id: UUID
    name: str
    thread: threading.Thread
    started: float = field(default_factory=time.monotonic)
    cancel_sent: float | None = None


class PooledRunner:
    """Runs the flow runs of ``served``, a list of (flow, ``flow.to_deployment(...)``), in threads
    of this process. ``run()`` blocks until SIGINT/SIGTERM or ``stop()``."""

    def __init__(self, served: list[tuple], *, limit: int | None = None, poll: float = 0.5, cancel_check: float = 2.0):
        if limit is not None and limit < 1:
            raise ValueError("limit: at least 1 (or None for no limit)")
        self.served = list(served)
        self.limit = limit
        self.poll = poll
        self.cancel_check = cancel_check
        self._flows: dict[UUID, Any] = {}
        self._active: dict[UUID, _Active] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- set-up ---------------------------------------------------------------------------

    def register(self) -> dict[UUID, str]:
        """Create or update every deployment on the server (schedules included); their ids."""
        names = {}
        for flow, d in self.served:
            dep_id = d.apply()
            self._flows[dep_id] = flow
            names[dep_id] = f"{d.flow_name}/{d.name}"
        return names

    # -- main loop --------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        from prefect.client.orchestration import get_client

        # Every run of this installation is a thread here: switch sessions need only this
        # process's lock (see tasks.locks.switch_lock). One `metalflow serve` per Prefect
        # server; more capacity comes from process workers (docs/scale-out.md).
        os.environ.setdefault("METALFLOW_SWITCH_LOCK", "process")
        if not self._flows:
            self.register()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._stop.set())
        last_cancel_check = 0.0
        with get_client(sync_client=True) as client:
            while not self._stop.is_set():
                try:
                    self._claim_due(client)
                    if time.monotonic() - last_cancel_check >= self.cancel_check:
                        last_cancel_check = time.monotonic()
                        self._cancel_requested(client)
                except Exception as exc:  # noqa: BLE001 - the server may be restarting; keep serving
                    log.warning("pooled runner: %s: %s (retrying)", type(exc).__name__, exc)
                    self._stop.wait(min(5.0, self.poll * 4))
                self._stop.wait(self.poll)
        self._drain()

    def free_slots(self) -> int:
        with self._lock:
            busy = len(self._active)
        return 10_000 if self.limit is None else max(0, self.limit - busy)

    def _claim_due(self, client) -> None:
        slots = self.free_slots()
        if not slots:
            return
        due = client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self._flows),
            scheduled_before=datetime.now(UTC) + timedelta(seconds=0.2),
            limit=min(slots, 200),
        )
        for run in sorted(due, key=lambda r: r.next_scheduled_start_time or r.expected_start_time or r.created):
            with self._lock:
                if run.id in self._active:
                    continue
            self._start(run)

    @staticmethod
    def _claim(run) -> bool:
        """Propose Pending for ``run``: False when the server refuses (another runner took it,
        or it is no longer scheduled)."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state_sync

        try:
            with get_client(sync_client=True) as client:
                propose_state_sync(client, Pending(), flow_run_id=run.id)
            return True
        except Abort as exc:
            log.info("flow run %s taken by another runner or no longer scheduled: %s", run.name, exc)
            return False

    def _start(self, run) -> None:
        flow = self._flows[run.deployment_id]
        thread = threading.Thread(target=self._execute, args=(flow, run), name=f"run-{run.name}", daemon=True)
        with self._lock:
            self._active[run.id] = _Active(run.id, run.name, thread)
        thread.start()

    def _execute(self, flow, run) -> None:
        from prefect.flow_engine import run_flow

        cancelled = claimed = False
        try:
            claimed = self._claim(run)
            if claimed:
                run_flow(flow, flow_run=run, return_type="state")
        except RunCancelled:
            cancelled = True  # raised outside the flow's body (in the engine itself)
        except BaseException as exc:
            log.exception("flow run %s ended with %s outside the engine", run.name, type(exc).__name__)
        finally:
            with self._lock:
                active = self._active.pop(run.id, None)
            if claimed and (cancelled or (active is not None and active.cancel_sent is not None)):
                self._mark_cancelled(run)

    def _cancel_requested(self, client) -> None:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        with self._lock:
            ids = [a.run_id for a in self._active.values() if a.cancel_sent is None]
        if not ids:
            return
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=ids),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            )
        )
        for r in runs:
            with self._lock:
                active = self._active.get(r.id)
            if active is None:
                continue
            active.cancel_sent = time.monotonic()
            if raise_in_thread(active.thread, RunCancelled):
                log.warning("flow run %s: cancel requested; stopping it (its rollback runs)", active.name)

    def _mark_cancelled(self, run) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        try:
            with get_client(sync_client=True) as client:
                current = client.read_flow_run(run.id).state
                detail = f" ({current.message})" if current is not None and current.message else ""
                client.set_flow_run_state(
                    run.id,
                    Cancelled(message=f"cancelled by an operator; what the run changed was rolled back{detail}"),
                    force=True,
                )
        except Exception as exc:  # noqa: BLE001
            log.warning("flow run %s: could not mark it Cancelled: %s", run.name, exc)

    def _drain(self, wait: float = 30.0) -> None:
        """On shutdown, let running runs finish for up to ``wait`` s; what is left is reported
        (a process exit takes them down; the crash automation or a rerun picks them up)."""
        end = time.monotonic() + wait
        while time.monotonic() < end:
            with self._lock:
                left = list(self._active.values())
            if not left:
                return
            left[0].thread.join(timeout=max(0.0, min(1.0, end - time.monotonic())))
        with self._lock:
            names = [a.name for a in self._active.values()]
        if names:
            log.warning("stopping with %d runs still running: %s", len(names), ", ".join(names))
