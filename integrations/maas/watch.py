"""One poll loop for every machine a process waits on.

Fifty provisions waiting for their deploys each polled MAAS on their own, backing off to one
read every 5 s: fifty requests every few seconds, and a deploy seen done up to 5 s late. A
``StatusWatch`` reads every machine being waited on in one ``GET machines/?id=…`` per round
(``batch`` ids per request), a round every ``interval`` seconds while anyone waits, and wakes
each waiter with its machine as that round saw it. MAAS gets one request per round whatever
the number of waiters; a waiter sees its machine done within one interval.

A waiter's view is always from a read that *started after it asked*, so a wait never returns
a status older than its own call. A round whose read failed transiently (503, connection)
hands its waiters that error (``wait_for_status`` keeps waiting within its own deadline,
as after a lone poll's); so does any other error, which ends the wait. A machine missing from the batch answer
is read on its own, so a deleted machine ends its wait with ``MaasNotFound`` as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from metalflow.integrations.common import Deadline
from metalflow.integrations.maas.models import Machine

if TYPE_CHECKING:
    from metalflow.integrations.maas.client import MaasClient

#: What one round hands a machine's waiters: (round number, machine or None, error or None).
View = tuple[int, "Machine | None", "BaseException | None"]


class StatusWatch:
    """Rounds of batched machine reads through ``client`` (see the module docstring).
    ``round_budget`` bounds one round's retries of a transient failure."""

    def __init__(self, client: MaasClient, *, interval: float = 1.0, batch: int = 100, round_budget: float = 15.0):
        if not interval > 0:
            raise ValueError(f"interval: {interval} is not a positive number of seconds")
        if batch < 1:
            raise ValueError(f"batch: {batch} is out of range; use 1 or more")
        self.client, self.interval, self.batch, self.round_budget = client, interval, batch, round_budget
        self._cond = threading.Condition()
        self._waiting: dict[str, int] = {}  # system_id -> waiters
        self._views: dict[str, View] = {}
        self._started = 0  # rounds started so far (a round's number is its start count)
        self._thread: threading.Thread | None = None
        self.rounds = 0  # rounds completed, and the requests they sent (for tests and benchmarks)
        self.requests = 0

    @contextmanager
    def watching(self, system_id: str) -> Iterator[None]:
        """Keep ``system_id`` in every round while the block runs."""
        with self._cond:
            self._waiting[system_id] = self._waiting.get(system_id, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="maas-status-watch", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                left = self._waiting[system_id] - 1
                if left:
                    self._waiting[system_id] = left
                else:
                    del self._waiting[system_id]
                    self._views.pop(system_id, None)

    def next(self, system_id: str, deadline: Deadline) -> Machine | None:
        """The machine as the next round that started after this call read it (inside
        ``watching(system_id)``); ``None`` when the deadline ran out first. That round's error
        for this machine is raised (``MaasUnavailable`` for a transient one)."""
        with self._cond:
            asked = self._started
            fresh = lambda: (v := self._views.get(system_id)) is not None and v[0] > asked  # noqa: E731
            if not self._cond.wait_for(fresh, timeout=max(0.0, deadline.remaining())):
                return None
            _, machine, error = self._views[system_id]
        if error is not None:
            raise error
        return machine

    # --- the loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                ids = sorted(self._waiting)
                if not ids:
                    self._thread = None
                    return
                self._started += 1
                number = self._started
            began = Deadline(self.interval)
            views = self._read(ids, number)
            with self._cond:
                self._views.update((sid, v) for sid, v in views.items() if sid in self._waiting)
                self.rounds += 1
                self._cond.notify_all()
            began.sleep(began.remaining())

    def _read(self, ids: list[str], number: int) -> dict[str, View]:
        views: dict[str, View] = {}
        for start in range(0, len(ids), self.batch):
            chunk = ids[start : start + self.batch]
            try:
                self.requests += 1
                data = self.client.wire.request("GET", "machines/", params={"id": chunk}, budget=self.round_budget)
                found = {m.system_id: m for m in (Machine.from_api(d) for d in data or ())}
            except Exception as exc:  # noqa: BLE001 - handed to this chunk's waiters
                views.update((sid, (number, None, exc)) for sid in chunk)
                continue
            for sid in chunk:
                if sid in found:
                    views[sid] = (number, found[sid], None)
                    continue
                try:  # not in the list: read alone, so a deleted machine says MaasNotFound
                    self.requests += 1
                    views[sid] = (number, self.client._poll_machine(sid, budget=self.round_budget), None)
                except Exception as exc:  # noqa: BLE001 - handed to its waiters
                    views[sid] = (number, None, exc)
        return views
