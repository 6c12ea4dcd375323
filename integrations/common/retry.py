"""Retry by classification: the caller says which errors are transient; only those are retried,
with exponential backoff and full jitter, inside one deadline."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from metalflow.integrations.common.deadline import Deadline

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    first: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    attempts: int = 5  # total tries, the first included
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before try ``attempt + 1`` (``attempt`` counts from 1)."""
        base = min(self.cap, self.first * self.factor ** (attempt - 1))
        if not self.jitter:
            return base
        return (rng or random).uniform(base / 2, base)


def retry(
    call: Callable[[], T],
    *,
    transient: Callable[[BaseException], float | None],
    deadline: Deadline,
    backoff: Backoff = Backoff(),
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Run ``call``; when it raises, ``transient(exc)`` returns ``None`` (not retryable: raise
    it) or a minimum delay in seconds (e.g. a Retry-After); retries stop after
    ``backoff.attempts`` tries or when the deadline cannot cover the next delay."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            floor = transient(exc)
            if floor is None or attempt >= backoff.attempts:
                raise
            delay = max(floor, backoff.delay(attempt))
            if delay >= deadline.remaining():
                raise
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            deadline.sleep(delay)
