"""Locks shared by every runner of metalflow: Prefect global concurrency limits (limit 1,
strict, leased) made on first use, with a process-local lock in front where many runs of one
process contend for one device.

Why a switch lock: a switch's CLI is one configuration context. Two sessions changing ports
at once interleave their ``interface``/``exit`` blocks on some dialects, and every session a
switch holds open costs it (many top-of-rack switches allow only a handful of SSH sessions).
``converge_ports`` keeps one session per switch per step; this lock makes it the only one."""
from __future__ import annotations

import re
import threading
from contextlib import ExitStack, contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

#: Seconds a switch lock is waited for before the step fails (and retries, as a transient
#: error: another run's session is still going).
SWITCH_LOCK_WAIT = 300.0
SWITCH_LOCK_LEASE = 120.0

_local_guard = threading.Lock()
_local: dict[str, threading.Lock] = {}


def limit_name(kind: str, name: str) -> str:
    return f"{kind}-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


def ensure_limit(name: str) -> str:
    """Make the global concurrency limit ``name`` (limit 1) if it does not exist yet."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass
            except Exception as exc:  # a concurrent creator got there first (409)
                if "409" not in str(exc) and "already exists" not in str(exc).lower():
                    raise
    return name


def _process_lock(name: str) -> threading.Lock:
    with _local_guard:
        return _local.setdefault(name, threading.Lock())


@contextmanager
def switch_lock(switch: str, wait: float = SWITCH_LOCK_WAIT) -> Iterator[None]:
    """Hold ``switch`` for one session. Runs of this process queue on a local lock first, so
    only one of them at a time asks the Prefect server (runs of other processes or workers
    queue on the server's limit)."""
    name = ensure_limit(limit_name("switch", switch))
    local = _process_lock(name)
    if not local.acquire(timeout=wait):
        raise TimeoutError(f"switch {switch}: another run of this process held it for {wait:.0f} s")
    try:
        with ExitStack() as held:
            held.enter_context(concurrency(name, occupy=1, strict=True, timeout_seconds=wait,
                                           lease_duration=SWITCH_LOCK_LEASE))
            yield
    finally:
        local.release()
