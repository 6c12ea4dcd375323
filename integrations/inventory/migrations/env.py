"""Alembic environment for the inventory. Normally run by ``integrations.inventory.migrate``,
which hands over an open connection inside a write transaction; the ``url`` path exists so
that ``migrate revision`` (autogenerate) works for developers too."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, text

from metalflow.integrations.inventory.engine import WRITE_OPTION, make_engine
from metalflow.integrations.inventory.models import Base, UTCDateTime

# Any constant: serialises concurrent upgrades of one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x6D66_696E  # "mfin"


def _render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Write our UTC type as the plain column type it is in the database."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite needs table rebuilds for most ALTERs
        compare_type=True,
        render_item=_render_item,
        transactional_ddl=True,  # we emit BEGIN ourselves on SQLite too (see engine.py)
    )


def _migrate(connection: Connection) -> None:
    _configure(connection)
    if connection.dialect.name == "postgresql":
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})"))
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                _migrate(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    _run_online()
