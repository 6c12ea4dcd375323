"""``integrations.prefectapi.LeaseLocks`` against a real Prefect server (no Prefect import in
the engine): limits made once, one holder at a time, the lease released on close and renewed
while held, a deleted limit made again, and the process-local locks.

One server for the file (about 10 s to start); each test uses limits of its own."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest
import requests

from metalflow.deployments.server import ensure_server
from metalflow.integrations.prefectapi import LeaseLocks, PrefectApiError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    url = f"http://127.0.0.1:{_free_port()}/api"
    server = ensure_server(url, Path(tmp_path_factory.mktemp("prefect")))
    yield url
    server.stop()


@pytest.fixture
def locks(api_url):
    ll = LeaseLocks(api_url)
    yield ll
    ll.close()


def _name(kind: str) -> str:
    return f"test-{kind}-{uuid.uuid4().hex[:8]}"


def _limit(api_url: str, name: str) -> dict:
    r = requests.get(f"{api_url}/v2/concurrency_limits/{name}", timeout=10)
    r.raise_for_status()
    return r.json()


def test_a_limit_is_made_once_with_limit_one(api_url, locks):
    name = _name("made")
    assert locks.ensure_limit(name) == name
    assert _limit(api_url, name)["limit"] == 1
    assert locks.ensure_limit(name) == name  # known now: no request, no error
    other = LeaseLocks(api_url)  # another process finds it there (read, not made twice)
    try:
        assert other.ensure_limit(name) == name
    finally:
        other.close()


def test_one_holder_at_a_time_and_release_frees_it(api_url, locks):
    name = locks.ensure_limit(_name("held"))
    holder = str(uuid.uuid4())
    first = locks.try_acquire(name, 60, holder=holder)
    assert first is not None
    assert _limit(api_url, name)["active_slots"] == 1
    assert locks.try_acquire(name, 60) is None  # 423: taken
    waited: list[bool] = []
    started = time.monotonic()
    assert locks.acquire(name, 60, time.monotonic() + 0.5, on_wait=lambda: waited.append(True)) is None
    assert waited == [True] and time.monotonic() - started >= 0.5
    first.close()
    assert _limit(api_url, name)["active_slots"] == 0
    with locks.acquire(name, 60, time.monotonic() + 5) as second:
        assert second is not None and _limit(api_url, name)["active_slots"] == 1
    assert _limit(api_url, name)["active_slots"] == 0


def test_a_held_lease_renews_and_a_released_one_does_not(api_url, locks):
    """Prefect's shortest lease is 60 s, so the renewer thread (every 20 s) is not waited for
    here: the call it makes is."""
    name = locks.ensure_limit(_name("renewed"))
    held = locks.try_acquire(name, 60)
    assert held is not None
    locks.renew(held.lease_id, 60)
    held.close()
    assert _limit(api_url, name)["active_slots"] == 0
    with pytest.raises(PrefectApiError):
        locks.renew(held.lease_id, 60)  # gone with its release


def test_a_deleted_limit_is_made_again_on_acquire(api_url, locks):
    name = locks.ensure_limit(_name("deleted"))
    requests.delete(f"{api_url}/v2/concurrency_limits/{name}", timeout=10).raise_for_status()
    with locks.acquire(name, 60, time.monotonic() + 5) as held:
        assert held is not None
        assert _limit(api_url, name)["limit"] == 1


def test_the_local_lock_is_one_per_name(locks):
    assert locks.local("switch-a") is locks.local("switch-a")
    assert locks.local("switch-a") is not locks.local("switch-b")


def test_without_an_api_url_the_error_names_the_setting():
    with pytest.raises(PrefectApiError, match="PREFECT_API_URL"):
        LeaseLocks(None).ensure_limit("x")
