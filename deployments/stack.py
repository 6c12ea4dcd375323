"""The whole embedded default in one object: a Prefect server (started if none answers), the
lab, metalflow pointed at it, and ``metalflow serve``. The demo and the end-to-end tests use it.

The same object also stands up the distributed set-up (docs/scale-out.md): the server on a
database given by URL (PostgreSQL), the inventory on another URL, and instead of ``serve`` the
deployments registered on the ``metalflow`` process work pool with ``workers`` process workers
(``Stack(..., prefect_database_url=..., serve_env={"METALFLOW_INVENTORY_URL": ...}, workers=2)``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from metalflow.deployments.server import LocalServer, ensure_server, server_env
from metalflow.deployments.workers import WorkerProcess, worker_env
from metalflow.integrations.prefectapi import PrefectApi


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Stack:
    home: Path
    api_url: str = "http://127.0.0.1:4200/api"
    hosts: int = 4
    switches: int = 2
    block: int = 0
    lab_args: tuple[str, ...] = ()
    serve_env: dict[str, str] = field(default_factory=dict)
    server: LocalServer | None = None
    lab_proc: subprocess.Popen | None = None
    serve_proc: subprocess.Popen | None = None
    manifest: dict = field(default_factory=dict)
    #: Prefect's own database (``postgresql+asyncpg://…``); None: SQLite under ``home``.
    prefect_database_url: str | None = None
    #: More environment for the Prefect server (e.g. its services' loop intervals).
    server_extra_env: dict[str, str] = field(default_factory=dict)
    #: 0: ``metalflow serve`` (the embedded default). N: ``metalflow deploy`` on the process
    #: work pool and N ``prefect worker start`` processes.
    workers: int = 0
    worker_limit: int | None = None
    #: More environment for the workers (and so their flow runs), over ``env``.
    worker_extra_env: dict[str, str] = field(default_factory=dict)
    crash_after: float = 60.0  # see deployments.workers.CRASH_AFTER_SECONDS
    worker_procs: list[WorkerProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = server_env(self.api_url, self.home / "prefect")
        # Logs reach the UI within half a second of being written (Prefect's default: 2 s batches).
        env.update(
            METALFLOW_HOME=str(self.home),
            PREFECT_RUNNER_POLL_FREQUENCY="1",
            PREFECT_LOGGING_LEVEL="INFO",
            PREFECT_LOGGING_TO_API_BATCH_INTERVAL="0.5",
        )
        env.update(self.serve_env)
        return env

    @property
    def manifest_path(self) -> Path:
        return self.home / "lab" / "manifest.json"

    def start_server(self) -> LocalServer:
        extra = dict(self.server_extra_env)
        if self.prefect_database_url:
            extra["PREFECT_API_DATABASE_CONNECTION_URL"] = self.prefect_database_url
        self.server = ensure_server(self.api_url, self.home / "prefect", extra_env=extra)
        return self.server

    def start_lab(self, timeout: float = 60) -> dict:
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            self.manifest_path.unlink()
        log = open(self.home / "lab.log", "ab")
        self.lab_proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metalflow.lab",
                "up",
                "--hosts",
                str(self.hosts),
                "--switches",
                str(self.switches),
                "--block",
                str(self.block),
                "--manifest",
                str(self.manifest_path),
                *self.lab_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.manifest_path.exists():
                self.manifest = json.loads(self.manifest_path.read_text())
                return self.manifest
            if self.lab_proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the lab did not start; see {self.home / 'lab.log'}")

    def setup(self):
        """Secrets, settings and inventory for the lab (runs in this process)."""
        old = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "METALFLOW_HOME", "PREFECT_HOME")}
        os.environ.update(
            PREFECT_API_URL=self.api_url, METALFLOW_HOME=str(self.home), PREFECT_HOME=str(self.home / "prefect")
        )
        try:
            from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

            from metalflow.deployments.labsetup import setup_lab

            # Prefect reads its environment once, at import: in a process that imported it
            # already (a test session), only a settings context points the client at our server.
            with temporary_settings({PREFECT_API_URL: self.api_url, PREFECT_HOME: str(self.home / "prefect")}):
                return setup_lab(
                    self.manifest_path, inventory_url=self.serve_env.get("METALFLOW_INVENTORY_URL"), home=self.home
                )
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def start_serve(self, timeout: float = 90, extra_args: tuple[str, ...] = ()) -> None:
        log = open(self.home / "serve.log", "ab")
        self.serve_proc = subprocess.Popen(
            [sys.executable, "-m", "metalflow.deployments.cli", "serve", *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        api = PrefectApi(self.api_url)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.serve_proc.poll() is not None:
                raise RuntimeError(f"metalflow serve exited; see {self.home / 'serve.log'}")
            try:
                api.deployment_id("audit/metalflow")
                return
            except Exception:  # noqa: BLE001 - not up yet, whatever the reason
                time.sleep(0.5)
        raise TimeoutError(f"deployments did not appear within {timeout:.0f} s; see {self.home / 'serve.log'}")

    @property
    def workers_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.update(self.worker_extra_env)
        return worker_env(env)

    def deploy(self, timeout: float = 120) -> None:
        """``metalflow deploy``: every deployment on the process work pool, the crash automation."""
        with open(self.home / "deploy.log", "ab") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "metalflow.deployments.cli", "deploy", "--crash-after", f"{self.crash_after:g}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                timeout=timeout,
            )
        if proc.returncode != 0:
            raise RuntimeError(
                f"metalflow deploy failed ({proc.returncode}); see {self.home / 'deploy.log'}:\n"
                + (self.home / "deploy.log").read_text(errors="replace")[-2000:]
            )

    def start_worker(self, name: str, timeout: float = 90) -> WorkerProcess:
        worker = WorkerProcess.start(
            name, env=self.workers_env, log_path=self.home / f"{name}.log", limit=self.worker_limit
        )
        self.worker_procs.append(worker)
        worker.wait_online(self.api_url, timeout=timeout)
        return worker

    def restart_worker(self, worker: WorkerProcess, timeout: float = 90) -> WorkerProcess:
        """A new process under the same name (and log file) in place of ``worker``."""
        if worker.alive():
            worker.kill()
        self.worker_procs.remove(worker)
        return self.start_worker(worker.name, timeout)

    def start_workers(self) -> list[WorkerProcess]:
        self.deploy()
        return [self.start_worker(f"worker-{i}") for i in range(1, self.workers + 1)]

    def start(self) -> Stack:
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.start_server()
            self.start_lab()
            self.setup()
            if self.workers:
                self.start_workers()
            else:
                self.start_serve()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for worker in self.worker_procs:
            if worker.alive():
                worker.kill()  # and the flow runs it started: nothing outlives the stack
        _stop(self.serve_proc)
        _stop(self.lab_proc)
        if self.server is not None:
            self.server.stop()
