"""The Secret block cache loads a block once for all the threads that miss it at once.

The load itself (``SecretBlock.load`` against a Prefect server) is replaced by a slow counting
function: what is tested is the cache's own concurrency, not Prefect's block API (the e2e
tests resolve real blocks through a real server)."""

from __future__ import annotations

import threading
import time

from metalflow.tasks import credentials


def test_threads_that_miss_together_share_one_load(monkeypatch):
    cache = credentials._BlockCache()
    loads: list[str] = []

    def slow_load(name: str) -> object:
        loads.append(name)
        time.sleep(0.2)  # long enough for every thread to arrive while it runs
        value = f"value-of-{name}"
        with cache._lock:
            cache._data[name] = (time.monotonic(), value)
        return value

    monkeypatch.setattr(cache, "_load", slow_load)
    start = threading.Barrier(20)
    got: list[object] = []

    def worker(name: str) -> None:
        start.wait()
        got.append(cache.get(name))

    threads = [threading.Thread(target=worker, args=("rack-a" if i % 2 else "rack-b",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(loads) == ["rack-a", "rack-b"]  # one load per block, not one per thread
    assert sorted(got) == ["value-of-rack-a"] * 10 + ["value-of-rack-b"] * 10


def test_an_expired_entry_is_loaded_again(monkeypatch):
    cache = credentials._BlockCache()
    loads: list[str] = []

    def load(name: str) -> object:
        loads.append(name)
        with cache._lock:
            cache._data[name] = (time.monotonic(), len(loads))
        return len(loads)

    monkeypatch.setattr(cache, "_load", load)
    assert cache.get("rack") == 1 and cache.get("rack") == 1
    monkeypatch.setattr(credentials, "_CACHE_SECONDS", 0.0)
    assert cache.get("rack") == 2
