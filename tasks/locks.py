"""Locks shared by every runner of metalflow: Prefect global concurrency limits (limit 1,
strict, leased) made on first use, with a process-local lock in front where many runs of one
process contend for one device.

Why a switch lock: a switch's CLI is one configuration context. Two sessions changing ports
at once interleave their ``interface``/``exit`` blocks on some dialects, and every session a
switch holds open costs it (many top-of-rack switches allow only a handful of SSH sessions).
Within one process, ``converge_ports`` steps on the same switch share one session (a group
commit: ``tasks.switches.SwitchBatch``), whose leader takes this lock for it; the lock makes
that session the only one on the switch."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from metalflow.integrations.common.names import switch_lock_name

#: Seconds a switch lock is waited for before the step fails (and retries, as a transient
#: error: another run's session is still going).
SWITCH_LOCK_WAIT = 300.0
SWITCH_LOCK_LEASE = 120.0

_local_guard = threading.Lock()
_local: dict[str, threading.Lock] = {}


class LimitMissing(RuntimeError):
    """The global concurrency limit is not on the server (deleted since it was made)."""


#: Limits this process made or found: asked for again, they cost no request (a bulk of fifty
#: asked the server fifty times for limits that were there). A limit deleted since is found
#: missing at its next acquisition, which makes it again (``acquire``).
_known: set[str] = set()


def ensure_limit(name: str) -> str:
    """Make the global concurrency limit ``name`` (limit 1) if it does not exist yet; ask the
    server only while this process does not know it (first use, or found missing since)."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    if name in _known:
        return name
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
    with _local_guard:
        _known.add(name)
    return name


class Lease:
    """One slot of a global concurrency limit, held under a lease that a background thread
    renews every third of its duration until ``close()`` releases it. A holder that dies
    stops renewing, so its slot frees itself when the lease expires."""

    def __init__(self, name: str, lease_id: str, duration: float):
        self.name, self.lease_id, self.duration = name, lease_id, duration
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        log = logging.getLogger("metalflow.locks")
        while not self._stop.wait(self.duration / 3):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(self.lease_id, self.duration)
            except Exception as exc:  # noqa: BLE001 - the next renewal may get through
                log.warning(
                    "could not renew the lease on %s (%s); retrying in %.0f s", self.name, exc, self.duration / 3
                )

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for attempt in range(3):
            try:
                with get_client(sync_client=True) as client:
                    client.release_concurrency_slots_with_lease(self.lease_id)
                return
            except Exception as exc:  # noqa: BLE001 - unreleased, the lease expires on its own
                if attempt == 2:
                    logging.getLogger("metalflow.locks").warning(
                        "could not release %s (%s); it frees itself within %.0f s", self.name, exc, self.duration
                    )
                time.sleep(0.2 * (attempt + 1))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _holder():
    """The flow run holding a lock, shown by Prefect's UI on the limit."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None


def try_acquire(name: str, lease: float) -> Lease | None:
    """One try at the limit ``name`` (strict: a missing limit is an error, not a free pass):
    the held ``Lease`` (close it to release), or None when another holder has it (423) or the
    server is busy (5xx). One try, and no client-side timeout: a timeout cancels the request
    on our side only, and a slot the server granted meanwhile would be held by nobody until
    its lease expires."""
    with get_client(sync_client=True) as client:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=lease, holder=_holder()
            )
        except httpx.HTTPStatusError as exc:
            # 423: another holder. 502-504: the server is busy (SQLite's "database is locked"
            # surfaces as 503; measured with 50 provisions at once): not taken, so try again,
            # within the caller's deadline, rather than fail the run.
            if exc.response.status_code in (423, 502, 503, 504):
                return None
            raise
    body = response.json()
    if not body.get("limits"):
        with _local_guard:
            _known.discard(name)
        raise LimitMissing(
            f"the global concurrency limit {name!r} does not exist (it is made on first use; was it deleted meanwhile?)"
        )
    return Lease(name, body["lease_id"], lease)


def acquire(name: str, lease: float, until: float, *, on_wait: Callable[[], None] | None = None) -> Lease | None:
    """Hold the limit ``name`` (see ``try_acquire``), trying again until ``until`` (monotonic);
    ``on_wait`` is called once, when the first try finds it taken. None when time ran out.

    Why not Prefect's ``concurrency()``: its acquisitions of one limit go through one queue
    per process, so under ``metalflow serve`` (every run in a thread of one process) a run
    waiting for a held lock holds up every other run asking for it, even just to say that it
    waits; and measured in a served thread, a try after another run's release took 2 s. The
    REST calls themselves take about 20 ms."""
    pause = 0.2
    remade = False
    while True:
        try:
            held = try_acquire(name, lease)
        except LimitMissing:
            if remade:
                raise
            ensure_limit(name)  # deleted since this process made it (try_acquire forgot it): again
            remade = True
            continue
        if held is not None:
            return held
        if on_wait is not None:
            on_wait()
            on_wait = None
        left = until - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(left, pause * random.uniform(0.75, 1.25)))
        pause = min(2.0, pause * 1.5)


def _process_lock(name: str) -> threading.Lock:
    with _local_guard:
        return _local.setdefault(name, threading.Lock())


@contextmanager
def switch_lock(switch: str, wait: float = SWITCH_LOCK_WAIT) -> Iterator[None]:
    """Hold ``switch`` for one session. Runs of this process queue on a local lock first; with
    the ``switch_lock`` setting at ``global`` (the default: process workers, a run per
    process) the holder then takes the global limit ``switch-<name>`` too. ``metalflow serve``
    sets it to ``process``: every run of the installation is a thread of that one process, and
    a limit's increment on a SQLite-backed Prefect server was measured at up to 2 s under
    load, paid by every session queued behind it."""
    from metalflow.tasks.common import logger
    from metalflow.tasks.settings import settings

    started = time.monotonic()
    name = switch_lock_name(switch)
    local = _process_lock(name)
    if not local.acquire(timeout=wait):
        raise TimeoutError(f"switch {switch}: another run of this process held it for {wait:.0f} s")
    try:
        queued = time.monotonic()
        if settings().switch_lock == "process":
            held = contextlib.nullcontext()
        else:
            held = acquire(ensure_limit(name), SWITCH_LOCK_LEASE, started + wait)
            if held is None:
                raise TimeoutError(f"switch {switch}: another worker's session held it for {wait:.0f} s")
        got = time.monotonic()
        if got - started > 1.0:
            logger().info(
                "waited %.1f s for switch %s (%.1f s behind this process's runs, %.1f s for the limit %s)",
                got - started,
                switch,
                queued - started,
                got - queued,
                name,
            )
        with held:
            yield
    finally:
        local.release()
