"""metalflow on Prefect's distributed set-up: every deployment registered on a process work
pool, and process workers (``prefect worker start``) on any number of machines running them.

What this adds to ``metalflow serve``:

- ``deploy_all()`` registers the same deployments as ``deployments/registry.py`` (schedules
  from the settings) on a ``process`` work pool, with *module* entrypoints
  (``flows.provision:provision``): a worker imports them from the installed metalflow package,
  so nothing is pulled and the worker's working directory does not matter.
- ``ensure_crash_automation()`` makes Prefect mark a run Crashed when its heartbeats stop (a
  worker machine died). A self-hosted Prefect server does not do this by itself: without the
  automation a run whose worker died stays Running for ever.
- ``worker_command()``/``worker_env()`` are what ``metalflow worker`` runs, and
  ``WorkerProcess`` starts, stops or kills one worker (the scale tests and ``Stack`` use it).

A scheduled run (power-poll, audit) is one flow run made by the server's scheduler; every
worker polling the pool may see it, but only the one whose Pending transition the server
accepts runs it (the others log "Aborted submission"). So N workers never double-poll.
"""

from __future__ import annotations

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
#: Seconds between a flow run's heartbeats on ``metalflow worker`` (Prefect's minimum is 30;
#: its default, for every other runner, is 180).
HEARTBEAT_SECONDS = 30
#: A run that sent no heartbeat for this long is marked Crashed. The automation watches every
#: run on the server, so the window must cover the slowest heartbeat of any runner: three of
#: Prefect's default 180 s, with margin. With PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30 on every
#: worker (and ``serve``), ``metalflow deploy --crash-after 90`` detects a dead worker 6x faster.
CRASH_AFTER_SECONDS = 600.0
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


def ensure_crash_automation(within: float = CRASH_AFTER_SECONDS) -> str:
    """The automation that marks a run Crashed when no heartbeat (and no final state) came for
    ``within`` seconds after its last heartbeat. Replaces an older one of the same name so the
    window follows the argument. Returns the automation's id."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within <= HEARTBEAT_SECONDS:
        raise ValueError(
            f"crash window {within:.0f} s must be longer than the {HEARTBEAT_SECONDS} s between heartbeats"
        )
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(CRASH_AUTOMATION):
            client.delete_automation(old.id)
    automation = Automation(
        name=CRASH_AUTOMATION,
        description="A worker died mid-run: the run stopped sending heartbeats. Rerun it; metalflow's "
        "tasks converge from whatever state the hardware is in.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[
            ChangeFlowRunState(  # type: ignore[call-arg]  # name and force have defaults
                state=StateType.CRASHED,
                message=f"no heartbeat for {within:.0f} s: the worker running it died; rerun it to converge",
            )
        ],
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
