"""Our own hard deadline around a blocking pyghmi call.

pyghmi's synchronous API blocks the calling thread until its own retry logic gives up, and that
can take very long (more than 100 s was measured for an unknown user on a real BMC). A socket
timeout cannot help: the waiting happens on a ``threading.Event`` fed by pyghmi's I/O thread.
So ``CallGuard.run`` runs the call in a helper thread and waits on a ``Future`` with a timeout:
the caller regains control at the deadline whatever pyghmi does.

What happens to the abandoned call: Python cannot kill a thread, so the helper thread stays in
pyghmi until pyghmi's own retransmissions give up (a silent BMC: a few seconds for a login;
the session is then marked broken and dropped from pyghmi's tables) or the BMC finally
answers (the answer is discarded). The helper is a daemon thread, so it never delays the
interpreter's exit. To keep this bounded, a guard has at most one call in flight: the next
call first waits (within its own deadline) for the abandoned one to end, and gives up with
``BmcTimeout`` if it has not. One guard per BMC (``CallGuards.of``) means at most one stuck thread per BMC,
however often a caller retries.

The guards of a process live in a ``CallGuards`` registry that its owner hands to the clients
(``tasks`` keeps one as a part of the process ``Runtime``; an engine's worker process keeps
its own). It used to be a module-level dict that only ever grew; now a guard with no call in
flight and no call for ``CallGuards.PRUNE_IDLE`` seconds is dropped (``retired``), and a link
that still holds a retired guard takes the current one on its next call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from metalflow.integrations.ipmi.errors import BmcTimeout

T = TypeVar("T")


class CallGuard:
    """Runs one blocking call at a time for one BMC, each with a hard timeout.

    Get it from the process's ``CallGuards`` (``guards.of(target)``), so that every client of
    that BMC in this process goes through the same one. pyghmi keeps its sessions in
    process-wide tables keyed by the BMC's socket address; two clients logging in to one BMC
    from two threads at once raced on them (``KeyError: ('::ffff:127.174.1.1', 623, 0, 0)``,
    seen with fifty status runs of one host at once)."""

    def __init__(self, target: str):
        self.target = target
        self._lock = threading.Lock()  # one caller at a time through this guard
        self._inflight: Future[Any] | None = None
        self._abandoned = 0  # calls given up on so far (for tests and reports)
        #: Monotonic start of the current or last call (its creation before any): how long it
        #: has been stuck, or idle (for pruning).
        self.last_call = time.monotonic()
        #: Set when its registry dropped it: whoever still holds it asks the registry again.
        self.retired = False

    @property
    def abandoned(self) -> int:
        """How many calls this guard has walked away from since it was created."""
        return self._abandoned

    def in_use(self) -> bool:
        """True while a caller holds the guard (or waits for an abandoned call to end)."""
        return self._lock.locked()

    def busy(self) -> bool:
        """True while an abandoned call is still running in pyghmi."""
        f = self._inflight
        return f is not None and not f.done()

    def stuck_for(self) -> float:
        """Seconds the current call has been running (0 when none is)."""
        return time.monotonic() - self.last_call if self.busy() else 0.0

    def run(self, call: Callable[[], T], *, timeout: float, operation: str) -> T:
        """``call()`` in a helper thread; its result or exception, or ``BmcTimeout`` after
        ``timeout`` seconds (the helper is then abandoned, see the module docstring)."""
        # ``Future.result`` measures real time; the callers pass what is left of their deadline.
        end = time.monotonic() + max(0.0, timeout)
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            raise BmcTimeout(
                "another call to this BMC did not finish in time",
                target=self.target,
                operation=operation,
                evidence=f"waited {timeout:.1f} s for the client lock",
            )
        try:
            return self._run_locked(call, end, timeout, operation)
        finally:
            self._lock.release()

    def _run_locked(self, call: Callable[[], T], end: float, timeout: float, operation: str) -> T:
        previous = self._inflight
        if previous is not None and not previous.done():
            try:
                previous.exception(timeout=max(0.0, end - time.monotonic()))
            except FutureTimeout:
                raise BmcTimeout(
                    "an earlier call to this BMC is still stuck in pyghmi",
                    target=self.target,
                    operation=operation,
                    evidence=f"waited {timeout:.1f} s for it to end",
                ) from None
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()

        def work() -> None:
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                future.set_exception(exc)

        self._inflight = future
        self.last_call = time.monotonic()
        threading.Thread(target=work, name=f"ipmi {operation} {self.target}", daemon=True).start()
        try:
            return future.result(timeout=max(0.0, end - time.monotonic()))
        except FutureTimeout:
            self._abandoned += 1
            raise BmcTimeout(
                "the BMC did not answer in time",
                target=self.target,
                operation=operation,
                evidence=f"no result after {timeout:.1f} s",
            ) from None


class CallGuards:
    """The guards of one process, one per BMC target, made on first use.

    Pruned as it goes: at most every ``PRUNE_EVERY`` seconds, ``of`` drops the guards that have
    no call in flight and saw no call for ``PRUNE_IDLE`` seconds (a host deleted, a BMC moved),
    so a process that lives for months keeps only the BMCs it talks to. A stuck call keeps
    its guard (its thread is still in pyghmi: the next call must wait for it)."""

    PRUNE_IDLE = 600.0
    PRUNE_EVERY = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._guards: dict[str, CallGuard] = {}
        self._next_prune = time.monotonic() + self.PRUNE_EVERY

    def __len__(self) -> int:
        with self._lock:
            return len(self._guards)

    def of(self, target: str) -> CallGuard:
        """The process's one guard for ``target`` (``address:port``)."""
        with self._lock:
            now = time.monotonic()
            if now >= self._next_prune:
                self._prune(now)
            guard = self._guards.get(target)
            if guard is None:
                guard = self._guards[target] = CallGuard(target)
            return guard

    def prune(self) -> int:
        """Drop the idle guards now; how many went."""
        with self._lock:
            return self._prune(time.monotonic())

    def _prune(self, now: float) -> int:
        self._next_prune = now + self.PRUNE_EVERY
        idle = [
            t
            for t, g in self._guards.items()
            if now - g.last_call > self.PRUNE_IDLE and not g.busy() and not g.in_use()
        ]
        for t in idle:
            self._guards.pop(t).retired = True
        return len(idle)
