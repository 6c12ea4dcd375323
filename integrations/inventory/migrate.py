"""Alembic driven from code: the migrations ship inside this package, no ``alembic.ini``.

``upgrade(url)`` brings a database to the newest schema inside one write transaction, so
two processes upgrading the same database at once are serialised (``BEGIN IMMEDIATE`` on
SQLite, an advisory lock on PostgreSQL) and the second finds nothing to do.

For developers: ``python -m metalflow.integrations.inventory.migrate revision -m "add x" --url sqlite:///tmp/x.db``
autogenerates a new revision from the models against a database that is at head.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from metalflow.integrations.inventory.engine import WRITE_OPTION, default_url, make_engine
from metalflow.integrations.inventory.models import Base

MIGRATIONS = Path(__file__).resolve().with_name("migrations")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser escaping
    return cfg


def _engine(target: str | Engine | None) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    return make_engine(target), True


def upgrade(target: str | Engine | None = None, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` on a URL (default: the configured inventory) or engine."""
    engine, own = _engine(target)
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # SQLite ALTERs rebuild tables (batch mode): with foreign keys on, dropping the
                # old hosts table would cascade-delete every NIC. The pragma only works outside
                # a transaction; integrity is checked before the commit instead.
                _sqlite_pragma(conn, "PRAGMA foreign_keys = OFF")
            try:
                conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    cfg = alembic_config()
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, revision)
                    if sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise RuntimeError(f"migration to {revision} broke foreign keys: {broken[:5]}")
            finally:
                if sqlite:
                    _sqlite_pragma(conn, "PRAGMA foreign_keys = ON")
    finally:
        if own:
            engine.dispose()


def _sqlite_pragma(conn: Connection, statement: str) -> None:
    """Run a pragma on the raw connection, outside any transaction SQLAlchemy would begin."""
    raw = conn.connection.dbapi_connection
    assert raw is not None  # an open connection
    cursor = raw.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(target: str | Engine | None = None) -> str | None:
    engine, own = _engine(target)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if own:
            engine.dispose()


def drift(target: str | Engine | None = None) -> list[Any]:
    """What autogenerate would put in a new revision: empty when models and schema agree."""
    engine, own = _engine(target)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        if own:
            engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metalflow.integrations.inventory.migrate")
    parser.add_argument("--url", default=None, help="database URL (default: the configured inventory)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("upgrade", help="migrate to the newest schema")
    sub.add_parser("current", help="print the database's revision")
    sub.add_parser("check", help="fail if the models and the migrations disagree")
    rev = sub.add_parser("revision", help="autogenerate a new revision")
    rev.add_argument("-m", "--message", required=True)
    args = parser.parse_args(argv)
    url = args.url or default_url()
    if args.cmd == "upgrade":
        upgrade(url)
    elif args.cmd == "current":
        print(current_revision(url) or "(empty)")
    elif args.cmd == "check":
        diff = drift(url)
        if diff:
            raise SystemExit(f"models and migrations disagree: {diff}")
    else:
        command.revision(alembic_config(url), message=args.message, autogenerate=True)


if __name__ == "__main__":
    main()
