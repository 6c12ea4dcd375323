"""Deadline, retry and secret helpers: pure logic with a fake clock (no real sleeps)."""

import pytest

from metalflow.integrations.common import Backoff, Deadline, DeadlineExceeded, Secret, mask, retry


class FakeClock:
    def __init__(self):
        self.t = 1000.0
        self.sleeps = []

    def now(self):
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


def test_wait_for_returns_when_done_and_backs_off():
    clock = FakeClock()
    values = iter(["a", "b", "c", "done"])
    d = Deadline(60, clock=clock)
    assert d.wait_for(lambda: next(values), lambda v: v == "done", what="x", interval=1, factor=2) == "done"
    assert clock.sleeps == [1, 2, 4]


def test_wait_for_gives_up_on_time_with_last_value():
    clock = FakeClock()
    d = Deadline(10, clock=clock)
    with pytest.raises(DeadlineExceeded) as ei:
        d.wait_for(lambda: "deploying", lambda v: v == "deployed", what="wait for Deployed", interval=3, factor=1)
    assert ei.value.last == "deploying"
    assert "wait for Deployed" in str(ei.value) and "deploying" in str(ei.value)
    assert clock.t - 1000.0 == pytest.approx(10)  # the last sleep was capped at the deadline


def test_wait_for_failure_state_ends_at_once():
    clock = FakeClock()
    d = Deadline(600, clock=clock)
    with pytest.raises(RuntimeError, match="failed deployment"):
        d.wait_for(
            lambda: "failed deployment",
            lambda v: v == "deployed",
            failed=lambda v: RuntimeError(v) if v.startswith("failed") else None,
            what="x",
        )
    assert clock.sleeps == []


def test_retry_only_transient_and_respects_attempts():
    clock = FakeClock()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    out = retry(
        flaky,
        transient=lambda e: 0.0 if isinstance(e, ConnectionError) else None,
        deadline=Deadline(100, clock=clock),
        backoff=Backoff(first=1, jitter=False),
    )
    assert out == "ok" and len(calls) == 3 and clock.sleeps == [1, 2]

    calls.clear()

    def bad():
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        retry(
            bad,
            transient=lambda e: 0.0 if isinstance(e, ConnectionError) else None,
            deadline=Deadline(100, clock=clock),
        )
    assert len(calls) == 1


def test_retry_honours_retry_after_floor_and_deadline():
    clock = FakeClock()
    n = []

    def busy():
        n.append(1)
        raise ConnectionError("503")

    with pytest.raises(ConnectionError):
        retry(
            busy,
            transient=lambda e: 5.0,
            deadline=Deadline(12, clock=clock),
            backoff=Backoff(first=0.1, jitter=False, attempts=10),
        )
    assert clock.sleeps == [5.0, 5.0]  # a third 5 s wait would pass the 12 s deadline
    assert len(n) == 3


def test_secret_never_shows():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2" and s.reveal_bytes() == b"hunter2"
    m = mask({"username": "admin", "password": "hunter2", "nested": [{"api_key": "k"}], "s": s})
    assert m == {"username": "admin", "password": "***", "nested": [{"api_key": "***"}], "s": "***"}
