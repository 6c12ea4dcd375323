"""The MAAS exception family.

Every error names the machine (``system_id``, or the resource path when there is none), the
operation (the MAAS ``op`` or the HTTP verb and resource), the HTTP status and a short,
whitespace-collapsed excerpt of the body. It never carries the API key, the OAuth token or
signature, or a request header: the wire layer builds errors from the response status and
body only, scrubs the key's parts out of the excerpt, and raises them ``from None`` so no
``requests`` object (which holds the prepared request and its ``Authorization`` header) is
chained to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, Unpack

from metalflow.integrations.common import MetalflowError


class ErrorContext(TypedDict, total=False):
    """The keywords every ``MaasError`` takes: where it happened and what MAAS said. The wire
    layer builds one per call and adds the answer's status and excerpt."""

    system_id: str
    op: str
    status: int | None
    excerpt: str
    target: str


class MaasError(MetalflowError):
    """Anything MAAS refused or could not do. ``retry_after`` is the seconds MAAS asked the
    caller to wait (a 409 or 503 with Retry-After); the wire retries only those."""

    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        system_id: str = "",
        op: str = "",
        status: int | None = None,
        excerpt: str = "",
        target: str = "",
    ):
        self.system_id = system_id
        self.op = op
        self.status = status
        self.excerpt = excerpt
        evidence = f"HTTP {status}: {excerpt}" if status is not None else excerpt
        super().__init__(message, target=system_id or target, operation=op, evidence=evidence)


class MaasAuthFailed(MaasError):
    """401: the API key is unknown, the token was revoked, or the signature is wrong."""


class MaasForbidden(MaasError):
    """403: the key's user may not do this (not an admin, not the owner)."""


class MaasNotFound(MaasError):
    """404: no such machine, interface, tag or resource."""


class MaasValidationError(MaasError):
    """400: MAAS rejected the input. ``fields`` maps each field to its messages (form-wide
    messages under ``__all__``); it is empty when MAAS answered with plain text."""

    def __init__(self, message: str, *, fields: Mapping[str, list[str]] | None = None, **kw: Unpack[ErrorContext]):
        self.fields = {k: list(v) for k, v in (fields or {}).items()}
        super().__init__(message, **kw)


class MaasConflict(MaasError):
    """409 without Retry-After where it means "nothing matches" (allocate: the machine is not
    available)."""


class MaasWrongState(MaasError):
    """The machine's state does not allow the action (409 on deploy, release, abort...), or a
    wait saw the machine fall into a failure state. ``machine_status`` is the status label
    when known."""

    def __init__(self, message: str, *, machine_status: str = "", **kw: Unpack[ErrorContext]):
        self.machine_status = machine_status
        super().__init__(message, **kw)


class MaasUnavailable(MaasError):
    """503 (or a 409/503 with Retry-After that outlived the retry budget, or a 502/504 from a
    proxy): MAAS cannot serve now. Retrying later may work."""

    transient = True


class MaasUnreachable(MaasUnavailable):
    """The connection failed or timed out; no HTTP answer at all."""


class MaasTimeout(MaasError, TimeoutError):
    """A wait for a machine status ran out of time. ``last_status`` is the label last seen."""

    def __init__(self, message: str, *, last_status: str = "", **kw: Unpack[ErrorContext]):
        self.last_status = last_status
        super().__init__(message, **kw)
