"""Resolve credential references to secrets, inside tasks, at the moment of use.

A reference says where a secret lives, never what it is:

- ``env:NAME``          the environment variable NAME of the worker;
- ``block:NAME``        the Prefect Secret block NAME (a string);
- ``block:NAME#KEY``    the entry KEY of a Prefect Secret block holding a JSON object (one block
                        for a whole rack's BMC passwords, so a poll of 1,000 hosts loads it once).

Parameters, logs and artifacts carry references only.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from metalflow.integrations.common import MetalflowError, Secret
from metalflow.integrations.common.secrets import learn
from metalflow.integrations.common.values import BadValue, SecretRef, parse_secret_ref
from metalflow.tasks.runtime import runtime


class CredentialError(MetalflowError):
    pass


_CACHE_SECONDS = 30.0


class _BlockCache:
    """Secret blocks loaded at most every 30 s per process (a poll reads hundreds of refs),
    and by one thread at a time per block: fifty runs of a bulk that all miss at once wait
    for one load instead of sending fifty (measured: block reads were a tenth of the Prefect
    server's requests in a bulk of 50)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, tuple[float, object]] = {}
        self._loading: dict[str, threading.Lock] = {}

    def _fresh(self, name: str) -> tuple[bool, object]:
        with self._lock:
            hit = self._data.get(name)
        if hit and time.monotonic() - hit[0] < _CACHE_SECONDS:
            return True, hit[1]
        return False, None

    def get(self, name: str) -> object:
        ok, value = self._fresh(name)
        if ok:
            return value
        with self._lock:
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            ok, value = self._fresh(name)  # loaded by the thread this one waited for
            return value if ok else self._load(name)

    def _load(self, name: str) -> object:
        from prefect.blocks.system import Secret as SecretBlock

        load: Any = SecretBlock.load  # sync-compatible: typed as sync or async, called sync here
        try:
            value = load(name, _sync=True).get()
        except ValueError:
            raise CredentialError(
                f"no Prefect Secret block named {name!r}; create it in the UI "
                "(Blocks → Secret) or with `metalflow secrets set`"
            ) from None
        _learn_leaves(value)
        with self._lock:
            self._data[name] = (time.monotonic(), value)
        return value


def _learn_leaves(value: object) -> None:
    """Teach the process's scrubber every string a Secret block holds (a rack's block holds
    every BMC's password: each is a secret of this process from the moment it is loaded, used
    by this run or not). A block holding a JSON object is learned entry by entry."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, (dict, list)):
            learn(value)
            return
        value = parsed
    if isinstance(value, dict):
        for v in value.values():
            _learn_leaves(v)
    elif isinstance(value, list):
        for v in value:
            _learn_leaves(v)


def _blocks() -> _BlockCache:
    """The process's Secret block cache (a part of its ``Runtime``)."""
    return runtime().part("secret-blocks", _BlockCache)


def parse_ref(ref: object, field: str = "credential_ref") -> SecretRef:
    """``ref`` as a ``SecretRef`` (``values.parse_secret_ref``). A value that is not one is
    refused with a message that does not contain it, and the process's scrubber learns it: a
    password pasted into a reference field is a secret from then on, wherever it turns up (a
    log line of the caller, a journal detail, a CloudStack answer)."""
    try:
        return parse_secret_ref(ref, field)  # learns a refused value itself
    except BadValue as exc:
        raise CredentialError(str(exc)) from None


def resolve(ref: str | SecretRef, field: str = "credential_ref") -> Secret:
    """The secret ``ref`` points at, wrapped (and so known to the process's scrubber). The
    errors name the reference (a checked one: where the secret lives, never what it is)."""
    r = parse_ref(ref, field)
    if r.kind == "env":
        if r.name not in os.environ:
            raise CredentialError(f"{field}: environment variable {r.name} is not set on this worker")
        return Secret(os.environ[r.name])
    value = _blocks().get(r.name)
    if r.key:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise CredentialError(
                    f"{field}: Secret block {r.name!r} is not a JSON object; cannot read key {r.key!r}"
                ) from None
        if not isinstance(value, dict) or r.key not in value:
            raise CredentialError(f"{field}: Secret block {r.name!r} has no entry {r.key!r}")
        value = value[r.key]
    if not isinstance(value, str):
        raise CredentialError(f"{field}: Secret block {r} does not hold a string")
    return Secret(value)
