"""Locks shared by every runner of metalflow, as the runs take them: Prefect global
concurrency limits (limit 1, strict, leased) made on first use, with a process-local lock in
front where many runs of one process contend for one device.

The engine is ``integrations.prefectapi.LeaseLocks``, a part of the process's ``Runtime``;
this module hands it what only Prefect knows (the API URL and credentials from Prefect's
settings, the flow run that holds a lock) and logs waits in the run.

Why a switch lock: a switch's CLI is one configuration context. Two sessions changing ports
at once interleave their ``interface``/``exit`` blocks on some dialects, and every session a
switch holds open costs it (many top-of-rack switches allow only a handful of SSH sessions).
Within one process, ``converge_ports`` steps on the same switch share one session (a group
commit: ``integrations.switches.batch.SwitchBatch``), whose leader takes this lock for it; the
lock makes that session the only one on the switch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from metalflow.integrations.common.names import switch_lock_name
from metalflow.integrations.prefectapi import Lease, LeaseLocks
from metalflow.tasks.runtime import runtime

#: Seconds a switch lock is waited for before the step fails (and retries, as a transient
#: error: another run's session is still going).
SWITCH_LOCK_WAIT = 300.0
SWITCH_LOCK_LEASE = 120.0


def lease_locks() -> LeaseLocks:
    """The process's lease locks on the Prefect API this process talks to (Prefect's settings:
    ``PREFECT_API_URL``, ``PREFECT_API_AUTH_STRING`` or ``PREFECT_API_KEY``, its TLS settings
    and request timeout), made on first use."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_SSL_CERT_FILE,
        PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
        PREFECT_API_URL,
    )

    url = PREFECT_API_URL.value()

    def make() -> LeaseLocks:
        verify: bool | str = True
        if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
            verify = False
        elif PREFECT_API_SSL_CERT_FILE.value():
            verify = str(PREFECT_API_SSL_CERT_FILE.value())
        return LeaseLocks(
            url,
            auth_string=PREFECT_API_AUTH_STRING.value(),
            api_key=PREFECT_API_KEY.value(),
            verify=verify,
            timeout=float(PREFECT_API_REQUEST_TIMEOUT.value()),
        )

    return runtime().part(("lease-locks", url), make, LeaseLocks.close)


def _holder() -> str | None:
    """The flow run holding a lock, shown by Prefect's UI on the limit."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def ensure_limit(name: str) -> str:
    """Make the global concurrency limit ``name`` (limit 1) if it does not exist yet (asks the
    server only while this process does not know it)."""
    return lease_locks().ensure_limit(name)


def acquire(name: str, lease: float, until: float, *, on_wait: Callable[[], None] | None = None) -> Lease | None:
    """Hold the limit ``name`` for the calling flow run, trying again until ``until``
    (monotonic); ``on_wait`` is called once, when the first try finds it taken. None when time
    ran out (``LeaseLocks.acquire``)."""
    return lease_locks().acquire(name, lease, until, holder=_holder(), on_wait=on_wait)


def release_lease(lease_id: str) -> None:
    """Give back a lease another process took (a run that died holding it): Prefect frees its
    slot now instead of when the lease expires. A lease already gone is not an error."""
    lease_locks().release(lease_id)


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
    locks = lease_locks()
    local = locks.local(name)
    if not local.acquire(timeout=wait):
        raise TimeoutError(f"switch {switch}: another run of this process held it for {wait:.0f} s")
    try:
        queued = time.monotonic()
        held: AbstractContextManager[object]
        if settings().switch_lock == "process":
            held = contextlib.nullcontext()
        else:
            lease = locks.acquire(locks.ensure_limit(name), SWITCH_LOCK_LEASE, started + wait, holder=_holder())
            if lease is None:
                raise TimeoutError(f"switch {switch}: another worker's session held it for {wait:.0f} s")
            held = lease
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
