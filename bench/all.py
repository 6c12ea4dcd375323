"""Every benchmark, one after the other, on one Prefect server started once.

    python -m bench.all [--size smoke|full] [--only NAME ...] [--out DIR]

Writes each benchmark's ``<name>.json``/``.md``/``.png`` and ``summary.md`` (every table, and
the machine) under ``--out`` (default ``bench/results``). The full size takes about 1.5 hours
and must run on a quiet machine: absolute times on a shared 2-core machine are noise, and
even the same-run ratios suffer when other work competes for the cores.
"""
from __future__ import annotations

import importlib
import json
import time
import traceback
from pathlib import Path

from bench.common import default_out, machine, parser, prefect_server, stop_on_sigterm, workdir

#: Quick ones first: a broken Prefect path shows up before the long freshness runs.
BENCHMARKS = ("switch_batching", "trigger_latency", "provision_concurrency", "power_freshness")


def run_all(size: str, out: Path, api_url: str | None = None, keep: bool = False,
            only: list[str] | None = None) -> dict[str, str]:
    names = [n for n in BENCHMARKS if not only or n in only]
    status: dict[str, str] = {}
    started = time.monotonic()
    with workdir("all", keep) as home, prefect_server(api_url, home) as url:
        for name in names:
            t = time.monotonic()
            print(f"=== bench.{name} --size {size}", flush=True)
            try:
                rep = importlib.import_module(f"bench.{name}").run(size=size, out=out, api_url=url, keep=keep)
                status[name] = "targets met" if rep.passed else "targets missed"
            except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
                traceback.print_exc()
                status[name] = "ERROR"
            print(f"=== bench.{name}: {status[name]} in {time.monotonic() - t:.0f} s", flush=True)
    _summary(out, size, status, time.monotonic() - started)
    return status


def _summary(out: Path, size: str, status: dict[str, str], seconds: float) -> None:
    m = machine()
    lines = [f"# Benchmark results ({size})", "",
             f"`python -m bench.all --size {size}`: {m['date']}, {m['cores']} cores, {m['memory_gb']} GB, "
             f"{m['cpu_model']}; Python {m['python']}, pyghmi {m['pyghmi']}, Prefect {m['prefect']}; "
             f"{seconds / 60:.1f} min for this invocation. See docs/benchmarks.md for what each measures.", ""]
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
    a = p.parse_args()
    stop_on_sigterm()
    status = run_all(a.size, a.out or default_out(a.size), a.api_url, a.keep, a.only)
    raise SystemExit(1 if "ERROR" in status.values() else 0)


if __name__ == "__main__":
    main()
