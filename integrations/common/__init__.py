"""Pieces every client shares: deadlines, classified retries, secrets and the error base."""

from metalflow.integrations.common.deadline import Clock, Deadline, DeadlineExceeded, MonotonicClock
from metalflow.integrations.common.errors import MetalflowError
from metalflow.integrations.common.retry import Backoff, retry
from metalflow.integrations.common.secrets import Scrubber, Secret, mask, scrub, scrubber

__all__ = [
    "Backoff",
    "Clock",
    "Deadline",
    "DeadlineExceeded",
    "MetalflowError",
    "MonotonicClock",
    "Scrubber",
    "Secret",
    "mask",
    "retry",
    "scrub",
    "scrubber",
]
