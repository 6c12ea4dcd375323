from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from metalflow.integrations.common import Backoff, Deadline, MetalflowError, Secret, retry

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


class PrefectApiError(MetalflowError):
    pass


class PrefectUnavailable(PrefectApiError):
    transient = True


class PrefectNotFound(PrefectApiError):
    pass


class PrefectBadRequest(PrefectApiError):
    """The server refused the request as given (e.g. parameters that fail the flow's schema)."""


@dataclass(frozen=True)
class FlowRun:
    id: str
    name: str
    state_type: str
    state_name: str
    message: str
    deployment_id: str | None
    parameters: Mapping[str, Any]

    @property
    def final(self) -> bool:
        return self.state_type in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.state_type == "COMPLETED"

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> FlowRun:
        state = d.get("state") or {}
        return cls(
            id=str(d["id"]),
            name=d.get("name") or "",
            state_type=state.get("type") or "PENDING",
            state_name=state.get("name") or "",
            message=state.get("message") or "",
            deployment_id=d.get("deployment_id"),
            parameters=d.get("parameters") or {},
        )


def idempotency_key(*parts: object) -> str:
    """A stable key from the things that make two requests "the same" (e.g. VM uuid, action,
    attempt): readable prefix plus a hash so it stays short."""
    text = ":".join(str(p) for p in parts)
    return f"{text[:60]}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def raise_for_answer(resp: requests.Response, what: str, *, busy: bool, credentials: str) -> None:
    """The error an answer means, for every caller of the Prefect API (the caller says whether
    it counts the answer as a busy server, and which settings carry credentials); an answer
    that is no error passes."""
    if busy:
        raise PrefectUnavailable(
            "Prefect API busy", operation=what, evidence=f"HTTP {resp.status_code} {resp.text[:120]}"
        )
    if resp.status_code == 404:
        raise PrefectNotFound("not found", operation=what, evidence=resp.text[:200])
    if resp.status_code in (400, 409, 422):
        raise PrefectBadRequest("Prefect refused the request", operation=what, evidence=_detail(resp))
    if resp.status_code in (401, 403):
        raise PrefectApiError(
            f"Prefect API refused the credentials (set {credentials})",
            operation=what,
            evidence=f"HTTP {resp.status_code}",
        )
    if resp.status_code >= 400:
        raise PrefectApiError(
            "Prefect API error", operation=what, evidence=f"HTTP {resp.status_code} {resp.text[:200]}"
        )


class PrefectApi:
    """``PrefectApi(api_url)``; ``api_url`` ends in ``/api`` (``PREFECT_API_URL``).

    Basic auth (a server started with ``PREFECT_SERVER_API_AUTH_STRING``) comes from
    ``auth_string`` or ``PREFECT_API_AUTH_STRING`` as ``user:password``.
    """

    def __init__(
        self,
        api_url: str | None = None,
        *,
        auth_string: str | Secret | None = None,
        timeout: float = 10.0,
        # A busy server (SQLite's "database is locked", 503) is ridden out until the call's
        # deadline, not for a count of tries: a burst of 50 triggers saw 503s for over 20 s.
        backoff: Backoff = Backoff(first=0.5, factor=2, cap=5, attempts=1000),
        session: requests.Session | None = None,
    ):
        api_url = api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.backoff = backoff
        self._session = session or requests.Session()
        auth = auth_string if auth_string is not None else os.environ.get("PREFECT_API_AUTH_STRING")
        if auth:
            user, _, password = Secret(auth).reveal().partition(":")
            self._session.auth = (user, password)
        self._deployments: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"PrefectApi({self.api_url!r})"

    # --- wire -------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, *, body: Any = None, deadline: Deadline | None = None, what: str = ""
    ) -> Any:
        deadline = deadline or Deadline(60)
        url = f"{self.api_url}{path}"

        def once() -> Any:
            try:
                resp = self._session.request(method, url, json=body, timeout=deadline.cap(self.timeout) or 0.1)
            except requests.RequestException as exc:
                raise PrefectUnavailable(
                    f"Prefect API at {self.api_url} unreachable", operation=what, evidence=type(exc).__name__
                ) from None
            busy = resp.status_code in (502, 503, 504) or (resp.status_code == 500 and "locked" in resp.text)
            raise_for_answer(resp, what, busy=busy, credentials="PREFECT_API_AUTH_STRING")
            return resp.json() if resp.content else None

        return retry(
            once,
            transient=lambda e: 0.0 if isinstance(e, PrefectUnavailable) else None,
            deadline=deadline,
            backoff=self.backoff,
        )

    # --- calls ------------------------------------------------------------------------------
    def health(self, timeout: float = 2.0) -> bool:
        try:
            resp = self._session.get(f"{self.api_url}/health", timeout=timeout)
            return resp.status_code == 200
        except requests.RequestException:
            return False

    def deployment_id(self, name: str, *, deadline: Deadline | None = None) -> str:
        """``name`` is ``<flow name>/<deployment name>``, e.g. ``provision/metalflow``."""
        if name not in self._deployments:
            flow, sep, dep = name.partition("/")
            if not sep or not flow or not dep:
                raise PrefectBadRequest(f"deployment name {name!r} must look like 'flow/deployment'")
            try:
                d = self._request(
                    "GET", f"/deployments/name/{flow}/{dep}", deadline=deadline, what=f"read deployment {name}"
                )
            except PrefectNotFound:
                raise PrefectNotFound(
                    f"no deployment {name!r}: is `metalflow serve` (or a worker) running "
                    "and were the deployments registered?"
                ) from None
            self._deployments[name] = str(d["id"])
        return self._deployments[name]

    def create_flow_run(
        self,
        deployment: str,
        parameters: Mapping[str, Any],
        *,
        idempotency_key: str,
        name: str | None = None,
        tags: tuple[str, ...] = (),
        deadline: Deadline | None = None,
    ) -> FlowRun:
        dep_id = self.deployment_id(deployment, deadline=deadline)
        body: dict[str, Any] = {"parameters": dict(parameters), "idempotency_key": idempotency_key}
        if name:
            body["name"] = name
        if tags:
            body["tags"] = list(tags)
        data = self._request(
            "POST", f"/deployments/{dep_id}/create_flow_run", body=body, deadline=deadline, what=f"trigger {deployment}"
        )
        return FlowRun.from_api(data)

    def read_flow_run(self, run_id: str, *, deadline: Deadline | None = None) -> FlowRun:
        return FlowRun.from_api(
            self._request("GET", f"/flow_runs/{run_id}", deadline=deadline, what=f"read flow run {run_id}")
        )

    def wait(self, run_id: str, deadline: Deadline, *, interval: float = 0.5, max_interval: float = 3.0) -> FlowRun:
        """Poll until the run is final; on the deadline return the last state (not final), so a
        caller can report honestly that it is still going."""
        delay = interval
        run = self.read_flow_run(run_id, deadline=deadline)
        while not run.final and deadline.remaining() > 0:
            deadline.sleep(delay)
            delay = min(max_interval, delay * 1.5)
            try:
                run = self.read_flow_run(run_id, deadline=Deadline(max(1.0, deadline.remaining())))
            except PrefectUnavailable:
                continue
        return run

    def flow_runs(self, *, deployment: str | None = None, limit: int = 50) -> list[FlowRun]:
        body: dict[str, Any] = {"limit": limit, "sort": "START_TIME_DESC"}
        if deployment:
            body["deployments"] = {"id": {"any_": [self.deployment_id(deployment)]}}
        return [
            FlowRun.from_api(d) for d in self._request("POST", "/flow_runs/filter", body=body, what="list flow runs")
        ]


#: Prefect's parameter-schema refusal quotes the value it refused ("Failure reason: 'x' does not
#: match '^...'"); the value may be a secret pasted into a reference field, so it goes.
_REFUSED_VALUE = re.compile(r"(Failure reason: )(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)( (?:does not|is not))")


def _detail(resp: requests.Response) -> str:
    try:
        d = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code} {resp.text[:300]}"
    if isinstance(d, dict) and "detail" in d:
        d = d["detail"]
    text = d if isinstance(d, str) else json.dumps(d)
    shown = _REFUSED_VALUE.sub(r"\1the value (not shown)\2", text)
    return f"HTTP {resp.status_code} {shown[:300]}"
