"""One deadline helper with an injectable clock, so waiting logic is tested without sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class DeadlineExceeded(TimeoutError):
    """A wait ran out of time. ``last`` is the last value observed, for the error message."""

    def __init__(self, what: str, seconds: float, last: object = None):
        self.what = what
        self.seconds = seconds
        self.last = last
        tail = f"; last seen: {last}" if last is not None else ""
        super().__init__(f"{what}: gave up after {seconds:.1f} s{tail}")


@dataclass
class Deadline:
    """An overall time budget. ``remaining()`` shrinks; ``check()`` raises when it is spent."""

    seconds: float
    clock: Clock = field(default_factory=MonotonicClock)
    start: float = field(init=False)

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError("a deadline cannot be negative")
        self.start = self.clock.now()

    @property
    def expires_at(self) -> float:
        return self.start + self.seconds

    def elapsed(self) -> float:
        return self.clock.now() - self.start

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self.clock.now())

    def expired(self) -> bool:
        return self.clock.now() >= self.expires_at

    def cap(self, seconds: float) -> float:
        """``seconds`` or what is left, whichever is smaller (for a per-call timeout)."""
        return max(0.0, min(seconds, self.remaining()))

    def check(self, what: str, last: object = None) -> None:
        if self.expired():
            raise DeadlineExceeded(what, self.seconds, last)

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(self.cap(seconds))

    def wait_for(
        self,
        probe: Callable[[], T],
        done: Callable[[T], bool],
        *,
        what: str,
        failed: Callable[[T], BaseException | None] | None = None,
        interval: float = 1.0,
        max_interval: float = 10.0,
        factor: float = 1.5,
    ) -> T:
        """Poll ``probe`` until ``done(value)``; ``failed(value)`` returning an exception ends
        the wait at once (a failure state needs no timeout to be recognised)."""
        delay = interval
        while True:
            value = probe()
            if done(value):
                return value
            if failed is not None:
                exc = failed(value)
                if exc is not None:
                    raise exc
            self.check(what, value)
            self.sleep(delay)
            delay = min(max_interval, delay * factor)
