"""A small client for the Prefect REST API, for callers that must not import Prefect (the
CloudStack extension starts on every call, and ``import prefect`` alone costs about a second).

Trigger a deployment by name with an idempotency key (the same key returns the same run, so
a retried or repeated call never starts a second one), ride out the 503s SQLite-backed
servers answer under concurrent load, and wait for a final state within a deadline.

``LeaseLocks`` (``prefectapi.locks``): the global concurrency limits (leased locks) metalflow
holds, on the same API.
"""

from metalflow.integrations.prefectapi.client import (
    FINAL_STATES,
    FlowRun,
    PrefectApi,
    PrefectApiError,
    PrefectBadRequest,
    PrefectNotFound,
    PrefectUnavailable,
    idempotency_key,
)
from metalflow.integrations.prefectapi.locks import Lease, LeaseLocks, LimitMissing

__all__ = [
    "FINAL_STATES",
    "FlowRun",
    "Lease",
    "LeaseLocks",
    "LimitMissing",
    "PrefectApi",
    "PrefectApiError",
    "PrefectBadRequest",
    "PrefectNotFound",
    "PrefectUnavailable",
    "idempotency_key",
]
