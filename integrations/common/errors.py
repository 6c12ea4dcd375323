"""The root of every client's exception family.

Each error carries the target (a BMC address, a system_id, a switch and port), the operation
and a short piece of evidence (a status, a body excerpt, the offending CLI line), and never a
secret or a request header.
"""

from __future__ import annotations


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

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.target, self.operation, self.evidence))


def _rebuild(cls, message, target, operation, evidence):
    obj = cls.__new__(cls)
    MetalflowError.__init__(obj, message, target=target, operation=operation, evidence=evidence)
    return obj
