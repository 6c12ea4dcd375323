"""Group commit for journal lines written by many threads of one process.

A ``metalflow serve`` process runs tens of runs in threads; each step of each run writes two
journal lines (started, then ok or failed). Written one transaction each, fifty provisions
at once cost thousands of round trips to the database in a few seconds. ``GroupJournal``
writes every line queued at the moment in one transaction (``Inventory.journal_lines``):

- the first writer to find no commit in progress leads: it writes what is queued, its own
  line included, then hands the lead to the oldest line still queued, so no thread writes
  other threads' lines for longer than one transaction;
- the others wait for the commit that carries their line and get their own result: their
  ``EventInfo``, or their own error (an unknown host fails only its own line);
- each line is stamped when it is queued, and a thread waits for its line before it writes
  the next, so a run's lines keep their order.

No thread: when nobody writes, nothing runs.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

from integrations.inventory.records import EventInfo, InventoryError
from integrations.inventory.store import Inventory, JournalLine, journal_line


class _Slot:
    __slots__ = ("line", "wake", "lead", "finished", "result", "error")

    def __init__(self, line: JournalLine):
        self.line = line
        self.wake = threading.Event()  # set when its line is written, or when it is handed the lead
        self.lead = False
        self.finished = False
        self.result: EventInfo | None = None
        self.error: BaseException | None = None


class GroupJournal:
    """``journal(...)`` as ``Inventory.journal``, committed together with the lines other
    threads write at the same time. ``max_lines`` bounds one transaction; ``timeout`` bounds
    how long a caller waits for the commit that carries its line (its line may still be
    written after that; the ``TimeoutError`` says so)."""

    def __init__(self, inventory: Inventory, *, max_lines: int = 500, timeout: float | None = None):
        self.inventory = inventory
        self.max_lines = max_lines
        # One transaction retries for up to the inventory's write deadline; a line may wait
        # behind one transaction before its own.
        self.timeout = timeout if timeout is not None else 2 * inventory.write_deadline + 5
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()
        self._leading = False
        self.transactions = 0  # how many commits (a measure of the grouping; tests read it)

    def journal(self, host: Any, operation: str, run_id: str | None, step: str, system: str, outcome: str,
                detail: Any = "", *, at: Any = None) -> EventInfo:
        slot = _Slot(journal_line(host, operation, run_id, step, system, outcome, detail, at=at))
        with self._lock:
            self._queue.append(slot)
            if not self._leading:
                self._leading = slot.lead = True
        if not slot.lead and not slot.wake.wait(self.timeout):
            with self._lock:
                if not slot.lead and slot in self._queue:
                    self._queue.remove(slot)
                    raise TimeoutError(f"journal line for {host} ({step} {outcome}) not written: the "
                                       f"transactions ahead of it took over {self.timeout:.0f} s")
            slot.wake.wait()  # handed the lead meanwhile, or in a transaction (bounded by its deadline)
        if slot.lead and not slot.finished:
            self._write_queued()  # its own line is first in the queue
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _write_queued(self) -> None:
        with self._lock:
            batch = [self._queue.popleft() for _ in range(min(self.max_lines, len(self._queue)))]
        results: list[EventInfo | InventoryError] | None = None
        failure: BaseException | None = None
        try:
            results = self.inventory.journal_lines([s.line for s in batch])
        except Exception as exc:  # noqa: BLE001 - every line of the batch gets it
            failure = exc
        except BaseException as exc:  # the leader's run was cancelled: the others' lines are not written
            failure = RuntimeError(f"journal line not written: the transaction carrying it was interrupted "
                                   f"({type(exc).__name__})")
            raise
        finally:
            self.transactions += 1
            with self._lock:
                for i, s in enumerate(batch):
                    if results is None:
                        s.error = failure
                    elif isinstance(results[i], InventoryError):
                        s.error = results[i]  # type: ignore[assignment]
                    else:
                        s.result = results[i]  # type: ignore[assignment]
                    s.finished = True
                    s.wake.set()
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.wake.set()  # the oldest line still queued leads the next transaction
                else:
                    self._leading = False
