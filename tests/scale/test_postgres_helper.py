"""The throw-away cluster helper: a machine without PostgreSQL gets a clear failure naming the
package to install (the fixture turns it into a test failure, never a skip)."""

from __future__ import annotations

import pytest

from metalflow.lab import postgres


def test_no_postgresql_binaries_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(postgres.PostgresUnavailable, match="apt-get install postgresql"):
        postgres.find_bindir()


def test_the_newest_debian_version_is_chosen(monkeypatch, tmp_path):
    for major in ("9.6", "13", "15"):
        bindir = tmp_path / major / "bin"
        bindir.mkdir(parents=True)
        for tool in ("initdb", "pg_ctl", "postgres"):
            (bindir / tool).touch()
    monkeypatch.setattr(
        postgres.glob, "glob", lambda pattern: [str(tmp_path / m / "bin" / "initdb") for m in ("15", "9.6", "13")]
    )
    assert postgres.find_bindir() == tmp_path / "15" / "bin"
