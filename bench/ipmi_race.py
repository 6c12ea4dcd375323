"""pyghmi's lost wake-up race, stock vs patched: N sequential power reads against one BMC.

    .venv/bin/python -m metalflow.bench.ipmi_race [--reads 2000] [--sweep 0] [--address 127.161.250.1]

Starts one simulated BMC (``lab.bmc.BmcFleet``) in this process's children, then runs the
reads twice, each in a fresh Python process (pyghmi's state is process-wide, so the two
variants must not share one): once with pyghmi as shipped, once after ``patch_pyghmi()``.
Both go through the client's wire layer (``PyghmiLink``: our deadline guard, one session).
Prints total time and latency percentiles of each, and the stock/patched ratio.

``--sweep N`` also times the power-poll engine's sweeps (``PowerWatch.sweep``) over N simulated BMCs (one cold sweep, then
three warm ones) with and without the shim.

Measured on the project's 2-core machine (shared with other work), pyghmi 1.6.19:

- 2,000 sequential reads: stock 3.7 to 21 s (4 to 27 stalls of 0.5 to 1 s each), patched
  0.9 to 1.3 s (no read over 100 ms; p99 under 5 ms); ratio 3x to 22x.
- Sweeps (then ``BulkPowerReader``), 2 processes, 1,000 BMCs: warm sweep stock 1.2 to 1.5 s, patched 0.4 to
  0.7 s; cold sweep (every BMC logs in) stock 2.1 to 2.4 s, patched 0.8 to 1.8 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

USER, PASSWORD = "bench", "bench-race-pw"


def _child(mode: str, address: str, port: int, reads: int) -> None:
    from metalflow.integrations.common import Secret
    from metalflow.integrations.ipmi import CallGuards, patch_pyghmi, shim_active
    from metalflow.integrations.ipmi.wire import PyghmiLink

    if mode == "patched" and not patch_pyghmi():
        raise SystemExit("the shim did not apply")
    link = PyghmiLink(address, port, USER.encode(), Secret(PASSWORD), CallGuards())
    link.power_is_on(timeout=30, operation="warm-up")  # the login is not what we measure
    lat, failures = [], 0
    start = time.perf_counter()
    for _ in range(reads):
        t = time.perf_counter()
        try:
            link.power_is_on(timeout=30, operation="power_state")
        except Exception:  # noqa: BLE001 - counted
            failures += 1
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    link.close()
    lat.sort()
    print(
        json.dumps(
            {
                "mode": mode,
                "shim": shim_active(),
                "reads": reads,
                "failures": failures,
                "total_s": total,
                "p50_ms": 1000 * statistics.median(lat),
                "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
                "max_ms": 1000 * lat[-1],
                "stalls_over_100ms": sum(1 for x in lat if x > 0.1),
            }
        )
    )


def _run_child(mode: str, address: str, port: int, reads: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "metalflow.bench.ipmi_race",
            "--child",
            mode,
            "--address",
            address,
            "--port",
            str(port),
            "--reads",
            str(reads),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sweeps(n: int, base: str) -> None:
    from metalflow.integrations.ipmi import BmcTarget, PowerWatch
    from metalflow.lab.bmc import BmcFleet
    from metalflow.lab.spec import BmcSpec

    prefix = ".".join(base.split(".")[:2])
    specs = [BmcSpec(f"s{i}", f"{prefix}.{100 + i // 250}.{1 + i % 250}", 623, USER, PASSWORD) for i in range(n)]
    from metalflow.integrations.common import Secret

    targets = [BmcTarget(s.host, s.address, USER, Secret(PASSWORD)) for s in specs]
    with BmcFleet(specs):
        for patch in (False, True):
            with PowerWatch(processes=2, per_call_timeout=5.0, patch=patch) as reader:
                t = time.perf_counter()
                cold = reader.sweep(targets, deadline=120)
                cold_s = time.perf_counter() - t
                warm = []
                for _ in range(3):
                    t = time.perf_counter()
                    got = reader.sweep(targets, deadline=120)
                    warm.append(time.perf_counter() - t)
                bad = sum(1 for r in got.values() if not r.ok) + sum(1 for r in cold.values() if not r.ok)
                print(
                    f"sweep of {n} BMCs, {'patched' if patch else 'stock  '}: cold {cold_s:.2f} s, "
                    f"warm {min(warm):.2f} to {max(warm):.2f} s, errors {bad}"
                )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reads", type=int, default=2000)
    p.add_argument("--address", default="127.161.250.1")
    p.add_argument("--port", type=int, default=623)
    p.add_argument("--sweep", type=int, default=0, help="also time a bulk sweep of this many BMCs")
    p.add_argument("--child", choices=("stock", "patched"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child, args.address, args.port, args.reads)
        return

    from metalflow.lab.bmc import BmcFleet
    from metalflow.lab.spec import BmcSpec

    with BmcFleet([BmcSpec("race", args.address, args.port, USER, PASSWORD)]):
        results = {mode: _run_child(mode, args.address, args.port, args.reads) for mode in ("stock", "patched")}
    for r in results.values():
        print(
            f"{r['mode']:8} shim={r['shim']!s:5} {r['reads']} reads in {r['total_s']:7.2f} s  "
            f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:7.1f} ms  "
            f"stalls>100ms {r['stalls_over_100ms']:4}  failures {r['failures']}"
        )
    ratio = results["stock"]["total_s"] / max(results["patched"]["total_s"], 1e-9)
    print(f"stock/patched: {ratio:.1f}x")
    if args.sweep:
        _sweeps(args.sweep, args.address)


if __name__ == "__main__":
    main()
