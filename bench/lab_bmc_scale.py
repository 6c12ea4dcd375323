"""Scale of the lab's BMC simulator: start-up time, memory per process, a power-read sweep.

    .venv/bin/python -m metalflow.bench.lab_bmc_scale [--bmcs 1000] [--processes 0] [--readers 4]

Starts a fleet on 127.150.100.0+ (the BMC tests' loopback block), prints how long ``start()``
took and each BMC process's resident memory, then reads every BMC's power once with pyghmi
(cold: a login per BMC) and once more (warm: sessions reused) from a pool of reader
processes. pyghmi's own lost wake-up race (reference/ipmi.md) dominates the sweep times;
the simulator's share is the start-up time and the per-process memory.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from metalflow.lab.bmc import BmcFleet
from metalflow.lab.spec import BmcSpec

PASSWORD = "bench-secret"


def _specs(n: int) -> list[BmcSpec]:
    return [
        BmcSpec(f"bench-{i:05d}", f"127.150.{100 + i // 250}.{1 + i % 250}", 623, "admin", PASSWORD) for i in range(n)
    ]


def _read(batch: list[tuple[str, int]]) -> tuple[int, int, float, float]:
    from pyghmi.ipmi import command

    def sweep() -> tuple[int, float]:
        ok, started = 0, time.monotonic()
        for address, port in batch:
            try:
                c = command.Command(bmc=address, userid=b"admin", password=PASSWORD.encode(), port=port)
                ok += c.get_power()["powerstate"] in ("on", "off")
            except Exception:  # noqa: BLE001 - reported as data
                pass
        return ok, time.monotonic() - started

    cold_ok, cold = sweep()
    warm_ok, warm = sweep()
    return cold_ok, warm_ok, cold, warm


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bmcs", type=int, default=1000)
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--readers", type=int, default=4)
    args = ap.parse_args()
    specs = _specs(args.bmcs)
    fleet = BmcFleet(specs, processes=args.processes)
    started = time.monotonic()
    fleet.start(timeout=60)
    print(f"start: {args.bmcs} BMCs in {fleet.processes} processes, {time.monotonic() - started:.2f} s")
    try:
        for pid in fleet.pids:
            print(f"  process {pid}: {_rss_mb(pid):.1f} MB resident")
        batches = [[(s.address, s.port) for s in specs[i :: args.readers]] for i in range(args.readers)]
        started = time.monotonic()
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.readers, mp_context=ctx) as pool:
            results = list(pool.map(_read, batches))
        cold_ok = sum(r[0] for r in results)
        warm_ok = sum(r[1] for r in results)
        print(
            f"read sweep, {args.readers} pyghmi processes: cold {cold_ok}/{args.bmcs} answered, slowest reader "
            f"{max(r[2] for r in results):.2f} s; warm {warm_ok}/{args.bmcs}, slowest {max(r[3] for r in results):.2f} s"
            f" (total wall {time.monotonic() - started:.2f} s)"
        )
        states = fleet.states()
        print(f"states(): {len(states)} BMCs, {sum(s.power == 'off' for s in states.values())} off")
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
