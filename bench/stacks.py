"""The Prefect-path pieces the benchmarks share: a ``deployments.stack.Stack`` (lab + metalflow
served) on a given Prefect server, and readers of flow and task runs with the server's own
timestamps (so latencies are measured on one clock, the server's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metalflow.deployments.stack import Stack

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import requests

from metalflow.bench.common import free_block


@contextlib.contextmanager
def stack(
    home: Path,
    api_url: str,
    *,
    hosts: int,
    switches: int = 1,
    block_from: int,
    lab_args: Sequence[str] = (),
    serve_env: dict[str, str] | None = None,
    schedules: bool = False,
    serve: bool = True,
    lab_timeout: float = 180,
    inventory_url: str | None = None,
) -> Iterator[Stack]:
    """A lab of ``hosts`` hosts and ``metalflow serve`` against the server at ``api_url`` (which
    must be up: the benchmarks share one), the inventory at ``inventory_url`` (None: a SQLite
    file under ``home``). Scheduled runs left behind are deleted on exit, so the next benchmark
    on the same server does not inherit a power-poll schedule."""
    from metalflow.deployments.stack import Stack

    home.mkdir(parents=True, exist_ok=True)
    env = dict(serve_env or {})
    if inventory_url:
        env["METALFLOW_INVENTORY_URL"] = inventory_url
    st = Stack(
        home=home,
        api_url=api_url,
        hosts=hosts,
        switches=switches,
        block=free_block(block_from),
        lab_args=tuple(lab_args),
        serve_env=env,
    )
    try:
        st.start_lab(timeout=lab_timeout)
        st.setup()
        if serve:
            st.start_serve(timeout=180, extra_args=() if schedules else ("--no-schedules",))
        yield st
    finally:
        from metalflow.deployments.stack import _stop

        if st.serve_proc is not None and st.serve_proc.poll() is None:
            wait_idle(st.serve_proc.pid, 30)  # let finished runs' subprocesses exit first
        _stop(st.serve_proc)
        _stop(st.lab_proc)
        delete_scheduled(api_url)


def start_process(args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


def stop_process(proc: subprocess.Popen | None) -> None:
    from metalflow.deployments.stack import _stop

    _stop(proc)


def _post(api_url: str, path: str, body: dict, timeout: float = 30) -> list | dict:
    for attempt in range(8):
        r = requests.post(f"{api_url}{path}", json=body, timeout=timeout)
        if r.status_code in (502, 503, 504) or (r.status_code == 500 and "locked" in r.text):
            time.sleep(0.5 * (attempt + 1))  # SQLite "database is locked": retry, as every caller must
            continue
        r.raise_for_status()
        return r.json()
    r.raise_for_status()
    return r.json()


def ts(value: str | None) -> float | None:
    """An API timestamp as epoch seconds."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def flow_runs(api_url: str, ids: Sequence[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    ids = list(ids)
    for i in range(0, len(ids), 200):
        for d in _post(api_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids[i : i + 200]}}, "limit": 200}):
            out[d["id"]] = d
    return out


def flow_runs_of(api_url: str, deployment_id: str, since_epoch: float, limit: int = 200) -> list[dict]:
    """Runs of one deployment whose expected start is after ``since_epoch``."""
    since = datetime.fromtimestamp(since_epoch).astimezone().isoformat()
    return list(
        _post(
            api_url,
            "/flow_runs/filter",
            {
                "deployments": {"id": {"any_": [deployment_id]}},
                "flow_runs": {"expected_start_time": {"after_": since}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": limit,
            },
        )
    )


def task_runs(api_url: str, flow_run_ids: Sequence[str]) -> dict[str, list[dict]]:
    """The task runs of each flow run, by flow run id, in start order."""
    out: dict[str, list[dict]] = {i: [] for i in flow_run_ids}
    ids = list(flow_run_ids)
    for i in range(0, len(ids), 50):
        offset = 0
        while True:
            page = _post(
                api_url,
                "/task_runs/filter",
                {
                    "flow_runs": {"id": {"any_": ids[i : i + 50]}},
                    "sort": "EXPECTED_START_TIME_ASC",
                    "limit": 200,
                    "offset": offset,
                },
            )
            for t in page:
                out.setdefault(t["flow_run_id"], []).append(t)
            if len(page) < 200:
                break
            offset += 200
    for runs in out.values():
        runs.sort(key=lambda t: ts(t.get("start_time")) or float("inf"))
    return out


def delete_scheduled(api_url: str) -> int:
    """Delete every run still Scheduled (auto-scheduled power-poll runs of a stopped stack)."""
    n = 0
    try:
        runs = _post(
            api_url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 200}
        )
        for d in runs:
            requests.delete(f"{api_url}/flow_runs/{d['id']}", timeout=10)
            n += 1
    except requests.RequestException:
        pass
    return n


def wait_final(api, run_ids: Sequence[str], timeout: float) -> dict[str, dict]:
    """Wait until every run is in a final state (or the timeout); returns the runs as read."""
    end = time.monotonic() + timeout
    pending = set(run_ids)
    runs: dict[str, dict] = {}
    while pending and time.monotonic() < end:
        got = flow_runs(api.api_url, list(pending))
        for rid, d in got.items():
            if (d.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                runs[rid] = d
                pending.discard(rid)
        if pending:
            time.sleep(0.3)
    if pending:
        runs.update(flow_runs(api.api_url, list(pending)))
    return runs


def wait_idle(pid: int, timeout: float = 60) -> bool:
    """Wait until process ``pid`` has no child processes (e.g. serve's flow run subprocesses
    have exited after reporting their final state); stopping serve before then makes its
    runner mark a run that just completed as Cancelled."""
    from metalflow.bench.common import tree

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(tree([pid])) <= 1:
            return True
        time.sleep(0.2)
    return False
