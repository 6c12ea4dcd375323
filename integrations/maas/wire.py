"""The MAAS wire: one HTTP session, OAuth 1.0 PLAINTEXT, MAAS's URL and body conventions, and
the mapping from HTTP status to the MAAS exception family.

Conventions (reference/maas-api.md §1-2):

- the API key is ``consumer_key:token_key:token_secret``; the consumer secret is always empty,
  and the signature is ``&token_secret`` (PLAINTEXT), via requests-oauthlib;
- every path ends in ``/`` (MAAS would 301 and a POST body would be lost);
- ``op`` goes in the query string; GET parameters in the query, POST/PUT parameters as an
  ``application/x-www-form-urlencoded`` body (never JSON); lists repeat the key; booleans are
  ``true``/``false``;
- every call has a timeout.

Retry by classification (``integrations.common.retry``): a 409 or 503 that carries
``Retry-After`` is MAAS saying "try again" (a database conflict after its own retries, a
missing rack connection); it is retried, the header being the minimum delay, a bounded
number of times (gomaasapi: 4 retries) inside one time budget. A connection error or timeout
is retried only on idempotent calls: a POST that may have reached MAAS is never sent twice.
Everything else (bad input, wrong state, auth) is raised at once.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from metalflow.integrations.common import Backoff, Clock, Deadline, MonotonicClock, Secret, retry
from metalflow.integrations.common.secrets import scrubber
from metalflow.integrations.maas.errors import (
    ErrorContext,
    MaasAuthFailed,
    MaasConflict,
    MaasError,
    MaasForbidden,
    MaasNotFound,
    MaasUnavailable,
    MaasUnreachable,
    MaasValidationError,
)

#: gomaasapi's budget: the first try and up to 4 retries.
DEFAULT_RETRIES = Backoff(first=1.0, factor=2.0, cap=15.0, attempts=5)
EXCERPT_CHARS = 200

FormValue = str | int | float | bool | Secret | None
Form = Mapping[str, FormValue | Iterable[FormValue]] | Iterable[tuple[str, FormValue]]


@dataclass(frozen=True)
class ApiKey:
    """The three parts of a MAAS API key, each kept wrapped."""

    consumer_key: Secret
    token_key: Secret
    token_secret: Secret

    @classmethod
    def parse(cls, api_key: str | Secret | ApiKey) -> ApiKey:
        if isinstance(api_key, ApiKey):
            return api_key
        raw = api_key.reveal() if isinstance(api_key, Secret) else str(api_key)
        parts = raw.strip().split(":")
        if len(parts) != 3 or not all(parts):
            # Never echo the key: say what shape was expected and what was seen.
            raise ValueError(
                "api_key: a MAAS API key is consumer_key:token_key:token_secret "
                f"(3 non-empty parts separated by ':'), got {len(parts)} part(s)"
            )
        return cls(Secret(parts[0]), Secret(parts[1]), Secret(parts[2]))

    def __repr__(self) -> str:
        return "ApiKey('***')"

    def revealed(self) -> tuple[str, ...]:
        return (self.consumer_key.reveal(), self.token_key.reveal(), self.token_secret.reveal())


@dataclass(frozen=True)
class CallRecord:
    """What one HTTP exchange did, for run logs and artifacts (no parameters, no headers)."""

    method: str
    path: str
    op: str
    status: int | None  # None: no answer (connection error)
    seconds: float
    attempt: int


def api_root(url: str) -> str:
    """The API 2.0 root for a MAAS URL given as ``http://h:5240``, ``.../MAAS``, ``.../MAAS/``
    or ``.../MAAS/api/2.0/``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url: expected http(s)://host[:port]/MAAS/, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/api/2.0"):
        pass
    elif not path:
        path = "/MAAS/api/2.0"
    else:
        path += "/api/2.0"
    return urlunsplit((parts.scheme, parts.netloc, path + "/", "", ""))


def resource_path(*segments: str | int) -> str:
    """``resource_path("machines", sid)`` -> ``"machines/<sid>/"`` with each segment checked and
    quoted (an id carrying ``/`` or ``..`` would address another resource)."""
    out = []
    for seg in segments:
        s = str(seg)
        if not s or "/" in s or s in (".", ".."):
            raise ValueError(f"invalid MAAS path segment {s!r}")
        out.append(quote(s, safe=":@-._~"))
    return "/".join(out) + "/"


def encode_form(form: Form | None) -> list[tuple[str, str]]:
    """Form pairs in MAAS's conventions: lists repeat the key, booleans are ``true``/``false``,
    ``None`` drops the key, a Secret is unwrapped here, at the call."""
    if form is None:
        return []
    items = form.items() if isinstance(form, Mapping) else form
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool):
                pairs.append((key, "true" if v else "false"))
            elif isinstance(v, Secret):
                pairs.append((key, v.reveal()))
            else:
                pairs.append((key, str(v)))
    return pairs


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` when
    absent. An unreadable value still means "retry", with no minimum delay."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when - (time.time() if now is None else now))


_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


class MaasWire:
    """HTTP mechanics for one MAAS region. Thread-safe enough to share across threads of one
    process (one ``requests.Session``); never shared across processes."""

    def __init__(
        self,
        url: str,
        api_key: str | Secret | ApiKey,
        *,
        timeout: float = 30.0,
        retries: Backoff = DEFAULT_RETRIES,
        retry_budget: float = 120.0,
        session: requests.Session | None = None,
        clock: Clock | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
    ):
        if timeout <= 0:
            raise ValueError("timeout: must be positive seconds")
        self.root = api_root(url)
        self.netloc = urlsplit(self.root).netloc
        self._key = ApiKey.parse(api_key)
        self.timeout = float(timeout)
        self.retries = retries
        self.retry_budget = float(retry_budget)
        if session is None:
            session = requests.Session()
            session.headers.update({"Accept": "application/json", "User-Agent": "metalflow"})
        self.session = session
        self.clock = clock or MonotonicClock()
        self.on_call = on_call

    def __repr__(self) -> str:
        return f"MaasWire({self.root!r})"

    def close(self) -> None:
        self.session.close()

    # -- one exchange -------------------------------------------------------------------

    def _auth(self) -> OAuth1:
        ck, tk, ts = self._key.revealed()
        return OAuth1(
            ck,
            client_secret="",
            resource_owner_key=tk,
            resource_owner_secret=ts,
            signature_method=SIGNATURE_PLAINTEXT,
        )

    def scrub(self, text: str) -> str:
        """``text`` with the key's parts, every other secret the process has loaded (a BMC
        password MAAS echoes back in a 400 about power parameters, the root hash in a
        user-data error) and any OAuth parameter values masked."""
        s = scrubber()
        s.learn_all(self._key.revealed())
        return s.scrub(text)

    def excerpt(self, body: str) -> str:
        text = _SPACE.sub(" ", _TAGS.sub(" ", body)).strip()
        text = self.scrub(text)
        return text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        op: str | None = None,
        params: Form | None = None,
        data: Form | None = None,
        system_id: str = "",
        idempotent: bool | None = None,
        on_conflict: type[MaasError] = MaasConflict,
        conflict_message: str = "MAAS refused the call (409 Conflict)",
        timeout: float | None = None,
        budget: float | None = None,
    ) -> Any:
        """Send one logical call (retrying what is transient, within ``budget`` seconds,
        ``retry_budget`` by default) and return the decoded body: JSON as Python objects,
        other content as text, ``None`` for an empty answer."""
        method = method.upper()
        if not path.endswith("/"):
            path += "/"
        if idempotent is None:
            idempotent = method == "GET"
        query = ([("op", op)] if op else []) + encode_form(params)
        body = encode_form(data) if method in ("POST", "PUT") else None
        label = op or f"{method} {path}"
        attempts = 0

        def once() -> Any:
            nonlocal attempts
            attempts += 1
            return self._exchange(
                method,
                path,
                query,
                body,
                label=label,
                system_id=system_id,
                on_conflict=on_conflict,
                conflict_message=conflict_message,
                timeout=timeout or self.timeout,
                attempt=attempts,
            )

        def transient(exc: BaseException) -> float | None:
            floor = exc.retry_after if isinstance(exc, MaasError) else None
            if floor is not None:
                return floor
            if isinstance(exc, MaasUnreachable) and idempotent:
                return 0.0
            return None

        return retry(
            once,
            transient=transient,
            deadline=Deadline(self.retry_budget if budget is None else max(0.0, budget), clock=self.clock),
            backoff=self.retries,
        )

    def _exchange(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        body: list[tuple[str, str]] | None,
        *,
        label: str,
        system_id: str,
        on_conflict: type[MaasError],
        conflict_message: str,
        timeout: float,
        attempt: int,
    ) -> Any:
        started = self.clock.now()
        ident = ErrorContext(system_id=system_id, op=label, target="" if system_id else f"MAAS {self.netloc}")
        try:
            resp = self.session.request(
                method,
                self.root + path,
                params=query or None,
                data=body,
                auth=self._auth(),
                timeout=timeout,
                allow_redirects=method == "GET",
            )
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            self._record(method, path, label, None, started, attempt)
            kind = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
            # ``from None``: a requests exception holds the prepared request and its headers.
            context: ErrorContext = {**ident, "excerpt": type(exc).__name__}
            raise MaasUnreachable(f"MAAS at {self.root} {kind}", **context) from None
        self._record(method, path, label, resp.status_code, started, attempt)
        status = resp.status_code
        if 200 <= status < 300:
            return _decode(resp)
        raise self._error(resp, ident, on_conflict, conflict_message)

    def _record(self, method: str, path: str, op: str | None, status: int | None, started: float, attempt: int) -> None:
        if self.on_call is not None:
            self.on_call(CallRecord(method, path, op or "", status, self.clock.now() - started, attempt))

    def _error(
        self, resp: requests.Response, ident: ErrorContext, on_conflict: type[MaasError], conflict_message: str
    ) -> MaasError:
        status = resp.status_code
        text = resp.text or ""
        excerpt = self.excerpt(text)
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        common: ErrorContext = {**ident, "status": status, "excerpt": excerpt}
        exc: MaasError
        if status == 400:
            fields = _field_errors(resp)
            fields = {k: [self.scrub(m) for m in v] for k, v in fields.items()}
            summary = "; ".join(f"{k}: {' '.join(v)}" for k, v in fields.items()) or excerpt
            exc = MaasValidationError(f"MAAS rejected the request: {summary[:300]}", fields=fields, **common)
        elif status == 401:
            exc = MaasAuthFailed(
                "MAAS rejected the API key (unknown consumer, revoked token or bad signature)", **common
            )
        elif status == 403:
            exc = MaasForbidden("MAAS forbids this for the API key's user", **common)
        elif status == 404:
            exc = MaasNotFound("MAAS has no such resource", **common)
        elif status == 409 and retry_after is not None:
            exc = MaasUnavailable("MAAS reported a transient conflict (409 with Retry-After)", **common)
        elif status == 409:
            exc = on_conflict(conflict_message, **common)
        elif status == 503:
            exc = MaasUnavailable("MAAS is unavailable (503)", **common)
        elif status in (502, 504):
            exc = MaasUnavailable(f"a proxy in front of MAAS answered {status}", **common)
        elif 300 <= status < 400:
            exc = MaasError(
                f"MAAS redirected the call to {resp.headers.get('Location', '?')!r}: check the MAAS URL",
                **common,
            )
        else:
            exc = MaasError(f"MAAS answered HTTP {status}", **common)
        # Only 409/503 carrying Retry-After are retried by the wire (see transient()).
        exc.retry_after = retry_after if status in (409, 503) else None
        return exc


def _decode(resp: requests.Response) -> Any:
    if resp.status_code == 204 or not resp.content:
        return None
    ctype = resp.headers.get("Content-Type", "")
    if "json" in ctype:
        return resp.json()
    return resp.text


def _field_errors(resp: requests.Response) -> dict[str, list[str]]:
    """MAAS's form errors: ``{"field": ["msg", ...]}``; anything else gives ``{}``."""
    try:
        data = resp.json()
    except ValueError:
        return {}
    if not isinstance(data, Mapping):
        return {}
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, (list, tuple)):
            out[str(key)] = [str(v) for v in value]
        else:
            out[str(key)] = [str(value)]
    return out
