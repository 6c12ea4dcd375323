"""Find the Prefect server, or start a local one (the embedded default)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from metalflow.integrations.prefectapi import PrefectApi


@dataclass
class LocalServer:
    api_url: str
    proc: subprocess.Popen | None  # None: it was already running, not ours to stop
    log_path: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def server_env(api_url: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a local server and its clients: one home for the SQLite database,
    the UI told where the API is (a port other than 4200 needs it), telemetry off."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_UI_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        PREFECT_LOGGING_LEVEL=env.get("PREFECT_LOGGING_LEVEL", "WARNING"),
        # A run waiting for a host's lock is told when to ask again; Prefect caps that at 30 s,
        # which leaves a host idle long after the previous operation released it.
        PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS=env.get(
            "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS", "5"
        ),
    )
    env.update(extra or {})
    if env.get("PREFECT_API_DATABASE_CONNECTION_URL", "").startswith("postgresql"):
        # Prefect keeps 5 connections and opens up to 10 more per burst, one PostgreSQL backend
        # forked for each and closed after one request: fifty runs at once made it open some
        # 100 connections in 40 s. Kept open instead (docs/scale-out.md).
        for name, value in SERVER_POOL.items():
            env.setdefault(name, value)
    return env


#: The server's database pool on PostgreSQL, unless the environment says otherwise.
SERVER_POOL = {
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "20",
}


def ensure_server(
    api_url: str, home: Path, *, timeout: float = 90.0, extra_env: dict[str, str] | None = None
) -> LocalServer:
    """Use the server at ``api_url`` if it answers; otherwise start ``prefect server start`` on
    that host and port with its database under ``home`` and wait until it is healthy."""
    api = PrefectApi(api_url)
    if api.health():
        return LocalServer(api_url, None)
    from urllib.parse import urlparse

    u = urlparse(api_url)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable)) or "prefect"
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", u.hostname or "127.0.0.1", "--port", str(u.port or 4200)],
        env=server_env(api_url, home, extra_env),
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {proc.returncode}; see {log_path}:\n" + log_path.read_text()[-2000:]
            )
        if api.health(timeout=1):
            return LocalServer(api_url, proc, log_path)
        time.sleep(0.3)
    LocalServer(api_url, proc).stop()
    raise TimeoutError(f"prefect server did not become healthy within {timeout:.0f} s; see {log_path}")
