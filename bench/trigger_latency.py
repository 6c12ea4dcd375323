"""Trigger latency: from ``create_flow_run`` over the REST API to the first task of the run
running, one trigger at a time and in a burst; metalflow's ``serve`` settings vs Prefect's
defaults, both measured in the same run against the same server and lab.

    python -m metalflow.bench.trigger_latency [--size smoke|full]

The flow is ``status`` (read one BMC's power: one cheap task). metalflow's side is the
deployment ``status/metalflow`` of ``metalflow serve`` (every run in a thread of the serving
process, due runs claimed every 0.5 s: ``deployments.pool``); the baseline is the same flow
served as ``status/bench-defaults`` by a second process running Prefect's ``serve`` at its
defaults (runner poll every 10 s, a subprocess per run). Single triggers alternate between
the two (one run in flight at a time; the baseline's singles stop after
``baseline_singles``, each costs up to 10 s); each burst fires all its
``create_flow_run`` calls at once from a thread pool. Latencies use the server's timestamps:
run ``created`` to the first task run's ``start_time`` (and to the flow run's start).
Targets (issue 8): p50 <= 2 s one at a time; p95 <= 10 s in a burst of 50.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from metalflow.bench.common import Figure, Report, backend, default_out, main_for, summary, workdir
from metalflow.bench.stacks import flow_runs, stack, start_process, stop_process, task_runs, ts, wait_final, wait_idle
from metalflow.integrations.common import Deadline

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"singles": 1, "baseline_singles": 1, "burst": 2},
    "full": {"singles": 100, "baseline_singles": 30, "burst": 50},
}
VARIANTS = {"metalflow": "status/metalflow", "defaults": "status/bench-defaults"}
HOST = "host-001"


def _trigger(api, deployment: str, tag: str) -> tuple[str, float]:
    from metalflow.integrations.prefectapi import idempotency_key

    t = time.perf_counter()
    # A caller rides out a busy SQLite-backed server (503) as CloudStack's extension does: the
    # same idempotency key on every retry, for up to 5 minutes.
    run = api.create_flow_run(
        deployment,
        {"host": HOST},
        idempotency_key=idempotency_key("bench", tag, uuid.uuid4().hex),
        deadline=Deadline(300),
    )
    return run.id, time.perf_counter() - t


def _latencies(api_url: str, ids: list[str]) -> list[dict]:
    runs = flow_runs(api_url, ids)
    tasks = task_runs(api_url, ids)
    out = []
    for rid in ids:
        r = runs[rid]
        created = ts(r["created"])
        first = next((ts(t["start_time"]) for t in tasks.get(rid, []) if t.get("start_time")), None)
        start = ts(r.get("start_time"))
        out.append(
            {
                "id": rid,
                "state": (r.get("state") or {}).get("type"),
                "to_first_task_s": None if first is None or created is None else first - created,
                "to_flow_start_s": None if start is None or created is None else start - created,
                "run_s": r.get("total_run_time"),
            }
        )
    return out


def run(
    size: str = "full", out: Path | None = None, server=None, keep: bool = False, database: str | None = None
) -> Report:
    cfg = SIZES[size]
    rep = Report(
        "trigger_latency",
        size,
        "Trigger latency: create_flow_run to the first task running",
        params={
            "singles": cfg["singles"],
            "baseline_singles": cfg["baseline_singles"],
            "burst": cfg["burst"],
            "flow": "status",
            "metalflow": "metalflow serve (threads, claims due runs every 0.5 s)",
            "baseline": "serve() with Prefect's defaults (runner poll 10 s)",
        },
    )
    with (
        workdir("trigger_latency", keep) as home,
        backend(server, home, database) as be,
        stack(
            home / "stack", be.api_url, hosts=2, switches=1, block_from=74, inventory_url=be.inventory_url("trigger")
        ) as st,
    ):
        from metalflow.integrations.prefectapi import PrefectApi

        env = {k: v for k, v in st.env.items() if not k.startswith("PREFECT_RUNNER_")}
        baseline = start_process(
            ["-m", "metalflow.bench.serve_defaults", "--flow", "status", "--name", "bench-defaults"],
            env,
            home / "serve-defaults.log",
        )
        try:
            rep.params.update(be.describe())
            api = PrefectApi(be.api_url)
            end = time.monotonic() + 180
            while True:
                try:
                    api.deployment_id(VARIANTS["defaults"])
                    break
                except Exception:  # noqa: BLE001 - reported as data
                    if time.monotonic() > end or baseline.poll() is not None:
                        raise RuntimeError(
                            f"the baseline serve did not come up; see {home / 'serve-defaults.log'}"
                        ) from None
                    time.sleep(0.5)
            # One untimed run each: the first run of a served deployment pays one-off costs.
            warm = [_trigger(api, dep, "warm")[0] for dep in VARIANTS.values()]
            wait_final(api, warm, 180)

            singles: dict[str, list[str]] = {v: [] for v in VARIANTS}
            create_s: dict[str, list[float]] = {v: [] for v in VARIANTS}
            t0 = time.monotonic()
            for i in range(cfg["singles"]):
                order = list(VARIANTS.items()) if i % 2 == 0 else list(VARIANTS.items())[::-1]
                for variant, dep in order:
                    if variant == "defaults" and i >= cfg["baseline_singles"]:
                        continue
                    rid, took = _trigger(api, dep, f"single-{variant}")
                    singles[variant].append(rid)
                    create_s[variant].append(took)
                    wait_final(api, [rid], 120)
            singles_wall = time.monotonic() - t0

            bursts: dict[str, list[str]] = {}
            burst_create: dict[str, dict] = {}
            for variant, dep in VARIANTS.items():
                t = time.perf_counter()
                with ThreadPoolExecutor(cfg["burst"]) as pool:
                    got = list(
                        pool.map(
                            lambda k: _trigger(PrefectApi(be.api_url), dep, f"burst-{variant}-{k}"), range(cfg["burst"])
                        )
                    )
                burst_create[variant] = {
                    "all_created_s": time.perf_counter() - t,
                    "per_call": summary([g[1] for g in got]),
                }
                bursts[variant] = [g[0] for g in got]
                wait_final(api, bursts[variant], 600)
            single_lat = {v: _latencies(be.api_url, ids) for v, ids in singles.items()}
            burst_lat = {v: _latencies(be.api_url, ids) for v, ids in bursts.items()}
            wait_idle(baseline.pid)
            assert st.serve_proc is not None  # started by stack()
            wait_idle(st.serve_proc.pid)
        finally:
            stop_process(baseline)

    def pick(rows, key="to_first_task_s"):
        return [r[key] for r in rows if r[key] is not None]

    s = {v: summary(pick(rows)) for v, rows in single_lat.items()}
    b = {v: summary(pick(rows)) for v, rows in burst_lat.items()}
    failed = {v: sum(1 for r in single_lat[v] + burst_lat[v] if r["state"] != "COMPLETED") for v in VARIANTS}
    rep.add(
        Figure(
            "one at a time: p50 to first task",
            s["metalflow"]["p50"],
            s["defaults"]["p50"],
            "s",
            baseline_label="Prefect defaults",
            target="p50 ≤ 2 s",
            passed=s["metalflow"]["p50"] <= 2.0,
        )
    )
    rep.add(
        Figure(
            "one at a time: p95 to first task",
            s["metalflow"]["p95"],
            s["defaults"]["p95"],
            "s",
            baseline_label="Prefect defaults",
        )
    )
    rep.add(
        Figure(
            f"burst of {cfg['burst']}: p50 to first task",
            b["metalflow"]["p50"],
            b["defaults"]["p50"],
            "s",
            baseline_label="Prefect defaults",
        )
    )
    rep.add(
        Figure(
            f"burst of {cfg['burst']}: p95 to first task",
            b["metalflow"]["p95"],
            b["defaults"]["p95"],
            "s",
            baseline_label="Prefect defaults",
            target="p95 ≤ 10 s",
            passed=b["metalflow"]["p95"] <= 10.0,
        )
    )
    rep.add(
        Figure(
            "runs not Completed",
            failed["metalflow"],
            failed["defaults"],
            "runs",
            compare="difference",
            baseline_label="Prefect defaults",
            target="0",
            passed=failed["metalflow"] == 0,
        )
    )
    rep.data.update(
        {
            "singles": single_lat,
            "bursts": burst_lat,
            "single_summary_s": s,
            "burst_summary_s": b,
            "single_to_flow_start_s": {v: summary(pick(r, "to_flow_start_s")) for v, r in single_lat.items()},
            "burst_to_flow_start_s": {v: summary(pick(r, "to_flow_start_s")) for v, r in burst_lat.items()},
            "create_call_s": {v: summary(x) for v, x in create_s.items()},
            "burst_create": burst_create,
            "singles_wall_s": singles_wall,
        }
    )
    _explain(rep, s, b, cfg, rep.data)

    def plot(fig) -> None:
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for ax, rows, title in ((ax1, single_lat, "one at a time"), (ax2, burst_lat, f"burst of {cfg['burst']}")):
            data = [sorted(pick(rows[v])) for v in VARIANTS]
            ax.boxplot(data, tick_labels=["metalflow (poll 1 s)", "Prefect defaults (poll 10 s)"], showfliers=True)
            ax.set_title(title)
            ax.set_ylabel("create_flow_run → first task running (s)")
        ax1.axhline(2.0, color="tab:red", ls="--", lw=1, label="target p50 ≤ 2 s")
        ax2.axhline(10.0, color="tab:red", ls="--", lw=1, label="target p95 ≤ 10 s")
        ax1.legend(fontsize=8)
        ax2.legend(fontsize=8)

    rep.plot = plot
    rep.write(out or default_out(size))
    return rep


def _explain(rep: Report, s: dict, b: dict, cfg: dict, data: dict) -> None:
    """Where the latency goes: the serving process noticing and claiming the run (its poll)
    and starting it in a thread, vs the run reaching its first task, from the server's
    timestamps."""
    fs = data["single_to_flow_start_s"]["metalflow"]["p50"]
    ft = s["metalflow"]["p50"]
    rep.profile["one at a time, metalflow, p50"] = (
        f"created → flow run Running {fs:.2f} s (serve's poll, claim and thread start), Running → first task "
        f"{ft - fs:.2f} s (flow import, settings, inventory)"
    )
    bs = data["burst_to_flow_start_s"]["metalflow"]["p95"]
    rep.profile[f"burst of {cfg['burst']}, metalflow, p95"] = (
        f"created → flow run Running {bs:.2f} s; → first task {b['metalflow']['p95']:.2f} s; all "
        f"create_flow_run calls took {data['burst_create']['metalflow']['all_created_s']:.2f} s"
    )
    for f in findings(s, b, cfg, data, rep.params.get("prefect_database", "?"), rep.machine["cores"]):
        rep.findings.append(f)


def findings(s: dict, b: dict, cfg: dict, data: dict, database: str, cores: int) -> list[str]:
    """The misses, said with where their time goes."""
    out = []
    if s["metalflow"]["p50"] > 2.0:
        out.append(
            f"One at a time p50 is {s['metalflow']['p50']:.2f} s (target 2 s). Runs are threads of metalflow serve, "
            "claimed every 0.5 s: look at created → Running in the profile (the server's state transitions) "
            "against Running → first task (the flow's own start)."
        )
    if b["metalflow"]["p95"] <= 10.0:
        return out
    bs = data["burst_to_flow_start_s"]["metalflow"]["p95"]
    if database != "PostgreSQL":
        out.append(
            f"Burst p95 is {b['metalflow']['p95']:.2f} s (target 10 s) on a Prefect server backed by {database}; "
            f"created → Running took {bs:.1f} s (p95), the create calls "
            f"{data['burst_create']['metalflow']['all_created_s']:.1f} s. On SQLite look for 503 'database is "
            "locked' in the server's log: its one writer serialises the burst."
        )
    else:
        out.append(
            f"Burst p95 is {b['metalflow']['p95']:.2f} s (target 10 s) on a Prefect server backed by {database}. "
            f"Runs are threads of metalflow serve (no process start) and the {cfg['burst']} create calls took "
            f"{data['burst_create']['metalflow']['all_created_s']:.1f} s, but created → Running took {bs:.1f} s "
            f"(p95): the wait is in the server's state transitions (each run's claim, then Running). The same "
            "burst of the same code against a SQLite-backed server reached Running in p95 1.4–1.8 s on this "
            "machine (2026-12-06, bench.common.CpuSplit around a 50-run burst; the 2026-11-25 full run on SQLite: "
            "1.37 s to the first task), while on PostgreSQL the transitions queue for 5–9 s although neither the "
            f"{cores} cores (about 1.6 busy: serve 9, Prefect server 10–12, PostgreSQL 2.5 CPU-s over 13.5 s) nor "
            "the scheduled-runs query (0.03–0.9 s under the burst) is saturated; a larger server connection pool "
            "(30 + 20) changed nothing. What would close it: find where the Prefect server's flow-run state "
            "transitions serialise on PostgreSQL (outside metalflow's code), or give the server cores of its own. "
            "SQLite remains the better backend for an installation whose bursts stay small, at the price of the "
            "503s that failed runs in the provisioning wave (see provision_concurrency)."
        )
    return out


def main() -> None:
    main_for(run, __doc__)


if __name__ == "__main__":
    main()
