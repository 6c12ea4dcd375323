"""bulk-provision: a row of hosts in one request, in waves behind a canary, stopped by an
abort threshold.

Each host is the ordinary ``provision`` flow, run as a subflow (its own run in the UI, its own
report, host lock and rollback), in a thread of this run. The canary hosts start first; the
first wave starts once every canary has *passed its milestone*: MAAS accepted the deploy
(the ``deploy-machine`` step journaled ok). By then the switch ports, the MAAS allocation, the
preseed and the deploy call are proven on real hardware, and the rest of the canary's time is
MAAS installing the OS, which the other hosts can spend installing theirs. Each later wave
starts when every host of the previous one passed its milestone or failed: the waves are
pipelined on the milestone, not on completion, so the whole bulk takes about one provision's
time instead of one per wave. A host that does not reach its milestone within its budget
counts as failed for gating (its own run goes on). Once more than ``max_failures`` hosts have
failed, no further host starts; hosts already running finish (and roll back) on their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, State

from metalflow.flows.models import BulkItem, EraseMode
from metalflow.flows.provision import provision
from metalflow.flows.runbook import inline_steps, md_cell, publish_markdown
from metalflow.integrations.common import Deadline
from metalflow.integrations.common.deadline import Clock, MonotonicClock
from metalflow.tasks.common import logger
from metalflow.tasks.settings import settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

#: The journaled runbook step whose success is a host's milestone (MAAS accepted the deploy).
MILESTONE_STEP = "deploy-machine"
CANARY = "canary"

# A host's gate: where it stands for the decision to start the next wave.
NOT_STARTED, WAITING, PASSED, FAILED, TIMED_OUT = "not started", "waiting", "passed", "failed", "timed out"


class BulkRefused(ValueError):
    """The bulk request is wrong; nothing was started. ``str()`` names every bad field."""


class BulkFailed(Exception):
    """At least one host failed or was never started (the run's final state message)."""


class HostLike(Protocol):
    """What the plan reads of a host (``HostInfo`` is one; read-only, as a frozen record)."""

    @property
    def name(self) -> str: ...
    @property
    def maas_system_id(self) -> str | None: ...
    @property
    def maintenance(self) -> bool: ...
    @property
    def maintenance_reason(self) -> str | None: ...


# --- the plan: checked once, before anything starts ---------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The hosts in start order, grouped: the canary group first (when ``canary`` > 0), then
    waves of ``wave_size``. Hosts carry their inventory names."""

    groups: tuple[tuple[str, tuple[BulkItem, ...]], ...]
    canary: int
    wave_size: int
    max_failures: int
    milestone_timeout: float

    @property
    def items(self) -> list[BulkItem]:
        return [item for _, group in self.groups for item in group]


def plan_bulk(
    requests: Sequence[BulkItem],
    canary: int = 1,
    wave_size: int = 25,
    max_failures: int = 3,
    milestone_timeout: float = 1800.0,
    lookup: Callable[[str], HostLike | None] | None = None,
) -> Plan:
    """Check the whole request and group it into waves, or raise ``BulkRefused`` naming every
    bad field and its fix. ``lookup`` finds a host in the inventory (by name or CloudStack
    id); without it, hosts are taken as given (pure checks only)."""
    problems: list[str] = []
    n = len(requests)
    if n == 0:
        problems.append("requests: empty; give at least one {host, vm}")
    if canary < 0 or (n and canary > n):
        problems.append(f"canary: {canary} is out of range; use 0 to {n} (the number of hosts requested)")
    if wave_size < 1:
        problems.append(f"wave_size: {wave_size} is out of range; use 1 or more")
    if max_failures < 0:
        problems.append(f"max_failures: {max_failures} is out of range; use 0 or more")
    if not milestone_timeout > 0:
        problems.append(f"milestone_timeout: {milestone_timeout} is out of range; use a positive number of seconds")

    names: list[str] = []
    for i, item in enumerate(requests):
        name = item.host
        if lookup is not None:
            h = lookup(item.host)
            if h is None:
                problems.append(
                    f"requests[{i}].host: {item.host!r} is not in the inventory; "
                    "check the name or add the host to the rack config"
                )
            else:
                name = h.name
                if not h.maas_system_id:
                    problems.append(f"requests[{i}].host: {name} is not registered in MAAS; run register-host first")
                if h.maintenance:
                    problems.append(
                        f"requests[{i}].host: {name} is in maintenance ({h.maintenance_reason}); "
                        "fix it and clear maintenance, or leave it out"
                    )
        names.append(name)
    problems += _duplicates("host", names, "list each host once")
    problems += _duplicates("vm.name", [r.vm.name for r in requests], "give each VM its own name")
    problems += _duplicates("vm.uuid", [r.vm.uuid for r in requests], "give each VM its own uuid")
    if problems:
        raise BulkRefused("bulk-provision refused, nothing started: " + "; ".join(problems))

    items = [BulkItem(host=name, vm=r.vm) for name, r in zip(names, requests)]
    groups: list[tuple[str, tuple[BulkItem, ...]]] = []
    if canary:
        groups.append((CANARY, tuple(items[:canary])))
    rest = items[canary:]
    for w, start in enumerate(range(0, len(rest), wave_size), 1):
        groups.append((f"wave {w}", tuple(rest[start : start + wave_size])))
    return Plan(tuple(groups), canary, wave_size, max_failures, milestone_timeout)


def _duplicates(fld: str, values: list[str], fix: str) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for i, v in enumerate(values):
        if v in seen:
            out.append(f"requests[{i}].{fld}: {v!r} is also requests[{seen[v]}].{fld}; {fix}")
        else:
            seen[v] = i
    return out


# --- the waves: start, gate on the milestone, stop at the threshold -----------------------------


@dataclass(frozen=True)
class Outcome:
    """How one host's provision ended."""

    ok: bool
    message: str
    child_id: str | None = None


@dataclass
class HostRun:
    """Bookkeeping for one host of the bulk (owned by ``Waves``, read by the report)."""

    item: BulkItem
    wave: str
    gate: str = NOT_STARTED
    started_at: datetime | None = None
    milestone_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: Outcome | None = None
    future: Future[Outcome] | None = None
    deadline: Deadline | None = None

    @property
    def host(self) -> str:
        return self.item.host

    @property
    def failed(self) -> bool:
        """Failed, or (for gating) past its milestone budget and not yet succeeded."""
        if self.outcome is not None:
            return not self.outcome.ok
        return self.gate == TIMED_OUT


@dataclass
class BulkResult:
    runs: list[HostRun]
    aborted: str = ""  # why hosts were left unstarted, "" when none were

    def count(self) -> tuple[int, int, int]:
        """(provisioned, failed, not started)."""
        ok = sum(1 for r in self.runs if r.outcome is not None and r.outcome.ok)
        failed = sum(1 for r in self.runs if r.gate != NOT_STARTED and not (r.outcome and r.outcome.ok))
        return ok, failed, sum(1 for r in self.runs if r.gate == NOT_STARTED)

    def summary(self) -> str:
        ok, failed, idle = self.count()
        n = len(self.runs)
        if not failed and not idle:
            return f"{ok} of {n} host{_s(n)} provisioned"
        parts = [f"{failed} of {n} host{_s(n)} failed"] if failed else []
        if idle:
            parts.append(f"{idle} not started ({self.aborted})")
        return ", ".join(parts) + f"; {ok} provisioned"


@dataclass
class Waves:
    """Runs a ``Plan``: ``start`` launches one host (returns the future of its ``Outcome``),
    ``milestone`` says when that host passed its milestone (None: not yet). Both are injected,
    so the gating logic is tested without Prefect."""

    plan: Plan
    start: Callable[[HostRun], Future[Outcome]]
    milestone: Callable[[HostRun], datetime | None]
    poll: float = 0.5
    clock: Clock = field(default_factory=MonotonicClock)
    log: Any = None

    def __post_init__(self) -> None:
        self.log = self.log or logger()
        self.runs = [HostRun(item, label) for label, group in self.plan.groups for item in group]

    def failures(self) -> int:
        """Hosts failed so far, earlier waves included (their ends are collected here)."""
        for r in self.runs:
            if r.future is not None and r.outcome is None and r.future.done():
                self._update(r)
        return sum(1 for r in self.runs if r.failed)

    def run(self) -> BulkResult:
        aborted = ""
        for label, _ in self.plan.groups:
            group = [r for r in self.runs if r.wave == label]
            failures = self.failures()
            if failures > self.plan.max_failures:
                aborted = f"aborted after {failures} failure{_s(failures)}"
                break
            self.log.info("starting %s: %s", label, ", ".join(r.host for r in group))
            for r in group:
                self._start(r)
            self._wait_gate(group, canary=label == CANARY)
            if label == CANARY:
                bad = [r for r in group if r.gate in (FAILED, TIMED_OUT)]
                if bad:
                    failures = self.failures()
                    aborted = (
                        f"aborted after {failures} failure{_s(failures)}: canary "
                        f"{', '.join(r.host for r in bad)} failed before its milestone"
                    )
                    break
        if aborted:
            self.log.error(
                "bulk %s; %d host(s) not started", aborted, sum(1 for r in self.runs if r.gate == NOT_STARTED)
            )
        started = [r for r in self.runs if r.future is not None]
        wait([r.future for r in started if r.future is not None])
        for r in started:
            self._update(r)
        return BulkResult(self.runs, aborted)

    def _start(self, r: HostRun) -> None:
        r.gate, r.started_at = WAITING, _now()
        r.deadline = Deadline(self.plan.milestone_timeout, self.clock)
        r.future = self.start(r)

        def ended(_: Future[Outcome]) -> None:
            # Stamped by the thread that ends the host's run, not when the bulk next looks.
            r.ended_at = r.ended_at or _now()

        r.future.add_done_callback(ended)

    def _wait_gate(self, group: list[HostRun], *, canary: bool) -> None:
        """Until every host of ``group`` passed its milestone, failed or ran out of time;
        sooner when the outcome is already decided (a canary failed, too many failures)."""
        while True:
            for r in group:
                self._update(r)
            waiting = [r for r in group if r.gate == WAITING]
            if not waiting:
                return
            if canary and any(r.gate in (FAILED, TIMED_OUT) for r in group):
                return
            if not canary and self.failures() > self.plan.max_failures:
                return
            # Wakes at once when a host ends; otherwise polls the milestone.
            wait([r.future for r in waiting if r.future is not None], timeout=self.poll, return_when=FIRST_COMPLETED)

    def _update(self, r: HostRun) -> None:
        if r.future is None:
            return
        just_ended = r.outcome is None and r.future.done()
        if just_ended:
            r.outcome, r.ended_at = _outcome(r.future), r.ended_at or _now()
            if not r.outcome.ok:
                self.log.warning("%s (%s) failed: %s", r.host, r.wave, r.outcome.message)
        if r.milestone_at is None and (r.gate == WAITING or just_ended):
            r.milestone_at = self._probe(r)  # a host that ended is looked at one last time
        if r.gate != WAITING:
            return  # gated once: a late milestone or end changes the outcome, not the gate
        if r.milestone_at is not None or (r.outcome is not None and r.outcome.ok):
            r.gate = PASSED  # an ok without a deploy (case A: already deployed) passes too
        elif r.outcome is not None:
            r.gate = FAILED
        elif r.deadline is not None and r.deadline.expired():
            r.gate = TIMED_OUT
            self.log.warning(
                "%s did not reach its milestone (%s ok) within %.0f s: counted as failed for gating; its run goes on",
                r.host,
                MILESTONE_STEP,
                self.plan.milestone_timeout,
            )

    def _probe(self, r: HostRun) -> datetime | None:
        try:
            return self.milestone(r)
        except Exception as exc:  # noqa: BLE001 - a missed look is retried at the next poll
            self.log.warning("could not read %s's milestone: %s", r.host, exc)
            return None


def _outcome(fut: Future[Outcome]) -> Outcome:
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - the child's engine itself broke: a failure
        return Outcome(False, f"{type(exc).__name__}: {exc}")


def _now() -> datetime:
    return datetime.now(UTC)


def _s(n: int) -> str:
    return "" if n == 1 else "s"


# --- Prefect glue: child runs, their milestones, the report -------------------------------------


class Children:
    """This run's child runs by host, and their milestones. A child's id is known to the
    server as soon as its subflow starts but to us only when it returns, so it is looked up by
    the parent link. Children of an earlier attempt of this run (a rerun from the UI) are
    ignored: their milestones are not this attempt's.

    Milestones come from the hosts' journals: one inventory query for every host of the bulk
    per look (at most every ``min_refresh`` seconds), and a read of the child runs from the
    Prefect server only when a milestone shows up for a host whose child is not known yet.
    (Reading the children and each host's journal at every look cost, at fifty hosts, about
    a fifth of the Prefect server's request CPU and a hundred queries a second.)"""

    def __init__(self, parent_id: str, hosts: Sequence[str] = (), min_refresh: float = 0.25):
        self.parent_id = parent_id
        self.hosts = list(hosts)
        self.min_refresh = min_refresh
        self.ids: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.earlier: set[str] = set()
        self.since = _now()
        self._refreshed = 0.0
        self._looked = 0.0
        self._hits: dict[str, list[tuple[datetime, str | None]]] = {}

    def _read(self) -> list[FlowRun]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        self._refreshed = time.monotonic()
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(self.parent_id)])
                )
            )

    def ignore_existing(self) -> None:
        """Call before the first host starts: every child already there is an earlier attempt's."""
        self.since = _now()
        self.earlier = {str(fr.id) for fr in self._read()}

    def refresh(self) -> None:
        for fr in sorted(self._read(), key=lambda fr: fr.created or datetime.min.replace(tzinfo=UTC)):
            host = (fr.parameters or {}).get("host")
            if host and str(fr.id) not in self.earlier:
                self.ids[host], self.names[host] = str(fr.id), fr.name

    def _look(self) -> None:
        from metalflow.tasks.clients import inventory

        if time.monotonic() - self._looked < self.min_refresh:
            return
        self._looked = time.monotonic()
        hits: dict[str, list[tuple[datetime, str | None]]] = {}
        for e in inventory().history.step_events(self.hosts, MILESTONE_STEP, outcome="ok", since=self.since):
            hits.setdefault(e.host, []).append((e.at, e.run_id))
        self._hits = hits

    def milestone(self, r: HostRun) -> datetime | None:
        """When ``r``'s own child run journaled its deploy as accepted (None: not yet)."""
        self._look()
        hits = self._hits.get(r.host)
        if not hits:
            return None
        if r.host not in self.ids and time.monotonic() - self._refreshed >= self.min_refresh:
            self.refresh()
        child = self.ids.get(r.host)
        ours = [at for at, run_id in hits if child is not None and run_id == child]
        return min(ours) if ours else None


def run_child(item: BulkItem, erase_on_failure: EraseMode | None, step_task_runs: bool = False) -> Outcome:
    """One host's provision as a subflow of this run (call it inside a copy of the flow's
    context, so Prefect links it to its parent). Its steps run inline (``inline_steps``)
    unless ``step_task_runs``."""
    with contextlib.nullcontext() if step_task_runs else inline_steps():
        state = provision(host=item.host, vm=item.vm, erase_on_failure=erase_on_failure, return_state=True)
    child = state.state_details.flow_run_id
    child_id = str(child) if child else None
    if state.is_completed():
        try:
            message = str(state.result())
        except Exception:  # noqa: BLE001 - the result is only the story's last line
            message = state.message or "completed"
        return Outcome(True, message, child_id)
    return Outcome(False, state.message or state.name or "failed", child_id)


def describe_hosts(hosts: Sequence[str]) -> str:
    """``50 hosts (host-011 … host-060)``: the run name's subject."""
    n = len(hosts)
    if n == 0:
        return "0 hosts"
    shown = ", ".join(hosts) if n <= 2 else f"{hosts[0]} … {hosts[-1]}"
    return f"{n} host{_s(n)} ({shown})"


def bulk_run_name() -> str:
    params = flow_run.parameters or {}
    hosts = []
    for r in params.get("requests") or []:
        host = r.get("host") if isinstance(r, dict) else getattr(r, "host", None)
        hosts.append(str(host))
    return f"bulk-provision {describe_hosts(hosts)}"


def report_markdown(
    result: BulkResult, plan: Plan | None, children: Children | None, started: datetime, title: str
) -> str:
    ok, failed, idle = result.count()
    lines = [f"# {title}", "", f"**Outcome:** {result.summary()}", ""]
    if plan is not None:
        lines += [
            f"canary {plan.canary}, waves of {plan.wave_size}, no new host after more than "
            f"{plan.max_failures} failure{_s(plan.max_failures)}, milestone `{MILESTONE_STEP}` ok "
            f"within {plan.milestone_timeout:.0f} s",
            "",
        ]
    lines += [
        "| host | VM | wave | outcome | started | milestone | ended | duration | child run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def at(t: datetime | None) -> str:
        return f"+{(t - started).total_seconds():.1f} s" if t else ""

    for r in result.runs:
        if r.gate == NOT_STARTED:
            outcome = f"not started ({result.aborted})"
        elif r.outcome is None:
            outcome = "unknown"
        elif r.outcome.ok:
            outcome = "provisioned"
        else:
            outcome = "failed: " + r.outcome.message
        duration = f"{(r.ended_at - r.started_at).total_seconds():.1f} s" if r.ended_at and r.started_at else ""
        child = children.names.get(r.host, "") if children else ""
        lines.append(
            " | ".join(
                [
                    "",
                    r.host,
                    r.item.vm.name,
                    r.wave,
                    md_cell(outcome, 300),
                    at(r.started_at),
                    at(r.milestone_at),
                    at(r.ended_at),
                    duration,
                    md_cell(child, 300),
                    "",
                ]
            ).strip()
        )
    lines += [
        "",
        f"**Totals:** {len(result.runs)} requested, {ok} provisioned, {failed} failed, "
        f"{idle} not started; {(_now() - started).total_seconds():.1f} s in all",
    ]
    return "\n".join(lines)


@flow(name="bulk-provision", flow_run_name=bulk_run_name, log_prints=True)
def bulk_provision(
    requests: list[BulkItem],
    canary: int = 1,
    wave_size: int = 25,
    max_failures: int = 3,
    erase_on_failure: EraseMode | None = None,
    milestone_timeout: float | None = None,
    step_task_runs: bool = False,
) -> State[Any]:
    """Provision every ``requests`` host with its VM: the ``canary`` first hosts, then waves
    of ``wave_size``, each started when the previous one passed its milestone; no new host
    once more than ``max_failures`` failed. ``milestone_timeout`` (default: the
    deploy_timeout setting) bounds one host's wait for its milestone.

    Each host is a provision run of its own (its page, report, logs, host lock, rollback)
    whose steps run inline: journaled and reported as always, but not one Prefect task run
    each. ``step_task_runs=True`` makes every step a task run, as in a single provision; at
    fifty hosts on a two-core server those task runs' events were most of the CPU
    (docs/benchmarks.md)."""
    from metalflow.tasks.clients import inventory

    began = _now()
    title = bulk_run_name()
    inv = inventory()
    try:
        plan = plan_bulk(
            requests,
            canary,
            wave_size,
            max_failures,
            milestone_timeout if milestone_timeout is not None else settings().deploy_timeout,
            lookup=inv.hosts.find,
        )
    except BulkRefused as exc:
        publish_markdown("bulk-provision", f"# {title}\n\n**Outcome:** {exc}", str(exc))
        raise
    children = Children(str(flow_run.id), [item.host for item in plan.items])
    children.ignore_existing()
    log = logger()
    with ThreadPoolExecutor(max_workers=len(plan.items), thread_name_prefix="bulk") as pool:

        def start(r: HostRun) -> Future[Outcome]:
            # Each thread runs in its own copy of this flow's context: the subflow sees its
            # parent run and is recorded as its child (parent_task_run_id).
            ctx = contextvars.copy_context()
            return pool.submit(ctx.run, run_child, r.item, erase_on_failure, step_task_runs)

        result = Waves(plan, start, children.milestone, log=log).run()
    try:
        children.refresh()
    except Exception as exc:  # noqa: BLE001 - only the report's run names are missing then
        log.warning("could not read the child runs: %s", exc)
    summary = result.summary()
    publish_markdown("bulk-provision", report_markdown(result, plan, children, began, title), summary)
    _, failed, idle = result.count()
    if failed or idle:
        raise BulkFailed(summary)
    return Completed(message=summary)
