"""``Keeper``: a power-poll engine (``PowerWatch``) parked between two runs of one process.

Plain Python: ``tasks`` keeps one keeper for the long-running poll and one for by-hand sweeps
as parts of the process ``Runtime``, which closes them (and so the parked watch) when the
process ends."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from metalflow.integrations.ipmi.watch import PowerWatch


class Keeper:
    """Keeps one ``PowerWatch`` (worker processes and BMC sessions) alive between two runs of
    one process, so the next run takes it over instead of starting workers and logging in to
    every BMC again.

    For the long-running poll: without it, each handover left every host's state about two
    periods old (20 s at 10 s a read), every ``power_poll_interval``. A parked watch goes on
    reading at its phases; the next run drains what it read meanwhile, each reading stamped
    with its own time. For by-hand sweeps: the next sweep within its linger reuses the watch's
    workers, and its sessions if they idled less than 20 s. A watch nobody takes within
    ``linger`` seconds is closed (logged out), and so is one parked when the keeper closes.
    Runs on process workers (a process per run) gain nothing from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parked: tuple[PowerWatch, Hashable, threading.Timer] | None = None

    def take(self, key: Hashable) -> PowerWatch | None:
        """The parked watch if it was made with ``key`` (else it is closed): None when none."""
        with self._lock:
            parked, self._parked = self._parked, None
        if parked is None:
            return None
        watch, parked_key, timer = parked
        timer.cancel()
        if parked_key == key:
            return watch
        watch.close()
        return None

    def park(self, watch: PowerWatch, key: Hashable, linger: float) -> None:
        """Keep ``watch`` for ``take(key)`` during ``linger`` seconds; one parked before goes."""
        timer = threading.Timer(linger, self._expire, args=(watch,))
        timer.daemon = True
        with self._lock:
            old, self._parked = self._parked, (watch, key, timer)
        timer.start()
        if old is not None:
            old[2].cancel()
            old[0].close()

    def _expire(self, watch: PowerWatch) -> None:
        with self._lock:
            if self._parked is None or self._parked[0] is not watch:
                return  # taken meanwhile
            self._parked = None
        watch.close()

    def close(self) -> None:
        """Close the parked watch, if any (the runtime does, when the process ends)."""
        with self._lock:
            parked, self._parked = self._parked, None
        if parked is not None:
            parked[2].cancel()
            parked[0].close()
