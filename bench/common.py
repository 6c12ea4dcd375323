"""What every benchmark shares: sizes, the machine it ran on, a Prefect server to reuse, a
sampler of a process tree's CPU and memory (read from /proc), percentiles, and the writer of
``<name>.json``, ``<name>.md`` and ``<name>.png``.

A benchmark is a ``run(size, out, server=None, keep=False, database=None) -> Report`` function
plus a ``main()`` that parses ``--size``/``--out``/``--api-url``/``--database``. ``bench.all``
starts one ``Backend`` (a Prefect server on its database) and hands it to each, so a whole run
pays the start-up once.

The backend is what an operator at rack scale runs (docs/scale-out.md): the Prefect server and
the inventory on PostgreSQL, with PostgreSQL's own durability settings. ``--database sqlite``
measures the embedded default instead (a SQLite file each): its write lock answers 503 under a
burst of triggers (../shared/reference/prefect.md), which the figures then include.

Why /proc and not psutil: the lab and the benchmarks are Linux-only already (epoll, loopback
addresses beyond 127.0.0.1, ports below 1024 as root), and what we need is four fields of two
files per process; a dependency for that is not worth it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = ("smoke", "full")
#: Loopback blocks 127.170.0.0/16 and up are the benchmarks' (tests use 120..162).
FIRST_BLOCK = 70


# ---------------------------------------------------------------------------------------------
# the machine


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, versions, the date and the load when the run began (a loaded
    machine makes absolute figures meaningless; the same-run ratios survive it better)."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "cpu_model": model or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyghmi": version("pyghmi"),
        "prefect": version("prefect"),
        "netmiko": version("netmiko"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


# ---------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100); NaN for no values."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] if lo == hi else xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    xs = [v for v in values if v is not None and not math.isnan(v)]
    return {
        "n": len(xs),
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "max": max(xs) if xs else float("nan"),
        "mean": sum(xs) / len(xs) if xs else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# processes: CPU and memory of a tree, from /proc


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def tree(pids: Sequence[int]) -> list[int]:
    """The given processes and all their descendants that are alive now."""
    seen: list[int] = []
    todo = list(pids)
    while todo:
        p = todo.pop()
        if p in seen or not os.path.exists(f"/proc/{p}"):
            continue
        seen.append(p)
        todo += _children(p)
    return seen


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and of the children it has reaped (so the CPU of a flow
    run's subprocess that already ended still counts, in its parent's share)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICK


class CpuSplit:
    """CPU-seconds each role's process tree spent between ``__enter__`` and ``__exit__``
    (e.g. metalflow serve, the Prefect server, PostgreSQL, the lab): where a CPU-bound
    phase's time went on a machine whose cores they all share."""

    def __init__(self, roles: dict[str, list[int]]):
        self.roles = roles
        self.result: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {role: sum(cpu_seconds(p) for p in tree(pids)) for role, pids in self.roles.items()}

    def __enter__(self) -> CpuSplit:
        self._start, self._t = self._now(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.result = {role: round(end[role] - self._start[role], 2) for role in self.roles}
        self.result["wall"] = round(time.monotonic() - self._t, 2)


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_quiet(busy_cores: float = 0.3, window: float = 1.0, timeout: float = 60.0) -> bool:
    """Wait until the whole machine used less than ``busy_cores`` cores over ``window``
    seconds, e.g. before timing one cold operation right after a process started: on two
    shared cores a server still digesting a start-up would otherwise be timed with it.
    False when it did not settle within ``timeout`` (the caller measures anyway)."""
    cores = os.cpu_count() or 1
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        b0, t0 = _busy_jiffies()
        time.sleep(window)
        b1, t1 = _busy_jiffies()
        if t1 > t0 and (b1 - b0) / (t1 - t0) * cores < busy_cores:
            return True
    return False


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB; PSS shares the pages several processes map, so sums of PSS over a tree
    do not count the interpreter's shared pages once per process as RSS sums do."""
    rss = pss = 0.0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
                break
    return rss, pss or rss


@dataclass
class TreeSample:
    t: float
    processes: int
    cpu_s: float
    rss_mb: float
    pss_mb: float


class TreeSampler:
    """Samples the CPU seconds and memory of the process trees under ``roots`` (callable: the
    roots may change, e.g. a restarted worker) every ``interval`` seconds on a thread."""

    def __init__(self, roots: Callable[[], Sequence[int]], interval: float = 1.0):
        self.roots = roots
        self.interval = interval
        self.samples: list[TreeSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base_cpu = 0.0

    def sample(self) -> TreeSample:
        pids = tree(list(self.roots()))
        cpu = rss = pss = 0.0
        for p in pids:
            cpu += cpu_seconds(p)
            r, s = memory_mb(p)
            rss += r
            pss += s
        return TreeSample(time.monotonic(), len(pids), cpu, rss, pss)

    def __enter__(self) -> TreeSampler:
        self.samples.append(self.sample())

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.samples.append(self.sample())

        self._thread = threading.Thread(target=loop, name="tree-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.samples.append(self.sample())

    def result(self) -> dict[str, float]:
        """CPU used over the window (cores busy on average) and peak memory."""
        if len(self.samples) < 2:
            return {
                "cpu_seconds": float("nan"),
                "cpu_cores_avg": float("nan"),
                "peak_rss_mb": float("nan"),
                "peak_pss_mb": float("nan"),
                "peak_processes": 0,
            }
        first, last = self.samples[0], self.samples[-1]
        # CPU is monotone per tree except when a process dies unreaped-by-us; take the rises.
        used = sum(max(0.0, b.cpu_s - a.cpu_s) for a, b in zip(self.samples, self.samples[1:]))
        span = max(1e-9, last.t - first.t)
        return {
            "cpu_seconds": round(used, 2),
            "cpu_cores_avg": round(used / span, 3),
            "peak_rss_mb": round(max(s.rss_mb for s in self.samples), 1),
            "peak_pss_mb": round(max(s.pss_mb for s in self.samples), 1),
            "peak_processes": max(s.processes for s in self.samples),
        }


# ---------------------------------------------------------------------------------------------
# loopback blocks, ports, work directories


def free_block(start: int = FIRST_BLOCK) -> int:
    """A lab block whose MAAS/control address is free (several labs may run side by side)."""
    for b in range(start, 100):
        with socket.socket() as s:
            try:
                s.bind((f"127.{100 + b}.250.1", 5240))
                return b
            except OSError:
                continue
    raise RuntimeError("no free lab block from 127.170.0.0/16 up")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def workdir(name: str, keep: bool = False) -> Iterator[Path]:
    """A scratch directory for one benchmark (servers' logs, lab manifest, inventory); removed
    afterwards unless ``keep`` or the benchmark failed (its logs are then worth reading)."""
    path = Path(tempfile.mkdtemp(prefix=f"metalflow-bench-{name}-"))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if ok and not keep:
            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"[{name}] work directory kept: {path}", file=sys.stderr)


DATABASES = ("postgresql", "sqlite")


@dataclass
class Backend:
    """A Prefect server and the database the benchmarks' inventories go in."""

    api_url: str
    #: "postgresql" or "sqlite": what the Prefect server stores its runs in; "given" for a
    #: server started by someone else (``--api-url``), whose database we do not know.
    database: str
    pg: Any = None  # lab.postgres.LocalPostgres when database == "postgresql"
    server_pid: int | None = None  # the Prefect server we started (None: given)
    _made: int = 0

    def pids(self) -> dict[str, list[int]]:
        """The processes behind this backend, by role, for ``CpuSplit``."""
        out: dict[str, list[int]] = {}
        if self.server_pid:
            out["Prefect server"] = [self.server_pid]
        if self.pg is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                out["PostgreSQL"] = [int((self.pg.data / "postmaster.pid").read_text().splitlines()[0])]
        return out

    def inventory_url(self, name: str) -> str | None:
        """A fresh inventory database for one benchmark's stack (None: the stack's own SQLite file)."""
        if self.pg is None:
            return None
        self._made += 1
        db = f"inventory_{name}_{self._made}"
        self.pg.create_database(db)
        return self.pg.url(db)

    def describe(self) -> dict[str, str]:
        inv = "PostgreSQL" if self.pg is not None else "SQLite"
        srv = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}.get(self.database, "as given by --api-url")
        return {"prefect_database": srv, "inventory_database": inv}


def default_database() -> str:
    """PostgreSQL when its server binaries are here (CI installs them), else SQLite."""
    from metalflow.lab.postgres import PostgresUnavailable, find_bindir

    try:
        find_bindir()
        return "postgresql"
    except PostgresUnavailable:
        return "sqlite"


@contextlib.contextmanager
def backend(server: Backend | str | None, home: Path, database: str | None = None) -> Iterator[Backend]:
    """``server`` itself when it is a Backend (``bench.all`` shares one); the Prefect server at
    ``server`` when it is a URL that answers; else a fresh local server on a free port, on
    ``database`` (default: ``default_database()``), stopped afterwards with its database."""
    if isinstance(server, Backend):
        yield server
        return
    from metalflow.deployments.server import ensure_server
    from metalflow.integrations.prefectapi import PrefectApi

    if server and PrefectApi(server).health():
        yield Backend(server, "given")
        return
    database = database or default_database()
    if database not in DATABASES:
        raise ValueError(f"database: {database!r} is not one of {', '.join(DATABASES)}")
    url = server or f"http://127.0.0.1:{free_port()}/api"
    pg, extra = None, {}
    if database == "postgresql":
        from metalflow.lab.postgres import LocalPostgres

        pg = LocalPostgres.start(("prefect",), durable=True)
        extra["PREFECT_API_DATABASE_CONNECTION_URL"] = pg.url("prefect", "asyncpg")
    try:
        srv = ensure_server(url, home / "prefect", timeout=180, extra_env=extra)
        try:
            yield Backend(url, database, pg, server_pid=srv.proc.pid if srv.proc else None)
        finally:
            srv.stop()
    finally:
        if pg is not None:
            pg.stop()


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class Figure:
    """One number beside its same-run baseline, and the verdict against the issue's target.

    ``compare`` says how the two are set side by side: ``ratio`` (metalflow / baseline) or
    ``difference`` (metalflow - baseline). ``target`` is a human sentence; ``passed`` is True,
    False, or None when the figure has no target (context only)."""

    name: str
    metalflow: float | None
    baseline: float | None
    unit: str
    compare: str = "ratio"
    baseline_label: str = ""
    target: str = ""
    passed: bool | None = None
    note: str = ""

    @property
    def relation(self) -> float | None:
        if self.metalflow is None or self.baseline is None:
            return None
        if self.compare == "difference":
            return self.metalflow - self.baseline
        return self.metalflow / self.baseline if self.baseline else None

    def verdict(self) -> str:
        return {True: "PASS", False: "MISS", None: "-"}[self.passed]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["relation"] = self.relation
        d["verdict"] = self.verdict()
        return d


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "n/a"
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.{digits}f}"
    return str(x)


@dataclass
class Report:
    name: str
    size: str
    title: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # everything measured, for the JSON
    findings: list[str] = field(default_factory=list)  # plain sentences: misses, causes, fixes
    profile: dict[str, Any] = field(default_factory=dict)  # where the time goes (when a target is missed)
    machine: dict[str, Any] = field(default_factory=machine)
    started: float = field(default_factory=time.monotonic)
    plot: Callable[[Any], None] | None = None  # draws on a matplotlib Figure

    def add(self, fig: Figure) -> Figure:
        self.figures.append(fig)
        print(self.line(fig), flush=True)
        return fig

    @staticmethod
    def line(f: Figure) -> str:
        rel = f.relation
        rel_s = "" if rel is None else (f"  x{rel:.2f}" if f.compare == "ratio" else f"  {rel:+.2f} {f.unit}")
        base = "" if f.baseline is None else f"  vs {_fmt(f.baseline)} {f.unit} ({f.baseline_label or 'baseline'})"
        tgt = f"  [{f.verdict()}: {f.target}]" if f.target else ""
        return f"  {f.name}: {_fmt(f.metalflow)} {f.unit}{base}{rel_s}{tgt}"

    @property
    def passed(self) -> bool:
        return all(f.passed is not False for f in self.figures)

    def to_dict(self) -> dict:
        return {
            "benchmark": self.name,
            "title": self.title,
            "size": self.size,
            "machine": self.machine,
            "params": self.params,
            "duration_s": round(time.monotonic() - self.started, 1),
            "figures": [f.as_dict() for f in self.figures],
            "targets_met": self.passed,
            "findings": self.findings,
            "profile": self.profile,
            "data": self.data,
        }

    def markdown(self) -> str:
        d = self.to_dict()
        m = self.machine
        lines = [
            f"# {self.title}",
            "",
            f"`python -m metalflow.bench.{self.name} --size {self.size}` — {m['date']}, {m['cores']} cores, "
            f"{m['memory_gb']} GB, {m['cpu_model']}; Python {m['python']}, pyghmi {m['pyghmi']}, "
            f"Prefect {m['prefect']}; load average at start {m['loadavg_at_start'][0]}; "
            f"took {d['duration_s']:.0f} s.",
            "",
            "| figure | metalflow | baseline (same run) | ratio / difference | target | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for f in self.figures:
            rel = f.relation
            rel_s = "-" if rel is None else (f"×{rel:.2f}" if f.compare == "ratio" else f"{rel:+.2f} {f.unit}")
            base = "-" if f.baseline is None else f"{_fmt(f.baseline)} {f.unit} ({f.baseline_label})"
            lines.append(
                f"| {f.name} | {_fmt(f.metalflow)} {f.unit} | {base} | {rel_s} | {f.target or '-'} | "
                f"**{f.verdict()}** |"
            )
        if self.params:
            lines += ["", "Parameters: " + ", ".join(f"{k} = {v}" for k, v in self.params.items()) + "."]
        if self.findings:
            lines += ["", "## Findings", ""] + [f"- {x}" for x in self.findings]
        if self.profile:
            lines += ["", "## Where the time goes", ""]
            for k, v in self.profile.items():
                if isinstance(v, str) and "\n" in v:
                    lines += [f"{k}:", "", "```", v.rstrip(), "```", ""]
                else:
                    lines.append(f"- {k}: {v}")
        lines += ["", f"Plot: `{self.name}.png`; raw figures: `{self.name}.json`.", ""]
        return "\n".join(lines)

    def write(self, out: Path) -> dict[str, Path]:
        out.mkdir(parents=True, exist_ok=True)
        paths = {ext: out / f"{self.name}.{ext}" for ext in ("json", "md", "png")}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        paths["md"].write_text(self.markdown())
        self._png(paths["png"])
        print(
            f"[{self.name}] {'all targets met' if self.passed else 'TARGETS MISSED'}; wrote "
            f"{', '.join(str(p) for p in paths.values())}",
            flush=True,
        )
        return paths

    def _png(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure as MplFigure

        fig = MplFigure(figsize=(10, 5.5), dpi=100)
        if self.plot is not None:
            self.plot(fig)
        else:
            self._default_plot(fig)
        fig.suptitle(
            f"{self.title} ({self.size}, {self.machine['date'][:10]}, {self.machine['cores']} cores)", fontsize=11
        )
        fig.tight_layout()
        fig.savefig(path)

    def _default_plot(self, fig) -> None:
        """metalflow beside baseline, one pair of bars per figure that has both."""
        pairs = [f for f in self.figures if f.metalflow is not None and f.baseline is not None]
        ax = fig.add_subplot(1, 1, 1)
        for i, f in enumerate(pairs):
            ax.bar(i - 0.2, f.metalflow, 0.4, color="tab:blue", label="metalflow" if i == 0 else None)
            ax.bar(i + 0.2, f.baseline, 0.4, color="tab:gray", label="baseline" if i == 0 else None)
        ax.set_xticks(range(len(pairs)), [f"{f.name}\n({f.unit})" for f in pairs], fontsize=8)
        ax.legend()


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, datetime):
        return o.isoformat()
    return str(o)


# ---------------------------------------------------------------------------------------------
# command line


def default_out(size: str) -> Path:
    """Full results are the committed ones; smoke results go beside them, ignored by git."""
    return RESULTS if size == "full" else RESULTS / size


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc,
    )
    p.add_argument(
        "--size",
        choices=SIZES,
        default="full",
        help="smoke: seconds, proves it runs; full: the issue's figures (run on a quiet machine)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write the results (default {RESULTS} for full, {RESULTS / 'smoke'} for smoke)",
    )
    p.add_argument(
        "--api-url",
        dest="server",
        default=None,
        help="reuse the Prefect server at this URL (default: start one on a free port)",
    )
    p.add_argument(
        "--database",
        choices=DATABASES,
        default=None,
        help="what the Prefect server started here and the inventories store in (default: "
        "postgresql when its server binaries are installed, else sqlite)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    return p


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every server, lab and serve this run started is stopped
    by its context manager (they run in their own sessions: a signal to us does not reach
    them)."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main_for(
    run: Callable[..., Report], doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    p = parser(doc)
    if extra:
        extra(p)
    args = vars(p.parse_args())
    stop_on_sigterm()
    args["out"] = args["out"] or default_out(args["size"])
    run(**args)  # a missed target is a result (exit 0), a crash is not
