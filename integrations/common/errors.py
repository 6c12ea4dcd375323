"""The root of every client's exception family.

Each error carries the target (a BMC address, a system_id, a switch and port), the operation
and a short piece of evidence (a status, a body excerpt, the offending CLI line), and never a
secret or a request header.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_E = TypeVar("_E", bound="MetalflowError")


class MetalflowError(Exception):
    #: Whether retrying the same call later may succeed (tasks use it to classify).
    transient: bool = False

    def __init__(self, message: str, *, target: str = "", operation: str = "", evidence: str = ""):
        self.message = message
        self.target = target
        self.operation = operation
        self.evidence = evidence
        parts = [message]
        if target or operation:
            parts.append(f"[{' '.join(p for p in (operation, target) if p)}]")
        if evidence:
            parts.append(f"({evidence[:300]})")
        super().__init__(" ".join(parts))

    def __reduce__(
        self,
    ) -> tuple[Callable[..., MetalflowError], tuple[type[MetalflowError], tuple[object, ...], dict[str, object]]]:
        # The class, the args and every attribute, not the constructor's arguments: subclasses
        # add keyword-only details (system_id, fields, applied, observed...) that a plain
        # exception pickle would lose. Prefect may carry an exception between processes.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[_E], args: tuple[object, ...], state: dict[str, object]) -> _E:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj
