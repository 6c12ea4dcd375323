"""The whole embedded default in one object: a Prefect server (started if none answers), the
lab, metalflow pointed at it, and ``metalflow serve``. The demo and the end-to-end tests use it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from deployments.server import LocalServer, ensure_server, server_env
from integrations.prefectapi import PrefectApi


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

    @property
    def env(self) -> dict[str, str]:
        env = server_env(self.api_url, self.home / "prefect")
        env.update(METALFLOW_HOME=str(self.home), PREFECT_RUNNER_POLL_FREQUENCY="1",
                   PREFECT_LOGGING_LEVEL="INFO")
        env.update(self.serve_env)
        return env

    @property
    def manifest_path(self) -> Path:
        return self.home / "lab" / "manifest.json"

    def start_server(self) -> LocalServer:
        self.server = ensure_server(self.api_url, self.home / "prefect")
        return self.server

    def start_lab(self, timeout: float = 60) -> dict:
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        if self.manifest_path.exists():
            self.manifest_path.unlink()
        log = open(self.home / "lab.log", "ab")
        self.lab_proc = subprocess.Popen(
            [sys.executable, "-m", "lab", "up", "--hosts", str(self.hosts), "--switches", str(self.switches),
             "--block", str(self.block), "--manifest", str(self.manifest_path), *self.lab_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
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
        os.environ.update(PREFECT_API_URL=self.api_url, METALFLOW_HOME=str(self.home),
                          PREFECT_HOME=str(self.home / "prefect"))
        try:
            from deployments.labsetup import setup_lab

            return setup_lab(self.manifest_path, inventory_url=self.serve_env.get("METALFLOW_INVENTORY_URL"),
                             home=self.home)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def start_serve(self, timeout: float = 90, extra_args: tuple[str, ...] = ()) -> None:
        log = open(self.home / "serve.log", "ab")
        self.serve_proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "serve", *extra_args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env)
        api = PrefectApi(self.api_url)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.serve_proc.poll() is not None:
                raise RuntimeError(f"metalflow serve exited; see {self.home / 'serve.log'}")
            try:
                api.deployment_id("audit/metalflow")
                return
            except Exception:
                time.sleep(0.5)
        raise TimeoutError(f"deployments did not appear within {timeout:.0f} s; see {self.home / 'serve.log'}")

    def start(self) -> "Stack":
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.start_server()
            self.start_lab()
            self.setup()
            self.start_serve()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop(self.serve_proc)
        _stop(self.lab_proc)
        if self.server is not None:
            self.server.stop()
