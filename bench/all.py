"""Every benchmark: one after the other on one Prefect server (full), or all at once (smoke).

    python -m metalflow.bench.all [--size smoke|full] [--only NAME ...] [--out DIR] [--database postgresql|sqlite]

Writes each benchmark's ``<name>.json``/``.md``/``.png`` and ``summary.md`` (every table, and
the machine) under ``--out`` (default ``bench/results``). The full size takes about 1.5 hours
and must run on a quiet machine: absolute times on a shared 2-core machine are noise, and
even the same-run ratios suffer when other work competes for the cores.

The smoke size proves that each benchmark still runs; its figures mean nothing. So its
benchmarks run at the same time, each as its own process with its own Prefect server and
database (``--serial`` runs them one after the other instead): two ``metalflow serve`` on one
server would claim each other's runs, since they serve the same deployment names. Most of a
smoke run is waiting (a lab's deploy delay, a baseline's 10 s poll, a power-poll window), so
four at once take about as long as the longest.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from metalflow.bench.common import backend, default_out, machine, parser, stop_on_sigterm, workdir

#: Quick ones first: a broken Prefect path shows up before the long freshness runs.
BENCHMARKS = ("switch_batching", "trigger_latency", "provision_concurrency", "power_freshness")


def run_all(
    size: str,
    out: Path,
    server: str | None = None,
    keep: bool = False,
    only: list[str] | None = None,
    database: str | None = None,
    parallel: bool | None = None,
) -> dict[str, str]:
    names = [n for n in BENCHMARKS if not only or n in only]
    parallel = (size == "smoke" and server is None) if parallel is None else parallel
    started = time.monotonic()
    if parallel:
        status = _at_once(names, size, out, keep, database)
    else:
        status = _one_by_one(names, size, out, server, keep, database)
    _summary(out, size, status, time.monotonic() - started)
    return status


def _one_by_one(
    names: list[str], size: str, out: Path, server: str | None, keep: bool, database: str | None
) -> dict[str, str]:
    status: dict[str, str] = {}
    with workdir("all", keep) as home, backend(server, home, database) as be:
        for name in names:
            t = time.monotonic()
            print(f"=== bench.{name} --size {size}", flush=True)
            try:
                rep = importlib.import_module(f"metalflow.bench.{name}").run(size=size, out=out, server=be, keep=keep)
                status[name] = "targets met" if rep.passed else "targets missed"
            except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
                traceback.print_exc()
                status[name] = "ERROR"
            print(f"=== bench.{name}: {status[name]} in {time.monotonic() - t:.0f} s", flush=True)
    return status


def _at_once(names: list[str], size: str, out: Path, keep: bool, database: str | None) -> dict[str, str]:
    """Each benchmark as ``python -m metalflow.bench.<name>`` in its own process, all started together."""
    status: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)
    with workdir("all", keep) as home:
        procs: dict[str, tuple[subprocess.Popen, Path, float]] = {}
        started = time.time()
        try:
            for name in names:
                args = [sys.executable, "-m", f"bench.{name}", "--size", size, "--out", str(out)]
                args += ["--keep"] if keep else []
                args += ["--database", database] if database else []
                log = home / f"{name}.log"
                print(f"=== bench.{name} --size {size} (started; output in its log)", flush=True)
                procs[name] = (
                    subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=dict(os.environ)),
                    log,
                    time.monotonic(),
                )
            for name, (proc, log, t) in procs.items():
                rc = proc.wait()
                text = log.read_text(errors="replace")
                result = out / f"{name}.json"
                fresh = rc == 0 and result.exists() and result.stat().st_mtime >= started
                if fresh:
                    status[name] = "targets met" if json.loads(result.read_text())["targets_met"] else "targets missed"
                else:
                    status[name] = "ERROR"
                print(f"=== bench.{name}: {status[name]} in {time.monotonic() - t:.0f} s", flush=True)
                if status[name] == "ERROR":
                    print(f"--- bench.{name} exited {rc}; the end of its output:\n{text[-4000:]}", flush=True)
        finally:
            # Ctrl-C or SIGTERM: each benchmark stops the servers and labs it started.
            for proc, _, _ in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc, _, _ in procs.values():
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return status


def _summary(out: Path, size: str, status: dict[str, str], seconds: float | None) -> None:
    """``summary.md`` under ``out``; ``seconds`` None: only assembled from the results there."""
    m = machine()
    how = (
        f"{seconds / 60:.1f} min for this invocation"
        if seconds is not None
        else "assembled from each benchmark's latest run (`bench.all --summary`; each one's date below)"
    )
    lines = [
        f"# Benchmark results ({size})",
        "",
        f"`python -m metalflow.bench.all --size {size}`: {m['date']}, {m['cores']} cores, {m['memory_gb']} GB, "
        f"{m['cpu_model']}; Python {m['python']}, pyghmi {m['pyghmi']}, Prefect {m['prefect']}; "
        f"{how}. See docs/benchmarks.md for what each measures.",
        "",
    ]
    # Benchmarks not run this time (``--only``) keep their last results in ``out``: listed too.
    status = dict(status)
    for name in BENCHMARKS:
        if name not in status and (out / f"{name}.json").exists():
            earlier = json.loads((out / f"{name}.json").read_text())
            met = "targets met" if earlier.get("targets_met") else "targets missed"
            status[name] = f"{met} (run of {earlier['machine'].get('date', '?')})"
    status = {n: status[n] for n in BENCHMARKS if n in status}
    for name, st in status.items():
        lines.append(f"- [{name}]({name}.md): {st}")
    for name in status:
        md = out / f"{name}.md"
        if md.exists():
            body = md.read_text().split("\n", 1)[1]
            lines += ["", f"## {name}", body.split("## Findings")[0].rstrip()]
            data = json.loads((out / f"{name}.json").read_text())
            if data.get("findings"):
                lines += ["", "Findings:", ""] + [f"- {x}" for x in data["findings"]]
            lines += ["", f"![{name}]({name}.png)"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"summary: {out / 'summary.md'}")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--only", nargs="*", choices=BENCHMARKS, help="run only these")
    p.add_argument("--serial", action="store_true", help="smoke: one after the other on one server, not all at once")
    p.add_argument(
        "--summary", action="store_true", help="run nothing: rewrite summary.md from the results already in --out"
    )
    a = p.parse_args()
    if a.summary:
        _summary(a.out or default_out(a.size), a.size, {}, None)
        return
    stop_on_sigterm()
    status = run_all(
        a.size, a.out or default_out(a.size), a.server, a.keep, a.only, a.database, parallel=False if a.serial else None
    )
    raise SystemExit(1 if "ERROR" in status.values() else 0)


if __name__ == "__main__":
    main()
