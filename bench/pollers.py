"""The pollers ``bench.power_freshness`` compares, each run in its own process so its CPU and
memory can be sampled alone and pyghmi's process-wide state is never shared:

- ``stock``: the bare loop an operator would write first: every BMC in turn with stock pyghmi
  (``Command(...).get_power()``, one Command per BMC kept between sweeps), one process.
- ``bulk``: the same loop with metalflow's client: ``BulkPowerReader`` (worker processes,
  bounded concurrency, a deadline per call, the pyghmi shim), kept between sweeps.
- ``continuous``: the proposed design (a prototype, not in flows/ yet): one long-running
  poller that reads each BMC once per period at its own phase (staggered, so ages spread
  evenly instead of all jumping at once), a deadline per call, and writes the readings to the
  inventory in small batches with the time of each read. See ``Continuous``.

``stock`` and ``bulk`` print one JSON line: the sweeps (start, end, per-host ok). They sweep
every ``--interval`` seconds (or back to back when a sweep takes longer) for ``--seconds``.

    python -m bench.pollers stock|bulk --manifest M --interval 10 --seconds 60
    python -m bench.pollers continuous --manifest M --inventory URL --period 10 --seconds 60
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path


def _targets(manifest: str, skip: set[str] = frozenset()) -> list[tuple[str, str, int, str, str]]:
    hosts = json.loads(Path(manifest).read_text())["hosts"]
    return [(h["name"], h["ipmi"]["address"], h["ipmi"]["port"], h["ipmi"]["username"], h["ipmi"]["password"])
            for h in hosts if h["name"] not in skip]


def _loop(sweep, interval: float, seconds: float, min_sweeps: int = 2) -> list[dict]:
    """Sweep every ``interval`` s for ``seconds``, and at least ``min_sweeps`` times (the first
    sweep logs in to every BMC; the next ones show the warm cost)."""
    sweeps = []
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
    cmds: dict[str, object] = {}

    def sweep() -> dict[str, bool]:
        ok = {}
        for name, address, port, user, password in targets:
            try:
                c = cmds.get(name)
                if c is None:
                    c = cmds[name] = command.Command(bmc=address, userid=user.encode(), password=password.encode(),
                                                     port=port)
                ok[name] = c.get_power()["powerstate"] in ("on", "off")
            except Exception:  # noqa: BLE001 - counted as a failed read
                cmds.pop(name, None)
                ok[name] = False
        return ok

    return _loop(sweep, interval, seconds)


def bulk(manifest: str, interval: float, seconds: float, processes: int, call_timeout: float) -> list[dict]:
    from integrations.ipmi import BmcTarget, BulkPowerReader

    targets = [BmcTarget(n, a, u, p, port) for n, a, port, u, p in _targets(manifest)]
    with BulkPowerReader(processes=processes, per_call_timeout=call_timeout) as reader:

        def sweep() -> dict[str, bool]:
            got = reader.read(targets, deadline=max(10.0, interval * 0.8))
            return {k: r.ok for k, r in got.items()}

        return _loop(sweep, interval, seconds)


# ---------------------------------------------------------------------------------------------
# the proposed design: staggered, long-running


class Continuous:
    """Reads each BMC once per ``period`` at its own phase, from ``processes`` worker
    processes (pyghmi is one I/O thread per process), and records every reading in the
    inventory within about ``flush`` seconds, stamped with the time of the read.

    Why it meets p95 age <= period at one read per period: a periodic sweep stamps every host
    at once and publishes at the end, so ages run from (sweep time + start delay) up to
    (interval + sweep time + start delay); here each host's age runs from ~``flush`` to
    ``period + flush``, so p95 is about 0.95 x period + flush, and no run, process start or
    cold login happens per period. A silent BMC occupies one thread for its deadline and is
    skipped (not queued) at its next slot while still stuck; it never delays another BMC."""

    def __init__(self, targets, period: float, processes: int = 2, call_timeout: float = 3.0,
                 concurrency: int = 32, flush: float = 0.5):
        self.targets, self.period, self.processes = list(targets), period, processes
        self.call_timeout, self.concurrency, self.flush = call_timeout, concurrency, flush
        self.stats = {"reads": 0, "failed": 0, "skipped_in_flight": 0, "writes": 0, "write_s": 0.0}

    def run(self, inventory, seconds: float) -> dict:
        from integrations.inventory import PowerReading

        n = len(self.targets)
        shards = [[] for _ in range(self.processes)]
        for j, t in enumerate(self.targets):
            shards[j % self.processes].append((j * self.period / n, t))  # global stagger
        q: queue.Queue = queue.Queue()
        t0 = time.time() + 0.5
        procs = []
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]),
                                                         env.get("PYTHONPATH", "")) if p)
        for shard in shards:
            p = subprocess.Popen([sys.executable, "-m", "bench.pollers", "_worker"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env)
            pickle.dump({"shard": shard, "period": self.period, "t0": t0, "seconds": seconds,
                         "call_timeout": self.call_timeout, "concurrency": self.concurrency}, p.stdin)
            p.stdin.close()
            threading.Thread(target=self._pump, args=(p, q), daemon=True).start()
            procs.append(p)
        end = t0 + seconds
        while time.time() < end + self.call_timeout + 1 or any(p.poll() is None for p in procs):
            time.sleep(self.flush)
            batch = []
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            if batch:
                readings = [PowerReading(h, s if ok else "unknown", datetime.fromtimestamp(at, timezone.utc),
                                         None if ok else err or "failed") for h, ok, s, err, at in batch]
                w = time.perf_counter()
                inventory.record_power_bulk(readings)
                self.stats["write_s"] += time.perf_counter() - w
                self.stats["writes"] += 1
                self.stats["reads"] += len(batch)
                self.stats["failed"] += sum(1 for b in batch if not b[1])
            if time.time() > end + self.call_timeout + 5:
                break
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.wait(10)
        return self.stats

    def _pump(self, proc, q: queue.Queue) -> None:
        for line in proc.stdout:
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("skipped"):
                self.stats["skipped_in_flight"] += d["skipped"]
                continue
            q.put((d["h"], d["ok"], d["s"], d.get("e"), d["t"]))


def _worker() -> None:
    """One shard of the continuous poller: reads each BMC at its phase, one line per reading."""
    from integrations.ipmi import patch_pyghmi
    from integrations.ipmi.wire import PyghmiLink

    patch_pyghmi()
    job = pickle.load(sys.stdin.buffer)
    period, t0, call_timeout = job["period"], job["t0"], job["call_timeout"]
    end = t0 + job["seconds"]
    out_lock = threading.Lock()
    links = {}
    busy: set[str] = set()
    skipped = 0
    heap = [(t0 + phase, i) for i, (phase, _) in enumerate(job["shard"])]
    heapq.heapify(heap)
    pool = ThreadPoolExecutor(job["concurrency"])

    def read(i: int) -> None:
        _, (name, address, port, user, password) = job["shard"][i]
        at = time.time()
        try:
            link = links.get(name)
            if link is None:
                from integrations.common import Secret

                link = links[name] = PyghmiLink(address, port, user.encode(), Secret(password))
            on = link.power_is_on(timeout=call_timeout, operation="power_state")
            rec = {"h": name, "ok": True, "s": "on" if on else "off", "t": at}
        except Exception as exc:  # noqa: BLE001 - a failed reading
            rec = {"h": name, "ok": False, "s": None, "e": f"{type(exc).__name__}: {exc}"[:200], "t": at}
        with out_lock:
            sys.stdout.write(json.dumps(rec) + "\n")
            sys.stdout.flush()
            busy.discard(name)

    while heap:
        due, i = heap[0]
        now = time.time()
        if due > end:
            break
        if due > now:
            time.sleep(min(due - now, 0.05))
            continue
        heapq.heappop(heap)
        name = job["shard"][i][1][0]
        with out_lock:
            stuck = name in busy
            if not stuck:
                busy.add(name)
        if stuck:
            skipped += 1
        else:
            pool.submit(read, i)
        heapq.heappush(heap, (due + period, i))
    pool.shutdown(wait=True, cancel_futures=False)
    with out_lock:
        sys.stdout.write(json.dumps({"skipped": skipped}) + "\n")
        sys.stdout.flush()
    for link in links.values():
        try:
            link.close()
        except Exception:  # noqa: BLE001
            pass


def continuous(manifest: str, inventory_url: str, period: float, seconds: float, processes: int,
               call_timeout: float, prefect: bool) -> dict:
    from integrations.inventory import Inventory

    targets = _targets(manifest)
    inv = Inventory(inventory_url)
    poller = Continuous(targets, period, processes=processes, call_timeout=call_timeout)
    if not prefect:
        return poller.run(inv, seconds)
    from prefect import flow, task

    # The loop runs inside one task of one flow run: visible in Prefect, one process for the
    # whole time (per-task cost would dominate a loop of small tasks).
    @task(name="poll-continuously", persist_result=False)
    def loop() -> dict:
        return poller.run(inv, seconds)

    @flow(name="continuous-power-poll", persist_result=False)
    def continuous_power_poll() -> dict:
        return loop()

    return continuous_power_poll()


def main() -> None:
    if sys.argv[1:2] == ["_worker"]:
        _worker()
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("stock", "bulk", "continuous"))
    p.add_argument("--manifest", required=True)
    p.add_argument("--interval", type=float, default=10.0, help="stock/bulk: seconds between sweep starts")
    p.add_argument("--period", type=float, default=10.0, help="continuous: seconds between reads of one BMC")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--call-timeout", type=float, default=3.0)
    p.add_argument("--inventory", default="")
    p.add_argument("--prefect", action="store_true", help="continuous: run the loop as a Prefect flow run")
    a = p.parse_args()
    if a.mode == "stock":
        out = {"sweeps": stock(a.manifest, a.interval, a.seconds)}
    elif a.mode == "bulk":
        out = {"sweeps": bulk(a.manifest, a.interval, a.seconds, a.processes, a.call_timeout)}
    else:
        out = {"stats": continuous(a.manifest, a.inventory, a.period, a.seconds, a.processes, a.call_timeout,
                                   a.prefect)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
