"""MAAS's API authentication: 0-legged OAuth 1.0 with the PLAINTEXT signature.

Follows ``maasserver/api/auth.py`` over piston3's OAuth server:

- the ``Authorization: OAuth k="v", ...`` header is split on commas, values unquoted
  (so ``oauth_signature="%26secret"`` and ``"&secret"`` are the same thing); ``realm`` ignored;
- a request missing any of the six ``oauth_*`` parameters is not an OAuth request at all:
  the challenge answers **401 ``Forbidden``** (piston's ``rc.FORBIDDEN``), except that a
  non-integer ``oauth_timestamp`` is a **400**;
- then consumer (``Invalid consumer.`` shown as ``Invalid API key.``), token, signature method,
  timestamp window (300 s), nonce (stored, so a replay fails) and signature, in that order,
  each failure a **401** ``Authorization Error: '<message>'`` with
  ``WWW-Authenticate: OAuth realm="OAuth"``.

One deliberate difference: MAAS's "Invalid signature" message goes on with the expected
signature base string, which for PLAINTEXT is the token secret itself; the lab stops at
``Invalid signature.`` so that no secret ever appears in an error.
"""

from __future__ import annotations

import hmac
import threading
import time
from urllib.parse import quote, unquote

REQUIRED = (
    "oauth_consumer_key",
    "oauth_token",
    "oauth_signature",
    "oauth_signature_method",
    "oauth_timestamp",
    "oauth_nonce",
)
TIMESTAMP_WINDOW = 300
CHALLENGE = {"WWW-Authenticate": 'OAuth realm="OAuth"'}


class AuthFailure(Exception):
    """A refused request: the HTTP status and the body MAAS would send."""

    def __init__(self, status: int, body: str):
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body


def parse_header(value: str) -> dict[str, str] | None:
    """The OAuth parameters of an ``Authorization`` header, or None if it is not OAuth."""
    value = value.strip()
    if not value.startswith("OAuth"):
        return None
    params: dict[str, str] = {}
    for part in value[len("OAuth") :].split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            continue
        key = key.strip()
        if key.lower() == "realm":
            continue
        params[key] = unquote(val.strip().strip('"'))
    return params


def _escape(s: str) -> str:
    return quote(s, safe="~")


class OAuthVerifier:
    """Checks requests against one API key (``consumer:token:secret``); keeps the nonces."""

    def __init__(
        self, consumer_key: str, token_key: str, token_secret: str, *, window: int = TIMESTAMP_WINDOW, clock=time.time
    ):
        self._consumer = consumer_key
        self._token = token_key
        self._expected_sig = f"{_escape('')}&{_escape(token_secret)}"
        self._window = window
        self._clock = clock
        self._nonces: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()
        self._last_prune = 0.0

    def verify(self, authorization: str | None) -> str:
        """The consumer key of a valid request; ``AuthFailure`` otherwise."""
        params = parse_header(authorization or "")
        if params is None or any(k not in params for k in REQUIRED):
            if params is not None and "oauth_timestamp" in params and not _is_int(params["oauth_timestamp"]):
                raise AuthFailure(400, _bad_timestamp_message())
            raise AuthFailure(401, "Forbidden")
        if not _is_int(params["oauth_timestamp"]):
            raise AuthFailure(400, _bad_timestamp_message())
        if params["oauth_consumer_key"] != self._consumer:
            raise AuthFailure(401, "Authorization Error: Invalid API key.")
        if params["oauth_token"] != self._token:
            raise self._error(f"Invalid access token: {params['oauth_token']}")
        method = params["oauth_signature_method"]
        if method != "PLAINTEXT":
            raise self._error(f"Signature method {method} not supported try one of the following: PLAINTEXT")
        now = self._clock()
        stamp = int(params["oauth_timestamp"])
        if abs(now - stamp) > self._window:
            raise self._error(
                f"Expired timestamp: given {stamp} and now {int(now)} has a greater "
                f"difference than threshold {self._window}"
            )
        self._check_nonce(params["oauth_consumer_key"], params["oauth_token"], params["oauth_nonce"], now)
        if not hmac.compare_digest(params["oauth_signature"].encode(), self._expected_sig.encode()):
            raise self._error("Invalid signature.")
        return params["oauth_consumer_key"]

    def _check_nonce(self, consumer: str, token: str, nonce: str, now: float) -> None:
        key = (consumer, token, nonce)
        with self._lock:
            if now - self._last_prune > self._window:
                # Any nonce older than the window travels with a timestamp we refuse anyway.
                horizon = now - 2 * self._window
                self._nonces = {k: t for k, t in self._nonces.items() if t >= horizon}
                self._last_prune = now
            if key in self._nonces:
                raise self._error(f"Nonce already used: {nonce}")
            self._nonces[key] = now

    @staticmethod
    def _error(message: str) -> AuthFailure:
        return AuthFailure(401, f"Authorization Error: {message!r}")


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _bad_timestamp_message() -> str:
    return repr(
        "Bad Request: the following problems were found among the auth params: ('oauth_timestamp', 'unexpected type')"
    )
