"""deployments/workers.py offline: the pool deployments are the served ones, bound to the pool
with module entrypoints that import back to the same flows; the worker's command and env."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib import import_module
from pathlib import Path

import pytest
import yaml

from metalflow.deployments.registry import deployments
from metalflow.deployments.workers import (
    HEARTBEAT_SECONDS,
    POOL,
    WorkerProcess,
    ensure_crash_automation,
    pool_deployments,
    worker_command,
    worker_env,
)
from metalflow.tasks.settings import Settings

YAML = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"


def _load(entrypoint: str):
    module, _, attr = entrypoint.partition(":")
    return getattr(import_module(module), attr)


def test_pool_deployments_are_the_served_ones_on_the_pool():
    cfg = Settings(power_poll_interval=20, audit_interval=90)
    served = {d.flow_name: d for d in deployments(cfg)}
    pooled = {d.flow_name: d for d in pool_deployments(cfg, pool="racks")}
    assert pooled.keys() == served.keys()
    for name, d in pooled.items():
        s = served[name]
        assert d.work_pool_name == "racks" and d.name == s.name == "metalflow"
        assert d.tags == s.tags and d.parameters == s.parameters
        assert [x.schedule.interval for x in d.schedules] == [x.schedule.interval for x in s.schedules]
        assert _load(d.entrypoint).name == name  # a worker imports it from the installed package


def test_pool_entrypoints_match_prefect_yaml():
    doc = yaml.safe_load(YAML.read_text())
    assert {d["entrypoint"] for d in doc["deployments"]} == {d.entrypoint for d in pool_deployments(Settings())}


def test_no_schedules_when_asked():
    assert all(not d.schedules for d in pool_deployments(Settings(), schedules=False))


def test_worker_command_and_env():
    cmd = worker_command(POOL, name="rack-7", limit=4)
    assert cmd[1:] == [
        "worker",
        "start",
        "--pool",
        "metalflow",
        "--type",
        "process",
        "--name",
        "rack-7",
        "--limit",
        "4",
    ]
    env = worker_env({"METALFLOW_INVENTORY_URL": "postgresql+psycopg://db/inv", "PREFECT_WORKER_QUERY_SECONDS": "5"})
    assert env["METALFLOW_INVENTORY_URL"] == "postgresql+psycopg://db/inv"
    assert env["PREFECT_WORKER_QUERY_SECONDS"] == "5"  # the operator's value wins
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)


def test_a_crash_window_shorter_than_a_heartbeat_is_refused():
    with pytest.raises(ValueError, match="longer than"):
        ensure_crash_automation(HEARTBEAT_SECONDS)


def test_kill_reaches_the_children_in_their_own_sessions(tmp_path):
    """A worker's flow runs sit in sessions of their own (Prefect isolates them), so a signal
    to the worker's process group misses them; ``kill`` finds them as children."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    worker = WorkerProcess("fake", proc, tmp_path / "fake.log")
    end = time.monotonic() + 10
    while not worker.flow_run_pids() and time.monotonic() < end:
        time.sleep(0.05)
    children = worker.flow_run_pids()
    assert len(children) == 1
    assert worker.kill() == children
    assert proc.returncode == -9
    end = time.monotonic() + 10
    while not _dead(children[0]) and time.monotonic() < end:
        time.sleep(0.05)
    assert _dead(children[0])


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_runs_reads_the_log_and_leaves_out_aborted_submissions(tmp_path):
    log = tmp_path / "w.log"
    a, b = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
    log.write_text(
        f"INFO | Worker 'w' submitting flow run '{a}'\n"
        f"INFO | Worker 'w' submitting flow run '{b}'\n"
        f"INFO | Aborted submission of flow run '{b}'. Server sent an abort signal: ...\n"
    )
    worker = WorkerProcess("w", subprocess.Popen(["true"]), log)
    worker.proc.wait()
    assert worker.runs() == {a}


def test_runs_counts_a_run_submitted_again_after_an_aborted_submission(tmp_path):
    """A run another worker won first and this one ran later (a rerun from the UI)."""
    log = tmp_path / "w.log"
    a = "33333333-3333-3333-3333-333333333333"
    log.write_text(
        f"INFO | Worker 'w' submitting flow run '{a}'\n"
        f"INFO | Aborted submission of flow run '{a}'. Server sent an abort signal: ...\n"
        f"INFO | Worker 'w' submitting flow run '{a}'\n"
    )
    worker = WorkerProcess("w", subprocess.Popen(["true"]), log)
    worker.proc.wait()
    assert worker.runs() == {a}
