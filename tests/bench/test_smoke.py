"""Every benchmark still runs: ``python -m metalflow.bench.all --size smoke`` (each benchmark at
its smallest size, all four at once, each on its own Prefect server) into a temporary directory,
then each one's JSON, markdown and PNG are checked for their structure. Speed is not asserted here: figures belong to
bench/results from a full run on a quiet machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metalflow.bench.all import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]
FIGURE_KEYS = {
    "name",
    "metalflow",
    "baseline",
    "unit",
    "compare",
    "baseline_label",
    "target",
    "passed",
    "relation",
    "verdict",
    "note",
}
MACHINE_KEYS = {"cores", "memory_gb", "cpu_model", "python", "pyghmi", "prefect", "date"}
#: What each benchmark must have measured, in its JSON's "data".
DATA_KEYS = {
    "switch_batching": {"dialects"},
    "trigger_latency": {"singles", "bursts", "single_summary_s", "burst_summary_s"},
    "provision_concurrency": {"alone", "waves", "bulk", "bulks", "bulk_no_canary", "baseline", "T_s"},
    "power_freshness": {"sizes"},
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench-results")
    args = [sys.executable, "-m", "metalflow.bench.all", "--size", "smoke", "--out", str(out)]
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        stdout, stderr = proc.communicate(timeout=780)
    except BaseException:
        # SIGTERM lets bench.all stop the server, labs and serve it started (own sessions).
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=90)
        finally:
            proc.kill()
        raise
    return out, subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


# About 1.5 minutes on a quiet 2-core machine (four benchmarks at once: three Prefect servers, labs and serves).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_all_ran_without_error(smoke):
    out, proc = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ERROR" not in (out / "summary.md").read_text()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_results_written(smoke, name):
    out, proc = smoke
    files = {ext: out / f"{name}.{ext}" for ext in ("json", "md", "png")}
    for ext, path in files.items():
        assert path.exists(), f"{name}.{ext} missing; output:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    data = json.loads(files["json"].read_text())
    assert data["benchmark"] == name and data["size"] == "smoke"
    assert MACHINE_KEYS <= set(data["machine"])
    assert data["figures"], "no figure"
    for fig in data["figures"]:
        assert FIGURE_KEYS <= set(fig), fig
        assert fig["verdict"] in ("PASS", "MISS", "-")
        if fig["target"]:
            assert fig["passed"] in (True, False, None)
    assert DATA_KEYS[name] <= set(data["data"])
    assert isinstance(data["targets_met"], bool)
    if not data["targets_met"]:  # a miss is said plainly, with where the time goes
        assert data["findings"], f"{name}: a target was missed without a finding"
    md = files["md"].read_text()
    assert "| figure | metalflow | baseline (same run) |" in md
    assert all(f["name"] in md for f in data["figures"])
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_power_freshness_structure(smoke):
    out, _ = smoke
    size = json.loads((out / "power_freshness.json").read_text())["data"]["sizes"][0]
    for phase in ("stock", "bulk", "silent", "sweep", "flow"):
        assert phase in size
    for phase in ("stock", "bulk", "flow"):
        assert {"p50", "p95", "max"} <= set(size[phase]["age"]), phase
    assert size["silent"]["silent_hosts"], "no BMC was made silent"
    assert size["sweep"]["runs"] and all(r["state"] == "COMPLETED" for r in size["sweep"]["runs"])
    # power-poll on its schedule ran at least one window to its end and read every BMC
    assert size["flow"]["runs_completed"] >= 1 and size["flow"]["reads"] >= size["n"]


def test_provision_concurrency_structure(smoke):
    out, _ = smoke
    data = json.loads((out / "provision_concurrency.json").read_text())["data"]
    for wave in data["waves"] + [data["baseline"], data["bulk"], data["bulk_no_canary"]]:
        assert wave["failures"] == 0, [r["message"] for r in wave["runs"] if r["state"] != "COMPLETED"]
    # The bulk's wave hosts went through every phase, in order, as their journals say.
    assert len(data["bulks"]) == 1 and data["bulk"] is not None
    phases = data["bulk"]["phases"]
    wave = data["bulk"]["children"]["hosts"] - 1
    assert [p for p, v in phases.items() if v.get("n") != wave] == [], phases
    ends = [
        phases[p]["max"] for p in ("checks done", "PXE VLAN set", "deploy accepted", "deploy seen done", "VM recorded")
    ]
    assert ends == sorted(ends), phases
