"""Pieces every client shares: deadlines, classified retries, secrets and the error base."""
from integrations.common.deadline import Clock, Deadline, DeadlineExceeded, MonotonicClock
from integrations.common.errors import MetalflowError
from integrations.common.retry import Backoff, retry
from integrations.common.secrets import Secret, mask

__all__ = [
    "Backoff",
    "Clock",
    "Deadline",
    "DeadlineExceeded",
    "MetalflowError",
    "MonotonicClock",
    "Secret",
    "mask",
    "retry",
]
