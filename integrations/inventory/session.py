"""The one engine and session factory every repository of the inventory shares.

Every repository method runs in its own short transaction. Writers use ``BEGIN IMMEDIATE`` on
SQLite and ``SELECT ... FOR UPDATE`` on PostgreSQL, and host rows carry a version column: an
update based on a stale read fails instead of overwriting, and ``Database.write`` retries the
whole read-modify-write. Two processes updating the same host therefore never lose an update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from metalflow.integrations.common import Backoff, Deadline, retry, scrubber
from metalflow.integrations.inventory import migrate
from metalflow.integrations.inventory.engine import WRITE_OPTION, default_url, make_engine

T = TypeVar("T")


def _transient(exc: BaseException) -> float | None:
    """Retry a lost race (stale version), a locked SQLite file, a PostgreSQL serialisation
    failure or deadlock, or a dropped connection; nothing else."""
    if isinstance(exc, StaleDataError):
        return 0.0
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return 0.0
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        code = getattr(exc.orig, "pgcode", None) or getattr(exc.orig, "sqlstate", None)
        if "locked" in message or "busy" in message or code in ("40001", "40P01"):
            return 0.0
    return None


class Database:
    """One engine (``url`` defaults to ``$METALFLOW_INVENTORY_URL`` or
    ``sqlite:///<$METALFLOW_HOME or ~/.metalflow>/inventory.db``) and its sessions. A write
    that loses a race or meets a locked file is retried for up to ``write_deadline`` seconds."""

    def __init__(
        self,
        url: str | None = None,
        *,
        busy_timeout_ms: int = 30_000,
        write_deadline: float = 60.0,
        echo: bool = False,
    ):
        self.url = url or default_url()
        scrubber().learn_url(self.url)  # the database password: a secret of this process now
        self.engine = make_engine(self.url, busy_timeout_ms=busy_timeout_ms, echo=echo)
        self.write_deadline = write_deadline
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    def upgrade(self, revision: str = "head") -> None:
        migrate.upgrade(self.engine, revision)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, committed on success. ``write=True`` takes the write
        lock up front on SQLite (``BEGIN IMMEDIATE``)."""
        with self._sessions() as s:
            if write:
                # Our own option (read by engine.py's begin hook), not a key SQLAlchemy's TypedDict lists.
                s.connection(execution_options={WRITE_OPTION: True})  # type: ignore[misc]
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def write(self, fn: Callable[[Session], T]) -> T:
        """``fn`` in a write transaction, retried as a whole when it loses a race."""

        def attempt() -> T:
            with self.session(write=True) as s:
                return fn(s)

        return retry(
            attempt,
            transient=_transient,
            deadline=Deadline(self.write_deadline),
            backoff=Backoff(first=0.01, factor=2.0, cap=0.5, attempts=12),
        )

    def read(self, fn: Callable[[Session], T]) -> T:
        """``fn`` in a read transaction."""
        with self.session() as s:
            return fn(s)
