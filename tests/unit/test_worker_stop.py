"""``metalflow worker`` stops cleanly (issue 18, point 5): the first SIGINT/SIGTERM stops the
Prefect worker at once (no new runs), running flow runs may finish up to a grace period, then
get SIGTERM (Prefect raises it in the flow, where the runbook rolls back) and, past a second
grace, are killed.

A stand-in for ``prefect worker start`` (say so: no Prefect server here): a process that starts
"flow runs" in sessions of their own, as Prefect's process worker does, and exits on SIGTERM.
The supervisor runs in a real process of its own, signalled for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

WORKER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    run_seconds, marks = float(sys.argv[1]), sys.argv[2]
    if run_seconds > 0:
        subprocess.Popen([sys.executable, "-c", '''
    import signal, sys, time
    def stop(*_):
        open(sys.argv[2], "a").write("rolled back\\\\n"); sys.exit(1)
    signal.signal(signal.SIGTERM, stop)
    time.sleep(float(sys.argv[1]))
    open(sys.argv[2], "a").write("finished\\\\n")
    ''', str(run_seconds), marks], start_new_session=True)
    open(marks, "a").write("worker up\\n")
    time.sleep(3600)
    """
)

SUPERVISOR = textwrap.dedent(
    """
    import sys
    from metalflow.deployments.workers import supervise
    code = supervise([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]], {},
                     stop_grace=float(sys.argv[4]), rollback_grace=10, say=lambda t: print(t, flush=True), poll=0.1)
    print("exit", code, flush=True)
    """
)


def start(tmp_path: Path, run_seconds: float, stop_grace: float) -> tuple[subprocess.Popen, Path]:
    marks = tmp_path / "marks"
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, WORKER, str(run_seconds), str(marks), str(stop_grace)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    deadline = time.monotonic() + 30
    while not (marks.exists() and "worker up" in marks.read_text()):
        assert time.monotonic() < deadline, "the stand-in worker did not start"
        time.sleep(0.1)
    time.sleep(0.5)  # its run process started too
    return proc, marks


def test_an_idle_worker_stops_on_the_first_signal(tmp_path):
    proc, _ = start(tmp_path, 0, 600)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - started < 15
    assert "stopping: no new runs; 0 running" in out and "exit 0" in out, out


def test_a_run_that_finishes_within_the_grace_is_left_to_finish(tmp_path):
    proc, marks = start(tmp_path, 3, 60)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "1 running" in out and "exit 0" in out, out
    assert marks.read_text().splitlines()[-1] == "finished", marks.read_text()
    assert "stopping 1 runs" not in out


def test_a_run_past_the_grace_is_stopped_and_rolls_back(tmp_path):
    proc, marks = start(tmp_path, 3600, 1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert "stopping 1 runs: each rolls back" in out and "exit 0" in out, out
    assert marks.read_text().splitlines()[-1] == "rolled back", marks.read_text()


def test_a_second_signal_skips_the_grace(tmp_path):
    proc, marks = start(tmp_path, 3600, 600)
    proc.send_signal(signal.SIGINT)
    time.sleep(2)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - started < 15
    assert marks.read_text().splitlines()[-1] == "rolled back", (out, marks.read_text())
