"""A throw-away PostgreSQL cluster for the scale tests and the benchmarks: Debian's binaries,
a data directory in a temporary folder, a free TCP port on 127.0.0.1 and the unix socket beside
the data. Part of the lab because it stands in for the operator's database server.

``initdb`` and ``postgres`` refuse to run as root, so when the tests run as root (CI does) the
cluster belongs to the ``postgres`` system user (made by Debian's package) and every server
command runs through ``runuser``. Authentication is ``trust`` on loopback only: the cluster
lives for one test session and listens on 127.0.0.1.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "metalflow"
INSTALL_HINT = (
    "PostgreSQL is not installed: the scale tests need Debian's server binaries "
    "(apt-get install postgresql; .ci/system-packages lists it and .ci/run installs it)"
)


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine, or the cluster would not start."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with initdb, pg_ctl and postgres, else
    the directory of an ``initdb`` on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    for initdb in reversed(candidates):
        bindir = Path(initdb).parent
        if all((bindir / tool).exists() for tool in ("pg_ctl", "postgres")):
            return bindir
    on_path = shutil.which("initdb")
    if on_path:
        bindir = Path(os.path.realpath(on_path)).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    raise PostgresUnavailable(INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalPostgres:
    """``LocalPostgres.start(databases=("prefect", "inventory"))`` … ``.stop()``."""

    root: Path
    bindir: Path
    port: int
    run_as: str | None  # the system user the server runs as when we are root; None: ourselves
    started: bool = False
    #: True: PostgreSQL's own defaults (fsync, synchronous commit), as an operator's server
    #: runs; the benchmarks use this. False: durability off, for tests.
    durable: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL: ``psycopg`` for the inventory, ``asyncpg`` for the Prefect server."""
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(cls, databases: tuple[str, ...] = (), *, timeout: float = 60.0, durable: bool = False) -> LocalPostgres:
        bindir = find_bindir()
        run_as = None
        if os.geteuid() == 0:
            run_as = _system_user()
        # The server user must reach the directory: under root's TMPDIR it might not.
        root = Path(tempfile.mkdtemp(prefix="metalflow-pg-", dir="/tmp" if run_as else None))
        pg = cls(root=root, bindir=bindir, port=free_port(), run_as=run_as, durable=durable)
        try:
            pg._init()
            pg._start(timeout)
            for name in databases:
                pg.create_database(name)
        except BaseException:
            pg.stop()
            raise
        return pg

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *args] if self.run_as else list(args)

    def _run(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root, env=_clean_env()
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{Path(args[0]).name} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-1500:]}"
            )
        return proc.stdout

    def _init(self) -> None:
        self.socket_dir.mkdir(parents=True)
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )

    def _start(self, timeout: float) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            # Durability off: the cluster dies with the test session anyway, and fsyncs would
            # compete with the flows for the 2-core machine's disk.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        self.started = True
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg

        end = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self._dsn("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > end:
                    raise PostgresUnavailable(
                        f"PostgreSQL on 127.0.0.1:{self.port} did not accept connections within {timeout:.0f} s: {exc}"
                    ) from None
                time.sleep(0.2)

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if self.started and (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                self._kill_postmaster()
        self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 9)
        except (OSError, ValueError, IndexError):
            pass


def _system_user() -> str:
    for name in ("postgres",):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root, but there is no 'postgres' system user to own the cluster "
        "(Debian's postgresql package creates it)"
    )


def _clean_env() -> dict[str, str]:
    """PG* variables of the caller must not redirect our commands to another server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}
