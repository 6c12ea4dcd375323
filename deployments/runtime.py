"""The process runtime of a metalflow process that ``deployments`` starts.

``metalflow serve`` and ``metalflow demo`` build a fresh ``Runtime`` when they start (the
process-wide patches applied then, before the first run) and close it when they end, so the
parts the runs of the process shared (inventory engine, MAAS session, switch group commit,
lease locks, Secret block cache) are closed with it. Among those parts is the secret scrubber
(``integrations.common.secrets``): every secret a run of the process loads is masked in every
log line of the process from then on, and ``runtime()`` puts its filter on the log handlers
(Prefect's API log handler among them) before the first run starts. ``metalflow worker`` becomes Prefect's
worker (``exec``) and each of its flow runs is a process of its own, which gets its runtime on
first use (``tasks.runtime.runtime``), closed at its exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from metalflow.integrations.runtime import Runtime
from metalflow.tasks.runtime import runtime


@contextmanager
def process_runtime(name: str) -> Iterator[Runtime]:
    """Install a fresh runtime named ``name`` for this process while the block runs; close it
    (every part, newest first) when the block ends, however it ends."""
    rt = Runtime.install(Runtime(name))
    try:
        runtime()  # the process-wide patches (pyghmi shim, log scrubbing) now, not at the first run's call
        yield rt
    finally:
        Runtime.uninstall(rt)
