"""Locks shared by every runner of metalflow: Prefect global concurrency limits (limit 1,
strict, leased), made on first use, with a process-local lock in front where many runs of one
process contend for one device.

Plain Python on Prefect's REST API (``/v2/concurrency_limits/...``), without importing
Prefect: the same calls Prefect's own client makes (read and create a limit by name,
increment-with-lease, renew, decrement-with-lease), so this engine is a part of the process's
``Runtime`` like the others, and ``tasks.locks`` only hands in what Prefect knows (the API URL
and credentials from its settings, the flow run that holds a lock).

Why not Prefect's ``concurrency()``: its acquisitions of one limit go through one queue per
process, so under ``metalflow serve`` (every run in a thread of one process) a run waiting for
a held lock holds up every other run asking for it, even just to say that it waits; and
measured in a served thread, a try after another run's release took 2 s. The REST calls
themselves take about 20 ms.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import requests

from metalflow.integrations.common import Secret
from metalflow.integrations.prefectapi.client import PrefectApiError, PrefectUnavailable, raise_for_answer

log = logging.getLogger("metalflow.locks")

#: Answers to an increment that mean "not taken now, try again": 423, another holder has the
#: slot; 502-504, the server is busy (SQLite's "database is locked" surfaces as 503; measured
#: with 50 provisions at once).
NOT_TAKEN = frozenset({423, 502, 503, 504})
#: Answers to the other calls that are worth a few more tries (a busy server).
BUSY = frozenset({429, 502, 503, 504})


class LimitMissing(RuntimeError):
    """The global concurrency limit is not on the server (deleted since it was made)."""


class LeaseLocks:
    """This process's client of Prefect's global concurrency limits, and what it keeps
    between runs: the limits it made or found, and one process-local lock per limit name.

    ``api_url`` ends in ``/api`` (Prefect's ``PREFECT_API_URL``); ``auth_string``
    (``user:password``, a server started with ``PREFECT_SERVER_API_AUTH_STRING``) wins over
    ``api_key`` (Prefect Cloud), as in Prefect's client; ``verify`` is a CA bundle's path, True
    (the system's) or False (``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``); ``timeout`` is the
    client's request timeout (``PREFECT_API_REQUEST_TIMEOUT``). Thread-safe."""

    def __init__(
        self,
        api_url: str | None,
        *,
        auth_string: str | Secret | None = None,
        api_key: str | Secret | None = None,
        verify: bool | str = True,
        timeout: float = 60.0,
        session: requests.Session | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/") if api_url else None
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.verify = verify
        if auth_string:
            token = base64.b64encode(_reveal(auth_string).encode()).decode()
            self._session.headers["Authorization"] = f"Basic {token}"
        elif api_key:
            self._session.headers["Authorization"] = f"Bearer {_reveal(api_key)}"
        self._guard = threading.Lock()
        #: Limits this process made or found: asked for again, they cost no request (a bulk of
        #: fifty asked the server fifty times for limits that were there). A limit deleted since
        #: is found missing at its next acquisition, which makes it again (``acquire``).
        self._known: set[str] = set()
        self._local: dict[str, threading.Lock] = {}

    def __repr__(self) -> str:
        return f"LeaseLocks({self.api_url!r})"

    def close(self) -> None:
        """Close the connections (the runtime closes, the process ends). Leases still held are
        left to expire: their holders are ending with the process."""
        self._session.close()

    # ----- the process-local side -------------------------------------------------------------

    def local(self, name: str) -> threading.Lock:
        """The process-local lock in front of the limit ``name`` (made on first use)."""
        with self._guard:
            return self._local.setdefault(name, threading.Lock())

    # ----- limits -----------------------------------------------------------------------------

    def ensure_limit(self, name: str) -> str:
        """Make the global concurrency limit ``name`` (limit 1) if it does not exist yet; ask
        the server only while this process does not know it (first use, or found missing
        since)."""
        with self._guard:
            if name in self._known:
                return name
        found = self._call("GET", f"/v2/concurrency_limits/{name}", what=f"read limit {name}")
        if found.status_code == 404:
            made = self._call(
                "POST", "/v2/concurrency_limits/", {"name": name, "limit": 1}, what=f"create limit {name}"
            )
            # 409: a concurrent creator (another run, another worker) got there first.
            if made.status_code != 409:
                self._check(made, f"create limit {name}")
        else:
            self._check(found, f"read limit {name}")
        with self._guard:
            self._known.add(name)
        return name

    # ----- leases -----------------------------------------------------------------------------

    def try_acquire(self, name: str, lease: float, *, holder: str | None = None) -> Lease | None:
        """One try at the limit ``name`` (strict: a missing limit is an error, not a free pass):
        the held ``Lease`` (close it to release), or None when another holder has it (423) or
        the server is busy (5xx, or the connection failed). ``holder`` is the flow run that
        holds it, shown by Prefect's UI on the limit.

        One try, and no timeout of our own beyond the client's request timeout: a timeout
        cancels the request on our side only, and a slot the server granted meanwhile would be
        held by nobody until its lease expires."""
        body: dict[str, Any] = {"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": lease}
        if holder:
            body["holder"] = {"type": "flow_run", "id": holder}
        try:
            response = self._post("/v2/concurrency_limits/increment-with-lease", body)
        except requests.ConnectionError:
            return None  # not sent, or its answer lost: try again within the caller's deadline
        if response.status_code in NOT_TAKEN:
            return None
        self._check(response, f"take lock {name}")
        answer = response.json()
        if not answer.get("limits"):
            with self._guard:
                self._known.discard(name)
            raise LimitMissing(
                f"the global concurrency limit {name!r} does not exist "
                "(it is made on first use; was it deleted meanwhile?)"
            )
        return Lease(self, name, str(answer["lease_id"]), lease)

    def acquire(
        self,
        name: str,
        lease: float,
        until: float,
        *,
        holder: str | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Lease | None:
        """Hold the limit ``name`` (see ``try_acquire``), trying again until ``until``
        (monotonic); ``on_wait`` is called once, when the first try finds it taken. None when
        time ran out."""
        pause = 0.2
        remade = False
        while True:
            try:
                held = self.try_acquire(name, lease, holder=holder)
            except LimitMissing:
                if remade:
                    raise
                self.ensure_limit(name)  # deleted since this process made it (try_acquire forgot it)
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

    def renew(self, lease_id: str, duration: float) -> None:
        """Extend the lease ``lease_id`` to ``duration`` seconds from now."""
        response = self._post(f"/v2/concurrency_limits/leases/{lease_id}/renew", {"lease_duration": duration})
        self._check(response, f"renew lease {lease_id}")

    def release(self, lease_id: str) -> None:
        """Give the slots of the lease ``lease_id`` back."""
        response = self._post("/v2/concurrency_limits/decrement-with-lease", {"lease_id": lease_id})
        self._check(response, f"release lease {lease_id}")

    # ----- wire -------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if not self.api_url:
            raise PrefectApiError(
                "no Prefect API URL: metalflow's locks need a Prefect server (set PREFECT_API_URL, "
                "e.g. with `prefect config set PREFECT_API_URL=http://host:4200/api`)"
            )
        return f"{self.api_url}{path}"

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        """One POST, as is (no retry: the caller decides what a busy server means)."""
        return self._session.post(self._url(path), json=body, timeout=self.timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *, what: str) -> requests.Response:
        """A read or an idempotent write, tried again while the server is busy or unreachable
        (about 6 s in all, as Prefect's client does for these)."""
        url = self._url(path)
        for attempt in range(5):
            try:
                response = self._session.request(method, url, json=body, timeout=self.timeout)
            except requests.ConnectionError as exc:
                if attempt == 4:
                    raise PrefectUnavailable(
                        f"Prefect API at {self.api_url} unreachable", operation=what, evidence=type(exc).__name__
                    ) from None
            else:
                if response.status_code not in BUSY or attempt == 4:
                    return response
            time.sleep(0.2 * 2**attempt * random.uniform(0.75, 1.25))
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _check(self, response: requests.Response, what: str) -> None:
        raise_for_answer(
            response,
            what,
            busy=response.status_code in BUSY,
            credentials="PREFECT_API_AUTH_STRING or PREFECT_API_KEY",
        )


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


class Lease:
    """One slot of a global concurrency limit, held under a lease that a background thread
    renews every third of its duration until ``close()`` releases it. A holder that dies
    stops renewing, so its slot frees itself when the lease expires."""

    def __init__(self, locks: LeaseLocks, name: str, lease_id: str, duration: float) -> None:
        self.name, self.lease_id, self.duration = name, lease_id, duration
        self._locks = locks
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{name}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.duration / 3):
            try:
                self._locks.renew(self.lease_id, self.duration)
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
                self._locks.release(self.lease_id)
                return
            except Exception as exc:  # noqa: BLE001 - unreleased, the lease expires on its own
                if attempt == 2:
                    log.warning(
                        "could not release %s (%s); it frees itself within %.0f s", self.name, exc, self.duration
                    )
            time.sleep(0.2 * (attempt + 1))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
