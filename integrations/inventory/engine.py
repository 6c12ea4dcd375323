"""Which database, and how to talk to it safely from several processes.

SQLite (the embedded default) gets, on every connection: WAL (readers never block the
writer), a busy timeout (a writer waits for the lock instead of failing), foreign keys, and
transactions that SQLAlchemy begins itself: ``BEGIN IMMEDIATE`` for sessions that will write,
so two processes cannot both read a row and then both update it, and plain ``BEGIN`` for reads.
PostgreSQL needs none of this; writers lock the rows they change with ``SELECT ... FOR UPDATE``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

#: Connection execution option that marks a session as a writer (``BEGIN IMMEDIATE`` on SQLite).
WRITE_OPTION = "metalflow_write"
ENV_URL = "METALFLOW_INVENTORY_URL"
ENV_HOME = "METALFLOW_HOME"


def default_url() -> str:
    """``METALFLOW_INVENTORY_URL``, else ``sqlite:///<METALFLOW_HOME or ~/.metalflow>/inventory.db``."""
    url = os.environ.get(ENV_URL)
    if url:
        return url
    home = Path(os.environ.get(ENV_HOME) or Path.home() / ".metalflow").expanduser()
    return f"sqlite:///{home / 'inventory.db'}"


#: Connections a PostgreSQL engine keeps open, and how many more it opens under load. One
#: ``metalflow serve`` runs tens of runs in threads, each writing a journal line per step: a
#: connection beyond the kept ones is opened for one transaction and closed after it, and
#: PostgreSQL forks a backend for every one (SQLAlchemy's default of 5 kept made a bulk of
#: fifty open some 300 connections in 40 s).
POOL_SIZE = 25
MAX_OVERFLOW = 25


def make_engine(
    url: str | None = None,
    *,
    busy_timeout_ms: int = 30_000,
    echo: bool = False,
    pool_size: int = POOL_SIZE,
    max_overflow: int = MAX_OVERFLOW,
) -> Engine:
    url = url or default_url()
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, echo=echo, pool_size=pool_size, max_overflow=max_overflow)

    database = parsed.database or ""
    on_disk = database not in ("", ":memory:") and not database.startswith("file:")
    if on_disk:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, echo=echo, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (see _on_begin): the sqlite3 module's own legacy
        # transaction handling would start transactions late, on the first write.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if on_disk:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        writer = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine
