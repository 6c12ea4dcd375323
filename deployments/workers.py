"""metalflow on Prefect's distributed set-up: every deployment registered on a process work
pool, and process workers (``prefect worker start``) on any number of machines running them.

What this adds to ``metalflow serve``:

- ``deploy_all()`` registers the same deployments as ``deployments/registry.py`` (schedules
  from the settings) on a ``process`` work pool, with *module* entrypoints
  (``flows.provision:provision``): a worker imports them from the installed metalflow package,
  so nothing is pulled and the worker's working directory does not matter.
- ``ensure_crash_automation()`` makes Prefect mark a metalflow run Crashed when its heartbeats
  stop (a worker machine died). A self-hosted Prefect server does not do this by itself:
  without the automation a run whose worker died stays Running for ever.
- ``ensure_recover_automation()`` starts ``recover`` the moment a metalflow run is marked
  Crashed: it releases the dead run's host lock and finishes its rollback (issue 18).
- ``supervise()`` is ``metalflow worker``: the Prefect worker as a child, stopped cleanly on
  SIGINT/SIGTERM (no new runs at once; running ones finish up to a deadline, then roll back).
- ``worker_command()``/``worker_env()`` are what ``metalflow worker`` runs, and
  ``WorkerProcess`` starts, stops or kills one worker (the scale tests and ``Stack`` use it).

A scheduled run (power-poll, audit) is one flow run made by the server's scheduler; every
worker polling the pool may see it, but only the one whose Pending transition the server
accepts runs it (the others log "Aborted submission"). So N workers never double-poll.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

POOL = "metalflow"
POOL_TYPE = "process"
CRASH_AUTOMATION = "metalflow: crash runs whose heartbeats stopped"
RECOVER_AUTOMATION = "metalflow: recover what a crashed run left"
#: The tag on every metalflow deployment, so on its runs: the automations watch only these.
TAG = "metalflow"
#: Seconds between a flow run's heartbeats on ``metalflow worker`` and ``metalflow serve``
#: (Prefect's minimum is 30; its default, for every other runner, is 180).
HEARTBEAT_SECONDS = 30
#: A metalflow run that sent no heartbeat for this long is marked Crashed: two missed
#: heartbeats. Prefect notices about 20 s after the window (measured 77-82 s from a SIGKILL with
#: 60 s), and recovery needs about 20 s more: two minutes from a dead worker to free hosts. A
#: heartbeat more than 30 s late (a machine so loaded that a daemon thread did not run for 30 s)
#: would be taken for a crash. The automation watches only runs tagged ``metalflow``, whose
#: runners send one every 30 s; a pool worker started another way than ``metalflow worker``
#: needs PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 too (Prefect's 180 s would look like a crash).
CRASH_AFTER_SECONDS = 60.0
#: How often an idle worker asks for runs. Prefect's default (10 s) adds up to 10 s between a
#: trigger and the run's start; 2 s costs one small query per worker every 2 s.
QUERY_SECONDS = 2


def _entrypoint(flow) -> str:
    return f"{flow.fn.__module__}:{flow.fn.__name__}"


def pool_deployments(cfg=None, *, pool: str = POOL, schedules: bool = True) -> list:
    """The deployments ``metalflow serve`` serves (same names, tags, parameters and
    schedules), bound to ``pool`` with module entrypoints."""
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    from metalflow.deployments.registry import deployments, flows_by_name

    flows = flows_by_name()
    out = []
    for served in deployments(cfg, schedules=schedules):
        flow = flows[served.flow_name]
        d: RunnerDeployment = flow.to_deployment(  # a sync call: no coroutine
            name=served.name,
            tags=list(served.tags),
            parameters=dict(served.parameters),
            schedules=list(served.schedules or []),
            description=served.description,
            work_pool_name=pool,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        d.entrypoint = _entrypoint(flow)  # "module:function", as in deployments/prefect.yaml
        out.append(d)
    return out


def ensure_pool(pool: str = POOL) -> None:
    """Create the process work pool unless it exists (a pool of another type is refused)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type=POOL_TYPE))
            except ObjectAlreadyExists:  # another `metalflow deploy` got there first
                pass
            return
        if existing.type != POOL_TYPE:
            raise ValueError(
                f"work pool {pool!r} exists with type {existing.type!r}; metalflow needs a "
                f"{POOL_TYPE!r} pool (choose another name with --pool)"
            )


def _replace_automation(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(name):
            client.delete_automation(old.id)


def _metalflow_runs() -> dict:
    """The trigger's resources: flow runs tagged ``metalflow`` (from their deployment)."""
    from prefect.events.schemas.events import ResourceSpecification

    return {
        "match": ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        "match_related": ResourceSpecification(
            {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{TAG}"}
        ),
    }


def ensure_crash_automation(within: float = CRASH_AFTER_SECONDS) -> str:
    """The automation that marks a metalflow run Crashed when no heartbeat (and no final state)
    came for ``within`` seconds after its last heartbeat. Replaces an older one of the same name
    so the window follows the argument. Returns the automation's id."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    if within <= HEARTBEAT_SECONDS:
        raise ValueError(
            f"crash window {within:.0f} s must be longer than the {HEARTBEAT_SECONDS} s between heartbeats"
        )
    _replace_automation(CRASH_AUTOMATION)
    automation = Automation(
        name=CRASH_AUTOMATION,
        description="A worker died mid-run: the run stopped sending heartbeats. The recover "
        "automation then releases its host lock and finishes its rollback.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
            **_metalflow_runs(),
        ),
        actions=[
            ChangeFlowRunState(  # type: ignore[call-arg]  # name and force have defaults
                state=StateType.CRASHED,
                message=f"no heartbeat for {within:.0f} s: the worker running it died; recover finishes its rollback",
            )
        ],
    ).create()
    return str(automation.id)  # type: ignore[union-attr]  # sync call: not a coroutine


def ensure_recover_automation(recover_deployment_id: str) -> str:
    """The automation that runs the ``recover`` deployment (a sweep: every host with records
    of a dead run) each time a metalflow run is marked Crashed, by the crash automation, a
    worker that saw its process die, or an operator. Returns the automation's id."""
    from uuid import UUID

    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    _replace_automation(RECOVER_AUTOMATION)
    automation = Automation(
        name=RECOVER_AUTOMATION,
        description="A metalflow run was marked Crashed: release its host lock and finish its rollback.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            posture=Posture.Reactive,
            threshold=1,
            **_metalflow_runs(),
        ),
        actions=[RunDeployment(source="selected", deployment_id=UUID(recover_deployment_id), parameters={})],  # type: ignore[call-arg]
    ).create()
    return str(automation.id)  # type: ignore[union-attr]  # sync call: not a coroutine


def deploy_all(
    cfg=None, *, pool: str = POOL, schedules: bool = True, crash_after: float | None = CRASH_AFTER_SECONDS
) -> dict[str, str]:
    """Register every deployment on ``pool`` (made if missing) against ``PREFECT_API_URL``;
    idempotent. Returns ``{"<flow>/metalflow": deployment id}``."""
    ensure_pool(pool)
    ids = {f"{d.flow_name}/{d.name}": str(d.apply()) for d in pool_deployments(cfg, pool=pool, schedules=schedules)}
    if crash_after:
        ensure_crash_automation(crash_after)
    ensure_recover_automation(ids["recover/metalflow"])
    return ids


# ---------------------------------------------------------------------------- workers


def worker_command(
    pool: str = POOL, *, name: str | None = None, limit: int | None = None, work_queues: tuple[str, ...] = ()
) -> list[str]:
    """``prefect worker start --pool <pool> --type process`` from this interpreter's environment."""
    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable)) or "prefect"
    cmd = [prefect, "worker", "start", "--pool", pool, "--type", POOL_TYPE]
    if name:
        cmd += ["--name", name]
    if limit:
        cmd += ["--limit", str(limit)]
    for q in work_queues:
        cmd += ["--work-queue", q]
    return cmd


def worker_env(
    base: Mapping[str, str] | None = None,
    *,
    query_seconds: float = QUERY_SECONDS,
    prefetch_seconds: float | None = None,
    heartbeat_seconds: int = HEARTBEAT_SECONDS,
) -> dict[str, str]:
    """The worker's environment: ``base`` (default: ours) plus a short poll interval and flow
    run heartbeats (which the crash automation watches); values already set in ``base`` win.
    The flow runs inherit it, so METALFLOW_* settings given here reach the flows."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", f"{query_seconds:g}")
    if prefetch_seconds is not None:
        env.setdefault("PREFECT_WORKER_PREFETCH_SECONDS", f"{prefetch_seconds:g}")
    env.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(max(30, int(heartbeat_seconds))))
    return env


_SUBMITTING = re.compile(r"submitting flow run '([0-9a-f-]{36})'")
_ABORTED = re.compile(r"Aborted submission of flow run '([0-9a-f-]{36})'")


@dataclass
class WorkerProcess:
    """One ``prefect worker start`` process in its own process group, logging to a file."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @classmethod
    def start(
        cls, name: str, *, env: Mapping[str, str], log_path: Path, pool: str = POOL, limit: int | None = None
    ) -> WorkerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**env, "PYTHONUNBUFFERED": "1"}  # the log file is read while the worker runs
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                worker_command(pool, name=name, limit=limit),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_online(self, api_url: str, pool: str = POOL, timeout: float = 60.0) -> float:
        """Wait until the server lists this worker ONLINE in ``pool``; returns the seconds waited."""
        import requests

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.alive():
                raise RuntimeError(
                    f"worker {self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            try:
                r = requests.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=5)
                if r.ok and any(w["name"] == self.name and w.get("status") == "ONLINE" for w in r.json()):
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker {self.name} not online in pool {pool} within {timeout:.0f} s; see {self.log_path}")

    def flow_run_pids(self) -> list[int]:
        """The flow-run processes this worker started and that still run (its children; each
        sits in a session of its own, so a signal to the worker's group does not reach them)."""
        return _children(self.pid)

    def runs(self) -> set[str]:
        """Ids of the flow runs this worker submitted for execution (its log says so; a run
        another worker won is logged as aborted and left out)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        # In log order, the last word on a run counts: a run lost to another worker at first and
        # submitted here later (a rerun from the UI) is this worker's.
        last: dict[str, bool] = {}
        for line in text.splitlines():
            for m in _SUBMITTING.finditer(line):
                last[m.group(1)] = True
            for m in _ABORTED.finditer(line):
                last[m.group(1)] = False
        return {run for run, submitted in last.items() if submitted}

    def kill(self) -> list[int]:
        """What a dying machine does: SIGKILL the worker's process group and every flow run it
        started. Returns the flow-run pids killed."""
        runs = self.flow_run_pids()
        for pid in runs:
            _killpg(pid)
        _killpg(self.pid)
        self.proc.wait(timeout=30)
        return runs

    def kill_worker_only(self) -> None:
        """SIGKILL the worker's process group only: its flow-run processes (each in a session
        of its own) live on, writing to a pipe nobody reads any more."""
        _killpg(self.pid)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 20.0) -> None:
        """A clean stop: SIGTERM to the worker, which stops polling; runs it started are left
        to finish (they are in their own sessions)."""
        if not self.alive():
            return
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped) is not running
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def supervise(
    cmd: list[str],
    env: Mapping[str, str],
    *,
    stop_grace: float,
    rollback_grace: float,
    say=print,
    poll: float = 0.5,
) -> int:
    """Run the Prefect worker ``cmd`` as a child and stop it cleanly (``metalflow worker``).

    On the first SIGINT or SIGTERM the worker is stopped at once (SIGTERM; SIGKILL after 10 s):
    no new run is taken. Its running flow runs (processes in sessions of their own, which
    outlive the worker and whose logs go to the API) may finish for ``stop_grace`` seconds; then,
    or at a second signal, each gets SIGTERM, which Prefect raises in the flow as a termination
    signal: metalflow's runbook rolls back what the run changed and the run ends. After
    ``rollback_grace`` more seconds (or a third signal) what is left is killed, and ``recover``
    finishes it. Returns the exit status (the worker's own when it ended by itself)."""
    signals: list[int] = []

    def note(signum: int, _frame: object) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = subprocess.Popen(cmd, env=dict(env), start_new_session=True)
        while not signals:
            code = worker.poll()
            if code is not None:
                return code
            time.sleep(poll)
        runs = _children(worker.pid)
        say(f"stopping: no new runs; {len(runs)} running, given {stop_grace:.0f} s to finish (again: stop them now)")
        _signal_group(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _signal_group(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)

        def wait_runs(seconds: float, signals_seen: int) -> list[int]:
            deadline = time.monotonic() + seconds
            while True:
                left = [pid for pid in runs if _alive(pid)]
                if not left or time.monotonic() >= deadline or len(signals) > signals_seen:
                    return left
                time.sleep(poll)

        left = wait_runs(stop_grace, 1)
        if left:
            say(f"stopping {len(left)} runs: each rolls back what it changed ({rollback_grace:.0f} s at most)")
            for pid in left:
                _signal_group(pid, signal.SIGTERM)
            left = wait_runs(rollback_grace, len(signals))
        for pid in left:
            say(f"killing run process {pid}: recover finishes its rollback once Prefect marks it Crashed")
            _killpg(pid)
        say("worker stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses; split after the last ")"
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)
