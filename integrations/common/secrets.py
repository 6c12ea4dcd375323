"""Secrets stay wrapped: a repr shows nothing, the value is unwrapped only at the call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SECRET_KEYS = ("password", "pass", "secret", "key", "token", "apikey", "api_key", "signature")


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str | bytes | Secret):
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = value

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
