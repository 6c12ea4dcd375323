"""One TLS context per CA bundle for every Prefect client of a serving process.

Each Prefect client builds its own ``ssl.SSLContext`` and loads the CA bundle into it (18 ms of
CPU per client on this machine with OpenSSL 3: a known slowness of verify-location loading,
python/cpython#95031). Prefect makes a client for nearly every call path: the run engine, each
subflow's tracking task run, artifacts, our locks. Under ``metalflow serve`` (every run a
thread of one process) a bulk of fifty built a few hundred of them, about a sixth of the
serving process's CPU while the wave started (a py-spy profile, docs/benchmarks.md).

``install()`` makes the Prefect client module build each distinct context once and share it:
an ``SSLContext`` is safe to share between connections and threads, and the contexts Prefect
asks for differ only by CA bundle (or are the unverified one its skip-verify setting asks for,
set the same way every time). Verification is unchanged; a CA bundle replaced on disk is read
again when the process restarts. Nothing else in the process is affected: only the ``ssl`` name
inside ``prefect.client.orchestration`` is replaced, by a stand-in that forwards everything
but ``create_default_context`` to the real module.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

_lock = threading.Lock()
_contexts: dict[tuple, ssl.SSLContext] = {}


class _SharedContexts:
    """Stands in for the ``ssl`` module where Prefect's clients are built."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH,
        *,
        cafile: str | None = None,
        capath: str | None = None,
        cadata: Any = None,
    ) -> ssl.SSLContext:
        key = (purpose, cafile, capath, cadata)
        with _lock:
            ctx = _contexts.get(key)
            if ctx is None:
                ctx = _contexts[key] = ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
            return ctx


def install() -> bool:
    """Share the contexts of Prefect's clients in this process. False when the client module
    no longer builds its contexts through a module-level ``ssl`` (a Prefect upgrade changed
    it): nothing is replaced then, and clients work as they come."""
    import prefect.client.orchestration as orchestration

    current = getattr(orchestration, "ssl", None)
    if isinstance(current, _SharedContexts):
        return True
    if current is not ssl:
        return False
    orchestration.ssl = _SharedContexts()  # type: ignore[assignment]  # a stand-in for the ssl module
    return True
