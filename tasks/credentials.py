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
        with self._lock:
            self._data[name] = (time.monotonic(), value)
        return value


def _blocks() -> _BlockCache:
    """The process's Secret block cache (a part of its ``Runtime``)."""
    return runtime().part("secret-blocks", _BlockCache)


def resolve(ref: str) -> Secret:
    scheme, sep, rest = (ref or "").partition(":")
    if not sep or not rest:
        raise CredentialError(f"credential reference {ref!r} must look like env:NAME, block:NAME or block:NAME#KEY")
    if scheme == "env":
        if rest not in os.environ:
            raise CredentialError(f"environment variable {rest} is not set on this worker")
        return Secret(os.environ[rest])
    if scheme == "block":
        name, _, key = rest.partition("#")
        value = _blocks().get(name)
        if key:
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise CredentialError(
                        f"Secret block {name!r} is not a JSON object; cannot read key {key!r}"
                    ) from None
            if not isinstance(value, dict) or key not in value:
                raise CredentialError(f"Secret block {name!r} has no entry {key!r}")
            value = value[key]
        if not isinstance(value, str):
            raise CredentialError(f"Secret block {name!r}{'#' + key if key else ''} does not hold a string")
        return Secret(value)
    raise CredentialError(f"unknown credential scheme {scheme!r} in {ref!r} (use env: or block:)")
