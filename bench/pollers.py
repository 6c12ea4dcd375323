"""The pollers ``bench.power_freshness`` compares, each run in its own process so its CPU and
memory can be sampled alone and pyghmi's process-wide state is never shared:

- ``stock``: the bare loop an operator would write first: every BMC in turn with stock pyghmi
  (``Command(...).get_power()``, one Command per BMC kept between sweeps), one process.
- ``bulk``: the same loop with metalflow's client: the power-poll engine's sweeps
  (``PowerWatch.sweep``: worker processes, bounded concurrency, a deadline per call, the
  pyghmi shim), the watch kept between sweeps.

metalflow's own poller (``integrations.ipmi.PowerWatch`` watching under the ``power-poll``
flow) is measured through ``metalflow serve``, not here.

``stock`` and ``bulk`` print one JSON line: the sweeps (start, end, per-host ok), and for
``bulk`` the seconds its reader took to start its workers (before the first sweep). They sweep
every ``--interval`` seconds (or back to back when a sweep takes longer) for ``--seconds``.

    python -m metalflow.bench.pollers stock|bulk --manifest M --interval 10 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _targets(manifest: str, skip: frozenset[str] = frozenset()) -> list[tuple[str, str, int, str, str]]:
    hosts = json.loads(Path(manifest).read_text())["hosts"]
    return [
        (h["name"], h["ipmi"]["address"], h["ipmi"]["port"], h["ipmi"]["username"], h["ipmi"]["password"])
        for h in hosts
        if h["name"] not in skip
    ]


def _loop(sweep, interval: float, seconds: float, min_sweeps: int = 2) -> list[dict]:
    """Sweep every ``interval`` s for ``seconds``, and at least ``min_sweeps`` times (the first
    sweep logs in to every BMC; the next ones show the warm cost)."""
    sweeps: list[dict[str, Any]] = []
    end = time.time() + seconds
    while time.time() < end or len(sweeps) < min_sweeps:
        start = time.time()
        ok = sweep()
        sweeps.append({"start": start, "end": time.time(), "ok": ok})
        pause = start + interval - time.time()
        if pause > 0 and (time.time() + pause < end or len(sweeps) < min_sweeps):
            time.sleep(pause)
        elif pause > 0:
            break
    return sweeps


def stock(manifest: str, interval: float, seconds: float) -> list[dict]:
    from pyghmi.ipmi import command

    targets = _targets(manifest)
    cmds: dict[str, Any] = {}

    def sweep() -> dict[str, bool]:
        ok: dict[str, bool] = {}
        for name, address, port, user, password in targets:
            try:
                c = cmds.get(name)
                if c is None:
                    c = cmds[name] = command.Command(
                        bmc=address, userid=user.encode(), password=password.encode(), port=port
                    )
                ok[name] = c.get_power()["powerstate"] in ("on", "off")
            except Exception:  # noqa: BLE001 - counted as a failed read
                cmds.pop(name, None)
                ok[name] = False
        return ok

    return _loop(sweep, interval, seconds)


def bulk(
    manifest: str, interval: float, seconds: float, processes: int, call_timeout: float
) -> tuple[list[dict], float]:
    """The sweeps, and how long the reader took to start its workers (before the first sweep)."""
    from metalflow.integrations.common import Secret
    from metalflow.integrations.ipmi import BmcTarget, PowerWatch

    targets = [BmcTarget(n, a, u, Secret(p), port) for n, a, port, u, p in _targets(manifest)]
    reader = PowerWatch(processes=processes, per_call_timeout=call_timeout)
    t0 = time.time()
    reader.start()
    started_s = time.time() - t0
    with reader:

        def sweep() -> dict[str, bool]:
            got = reader.sweep(targets, deadline=max(10.0, interval * 0.8))
            return {k: r.ok for k, r in got.items()}

        return _loop(sweep, interval, seconds), started_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("stock", "bulk"))
    p.add_argument("--manifest", required=True)
    p.add_argument("--interval", type=float, default=10.0, help="stock/bulk: seconds between sweep starts")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--call-timeout", type=float, default=3.0)
    a = p.parse_args()
    if a.mode == "stock":
        out: dict[str, Any] = {"sweeps": stock(a.manifest, a.interval, a.seconds)}
    else:
        sweeps, started_s = bulk(a.manifest, a.interval, a.seconds, a.processes, a.call_timeout)
        out = {"sweeps": sweeps, "reader_start_s": started_s}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
