"""Secrets stay wrapped: a repr shows nothing, the value is unwrapped only at the call; and one
``Scrubber`` per process knows every secret the process has loaded and takes it out of text.

Every ``Secret`` made in a process teaches the process's scrubber its value (``Secret`` is what
every credential becomes when it is loaded: MAAS key parts, BMC and switch passwords, the root
password hash, the Prefect auth string, the inventory database password). Values that are not a
``Secret`` but must never be shown are taught with ``learn`` (a value refused where a reference
belongs, a password inside a URL). ``scrub`` then takes every known value, and the shapes that
carry secrets whoever loaded them (OAuth parameters, ``-P pw``, ``user:pw@`` in a URL,
``password=...`` pairs, crypt hashes), out of any text: log records (``ScrubFilter``), journal
details, artifacts, CloudStack answers and the CLI's error lines all pass it.

The scrubber is a part of the process ``Runtime`` (no module-level state): the runs of one
process share it, and a process that closes its runtime forgets what it knew with it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from metalflow.integrations.runtime import Runtime, RuntimeClosed

SECRET_KEYS = ("password", "pass", "secret", "key", "token", "apikey", "api_key", "signature")
MASK = "***"
#: Shorter values are not learned: masking every "extra" in every log line would hide more than
#: it protects (and a credential this short is a weakness of its own, not hidden by masking).
MIN_SECRET_CHARS = 6
SCRUBBER_PART = "secret-scrubber"

# Words of our own messages (field names, the seed's switch password "password"): never learned,
# or every message naming the field would be masked into nonsense.
_OWN_WORDS = frozenset(
    w.lower()
    for w in (
        "MaasIP",
        "MaasPort",
        "MaasKey",
        "MaasSecret",
        "MaasConsumerKey",
        "password",
        "username",
        "admin",
        "l2Switch",
        "racks",
        "hosts",
        "missing",
        "expected",
        "true",
        "false",
        "none",
        "null",
    )
)

# Shapes that carry a secret whoever loaded it. Each keeps its name and masks the value.
_PATTERNS = (
    # OAuth 1.0 parameters in a header or a query: oauth_token="...", oauth_signature=...
    (re.compile(r"(?i)(oauth_[a-z_]+=)(\"[^\"]*\"|[^&\s,]+)"), r"\1" + MASK),
    # URL userinfo: scheme://user:password@host
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)"), r"\1" + MASK + r"\3"),
    # "MaasSecret=x", "password: x", '"api_key": "x"' (a name ending in one of these words)
    (
        re.compile(
            r"(?i)\b([\w.-]*?(?:password|passwd|secret|token|api_?key|maaskey|consumerkey))"
            r"([\"']?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
        ),
        r"\1\2" + MASK,
    ),
    # ipmitool's "-P x"
    (re.compile(r"(\s-P\s+)(\S+)"), r"\1" + MASK),
    # crypt(3) hashes: $6$salt$hash, $y$j9T$salt$hash, $2b$12$...
    (re.compile(r"\$(?:1|2[aby]?|5|6|y|gy|7|sha1|md5)\$[./A-Za-z0-9$=,]{8,}", re.ASCII), "$" + MASK),
)


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str | bytes | Secret):
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value
        learn(value)

    def reveal(self) -> str:
        v = self._value
        return v.decode() if isinstance(v, bytes) else v

    def reveal_bytes(self) -> bytes:
        v = self._value
        return v if isinstance(v, bytes) else v.encode()

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reveal_bytes() == self.reveal_bytes()

    def __hash__(self) -> int:
        return hash(self.reveal_bytes())

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(
        self,
    ) -> tuple[type[Secret], tuple[str | bytes]]:  # picklable for process pools; still masked in reprs
        return (Secret, (self._value,))


def _forms(value: str | bytes) -> set[str]:
    """How a secret can appear in text: as it is, URL-quoted (a form body, a URL), JSON-escaped,
    and as Python shows its bytes (repr, hex: pyghmi's errors quote a BMC password so)."""
    raw = value if isinstance(value, bytes) else value.encode()
    text = raw.decode("utf-8", "replace")
    out = {text, repr(raw), raw.hex(), quote(text, safe=""), quote_plus(text, safe=""), json.dumps(text)[1:-1]}
    return {f for f in out if len(f) >= MIN_SECRET_CHARS}


def _trie_pattern(words: Iterable[str]) -> re.Pattern[str]:
    """A regex matching any of ``words``, longest first, built as a trie: matching costs the
    length of the text times the depth of the trie, not times the number of secrets (a process
    that loaded a thousand BMC passwords scrubs each log line as fast as one that loaded ten)."""
    trie: dict[str, Any] = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        # A chain of single children is one literal: no group per character of a long secret.
        prefix = []
        while len(node) == 1 and "" not in node:
            ((ch, node),) = node.items()
            prefix.append(re.escape(ch))
        ends = "" in node
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return "".join(prefix)
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # Greedy "?": a longer secret that starts with a shorter one is masked whole.
        return "".join(prefix) + (f"(?:{body})?" if ends else body)

    return re.compile(emit(trie))


class Scrubber:
    """The secrets one process has loaded, and ``scrub`` to take them (and the known secret
    shapes) out of text. Thread-safe; learning is cheap and idempotent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._stale = False  # learned since the pattern was built: rebuilt at the next scrub

    def learn(self, value: str | bytes | Secret | None) -> None:
        """Remember ``value`` (and its quoted forms) as a secret of this process."""
        if value is None:
            return
        if isinstance(value, Secret):
            value = value.reveal()
        raw = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if len(raw) < MIN_SECRET_CHARS or raw.lower() in _OWN_WORDS:
            return
        forms = _forms(value)
        with self._lock:
            if not forms <= self._known:
                self._known |= forms
                self._stale = True

    def learn_all(self, values: Iterable[str | bytes | Secret | None]) -> None:
        for v in values:
            self.learn(v)

    def knows(self, value: str) -> bool:
        with self._lock:
            return value in self._known

    def _current_pattern(self) -> re.Pattern[str] | None:
        """One regex for every known form, built once per batch of learning (a rack's block of
        a thousand passwords is learned value by value: built once, at the next scrub)."""
        with self._lock:
            if self._stale:
                self._pattern = _trie_pattern(self._known) if self._known else None
                self._stale = False
            return self._pattern

    def scrub(self, text: str) -> str:
        """``text`` without any known secret or secret-shaped value (each replaced by ``***``)."""
        if not text:
            return text
        pattern = self._current_pattern()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        for shape, replacement in _PATTERNS:
            text = shape.sub(replacement, text)
        return text

    def scrub_values(self, data: Any) -> Any:
        """A copy of ``data`` (JSON-like) with every string in it (keys too) scrubbed; its shape
        is kept (a CloudStack answer stays the JSON document it was)."""
        if isinstance(data, str):
            return self.scrub(data)
        if isinstance(data, Mapping):
            return {self.scrub(k) if isinstance(k, str) else k: self.scrub_values(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return type(data)(self.scrub_values(v) for v in data)
        if isinstance(data, Secret):
            return MASK
        return data

    def scrub_data(self, data: Any) -> Any:
        """``scrub_values`` after ``mask``: values under secret-looking keys masked whole."""
        return self.scrub_values(mask(data))

    def learn_url(self, url: str | None) -> None:
        """Learn the password of a URL's userinfo (``postgresql://user:pw@host/db``), as it is
        and as its percent-decoded self (how the database driver sends it)."""
        if not url:
            return
        try:
            password = urlsplit(url).password
        except ValueError:
            return
        if password:
            self.learn(password)
            self.learn(unquote(password))

    def learn_auth_string(self, auth: str | Secret | None) -> None:
        """Learn a ``user:password`` basic-auth string: whole, its password, and the
        base64 form an ``Authorization`` header carries."""
        if auth is None:
            return
        text = auth.reveal() if isinstance(auth, Secret) else auth
        self.learn(text)
        self.learn(text.partition(":")[2])
        self.learn(base64.b64encode(text.encode()).decode())


def scrubber() -> Scrubber:
    """The process's scrubber (a part of its ``Runtime``); a fresh one, knowing only the secret
    shapes, while the process is ending (its runtime closed)."""
    try:
        return Runtime.current().part(SCRUBBER_PART, Scrubber)
    except RuntimeClosed:
        return Scrubber()


def learn(value: str | bytes | Secret | None) -> None:
    """Teach the process's scrubber ``value`` (see ``Scrubber.learn``)."""
    scrubber().learn(value)


def scrub(text: str) -> str:
    """``text`` scrubbed of every secret this process knows (see ``Scrubber.scrub``)."""
    return scrubber().scrub(text)


def scrub_data(data: Any) -> Any:
    return scrubber().scrub_data(data)


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record (message, arguments, exception text) before any
    handler formats it: on metalflow's handlers and on Prefect's, including the one that sends
    run logs to the Prefect API, so neither a log file nor the Prefect UI ever shows a secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        s = scrubber()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log what there is
            message = str(record.msg)
        record.msg = s.scrub(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters render the traceback from exc_info; render it here, scrubbed, instead.
            record.exc_text = s.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = s.scrub(record.exc_text)
        return True


def install_log_scrubbing(*loggers: logging.Logger | str) -> ScrubFilter:
    """Put one ``ScrubFilter`` on every handler of ``loggers`` (and of the root logger) that
    has none yet; returns the filter."""
    f = ScrubFilter()
    targets = [logging.getLogger(x) if isinstance(x, str) else x for x in loggers] + [logging.getLogger()]
    for logger in targets:
        for handler in logger.handlers:
            if not any(isinstance(existing, ScrubFilter) for existing in handler.filters):
                handler.addFilter(f)
    return f


def _looks_secret(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return any(s in k for s in SECRET_KEYS)


def mask(data: Any) -> Any:
    """A copy of ``data`` with every value under a secret-looking key replaced by ``***``."""
    if isinstance(data, Mapping):
        return {
            k: ("***" if isinstance(k, str) and _looks_secret(k) and v not in (None, "") else mask(v))
            for k, v in data.items()
        }
    if isinstance(data, (list, tuple)):
        return type(data)(mask(v) for v in data)
    if isinstance(data, Secret):
        return "***"
    return data
