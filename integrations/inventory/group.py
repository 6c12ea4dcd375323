"""Group commit for journal lines written by many threads of one process.

A ``metalflow serve`` process runs tens of runs in threads; each step of each run writes two
journal lines (started, then ok or failed). Written one transaction each, fifty provisions
at once cost thousands of round trips to the database in a few seconds. ``GroupJournal``
writes every line queued at the moment in one transaction (``JournalRepository.append_lines``):

- the first writer to find no commit in progress leads: it writes what is queued, its own
  line included, then hands the lead to the oldest line still queued, so no thread writes
  other threads' lines for longer than one transaction;
- the others wait for the commit that carries their line and get their own result: their
  ``JournalLine``, or their own error (an unknown host fails only its own line);
- each line is stamped when it is queued, and a thread waits for its line before it writes
  the next, so a run's lines keep their order;
- a caller that leaves early (its wait timed out, or its run was cancelled by an exception
  raised into its thread) takes its line out of the queue and passes on a lead it was handed,
  so one caller can never stall the others. When a transaction fails, the leader gets the
  error as it came and the others get ``JournalWriteFailed`` naming it (a cancel raised into
  the leader's thread is not theirs).

No thread: when nobody writes, nothing runs.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from metalflow.integrations.inventory.journal import JournalRepository, journal_line
from metalflow.integrations.inventory.records import InventoryError, JournalLine


class _Slot:
    __slots__ = ("line", "wake", "lead", "finished", "result", "error")

    def __init__(self, line: JournalLine):
        self.line = line
        self.wake = threading.Event()  # set when its line is written, or when it is handed the lead
        self.lead = False
        self.finished = False
        self.result: JournalLine | None = None
        self.error: BaseException | None = None


class GroupJournal:
    """``journal(...)`` as ``JournalRepository.append``, committed together with the lines other
    threads write at the same time. ``max_lines`` bounds one transaction; ``timeout`` bounds
    how long a caller waits for the commit that carries its line (its line may still be
    written after that; the ``TimeoutError`` says so)."""

    def __init__(self, history: JournalRepository, *, max_lines: int = 500, timeout: float | None = None):
        self.history = history
        self.max_lines = max_lines
        # One transaction retries for up to the inventory's write deadline; a line may wait
        # behind one transaction before its own.
        self.timeout = timeout if timeout is not None else 2 * history.db.write_deadline + 5
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()
        self._leading = False
        self.transactions = 0  # how many commits (a measure of the grouping; tests read it)

    def journal(
        self,
        host: Any,
        operation: str,
        run_id: str | None,
        step: str,
        system: str,
        outcome: str,
        detail: Any = "",
        *,
        at: Any = None,
    ) -> JournalLine:
        slot = _Slot(journal_line(host, operation, run_id, step, system, outcome, detail, at=at))
        with self._lock:
            self._queue.append(slot)
            if not self._leading:
                self._leading = slot.lead = True
        try:
            if not slot.lead and not slot.wake.wait(self.timeout):
                with self._lock:
                    if not slot.lead:  # still queued, or in a transaction that is taking long
                        queued = slot in self._queue
                        if queued:
                            self._queue.remove(slot)
                        raise TimeoutError(
                            f"journal line for {host} ({step} {outcome}) not committed within {self.timeout:.0f} s: "
                            + (
                                "not written (the transactions ahead of it took that long)"
                                if queued
                                else "its transaction is still running and may still write it"
                            )
                        )
            if slot.lead and not slot.finished:
                self._write_queued()  # its own line is first in the queue
        except BaseException:
            self._abandon(slot)  # a timeout, or a cancel raised into this thread: never wedge the queue
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _write_queued(self) -> None:
        batch: list[_Slot] = []
        results: list[JournalLine | InventoryError] | None = None
        failure: BaseException | None = None
        try:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(self.max_lines, len(self._queue)))]
            results = self.history.append_lines([s.line for s in batch])
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self.transactions += 1
            with self._lock:
                for i, s in enumerate(batch):
                    if results is not None:
                        if isinstance(results[i], InventoryError):
                            s.error = results[i]  # type: ignore[assignment]
                        else:
                            s.result = results[i]  # type: ignore[assignment]
                    elif i == 0:
                        s.error = failure  # the leader's own line: the error as it came
                    else:
                        s.error = JournalWriteFailed(
                            f"journal line not written: its transaction failed ({type(failure).__name__}: {failure})"
                        )
                    s.finished = True
                    s.wake.set()
                self._pass_lead()

    def _pass_lead(self) -> None:
        """(Under the lock.) The oldest line still queued leads the next transaction."""
        if self._queue:
            nxt = self._queue[0]
            nxt.lead = True
            nxt.wake.set()
        else:
            self._leading = False

    def _abandon(self, slot: _Slot) -> None:
        """A caller leaves early: its line leaves the queue, and a lead it was handed (and had
        not used) passes on."""
        with self._lock:
            if slot in self._queue:
                self._queue.remove(slot)
                if slot.lead:
                    self._pass_lead()


class JournalWriteFailed(RuntimeError):
    """The transaction that carried this line failed (the line is not written)."""
