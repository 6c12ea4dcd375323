"""What the power-poll engine (``watch.PowerWatch``) reads and reports: a target, a reading,
the watch's counters, and the rule that gives up on a worker's pyghmi."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from metalflow.integrations.common import Secret
from metalflow.integrations.ipmi.errors import scrub
from metalflow.integrations.ipmi.validate import check_address, check_password, check_port, check_username


@dataclass(frozen=True)
class BmcTarget:
    """One BMC to read; ``key`` names it in the result (e.g. the host name)."""

    key: str
    address: str
    username: str
    password: Secret = field(repr=False)
    port: int = 623

    def __post_init__(self) -> None:
        if isinstance(self.password, (str, bytes)):
            object.__setattr__(self, "password", Secret(self.password))

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}"

    def ident(self) -> tuple[str, str, int, str, bytes]:
        """What makes a session: the target and a digest of its credentials (never the password)."""
        return (
            self.key,
            self.address,
            self.port,
            self.username,
            hashlib.sha256(self.password.reveal_bytes()).digest(),
        )

    def check(self) -> None:
        """The offline checks (``BmcInvalidInput`` naming the field): nothing is sent otherwise."""
        check_address(self.address, self.target)
        check_port(self.port, self.target)
        check_username(self.username, self.target)
        check_password(self.password, self.target)


@dataclass(frozen=True)
class PowerReading:
    """The outcome for one BMC: ``state`` 'on'/'off', or ``error`` (a message without secrets)
    and ``kind``, the error class name (``BmcTimeout``, ``BmcAuthFailed``...), so a caller can
    tell a silent BMC from a wrong password. ``elapsed`` is the time spent on it, in seconds;
    ``started`` when its read began (epoch seconds; None: never tried, e.g. refused offline)."""

    key: str
    state: str | None
    error: str | None
    elapsed: float
    kind: str | None = None
    started: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class TimedReading(PowerReading):
    """A ``PowerReading`` with ``at``, the aware UTC time its read started: the time the
    inventory records (the state was true at least then)."""

    at: datetime = field(kw_only=True)


@dataclass(frozen=True)
class WatchStats:
    """Counters since the watch started. ``reads`` counts every reading delivered (failed
    ones too); ``skipped_in_flight`` the slots skipped because the BMC's previous read was
    still running; ``worker_restarts`` the worker processes replaced."""

    reads: int = 0
    failed: int = 0
    skipped_in_flight: int = 0
    worker_restarts: int = 0

    def since(self, base: WatchStats) -> WatchStats:
        """The counts between ``base`` (taken earlier from the same watch) and these."""
        return WatchStats(
            self.reads - base.reads,
            self.failed - base.failed,
            self.skipped_in_flight - base.skipped_in_flight,
            self.worker_restarts - base.worker_restarts,
        )


def failed(
    key: str, exc: BaseException, elapsed: float, password: Secret | None = None, started: float | None = None
) -> PowerReading:
    """A failed reading: the error's text without the password, and its class name."""
    return PowerReading(key, None, scrub(str(exc), password), elapsed, type(exc).__name__, started)


def looks_wedged(stuck: list[float], shard: int, limit: float) -> bool:
    """Whether a worker's pyghmi should be given up on, from the ages of the calls still stuck
    in it after a sweep of ``shard`` BMCs."""
    return any(a > limit for a in stuck) or (len(stuck) >= 8 and 2 * len(stuck) >= shard)
