"""Shared fixtures: a whole lab, started the way an operator starts it (``python -m metalflow.lab up``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


class LabHandle:
    """A running lab subprocess: its manifest and a client for its control API."""

    def __init__(self, manifest: dict, proc: subprocess.Popen):
        self.manifest = manifest
        self.proc = proc

    @property
    def control_url(self) -> str:
        return self.manifest["lab"]["control_url"].rstrip("/")

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.control_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=15) as resp:
            return json.loads(resp.read())

    def host(self, name: str) -> dict:
        return self.control("GET", f"/hosts/{name}")

    def state(self) -> dict:
        return self.control("GET", "/state")

    def reset_faults(self) -> None:
        self.control("POST", "/reset")


def start_lab(tmp: Path, *args: str, block: int, timeout: float = 60) -> LabHandle:
    manifest = tmp / "manifest.json"
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "metalflow.lab", "up", "--manifest", str(manifest), "--block", str(block), *args],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if manifest.exists():
            return LabHandle(json.loads(manifest.read_text()), proc)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_lab(proc)
    raise RuntimeError(f"the lab did not start: {(tmp / 'lab.log').read_text()[-3000:]}")


def free_block(start: int) -> int:
    """A lab block whose MAAS address is free, so test sessions can run side by side."""
    import socket

    for b in range(start, 99):
        with socket.socket() as s:
            try:
                s.bind((f"127.{100 + b}.250.1", 5240))
                return b
            except OSError:
                continue
    raise RuntimeError("no free lab block")


def stop_lab(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> LabHandle:
    """One lab for the session: 6 hosts over 2 switches (Force10 and Cisco IOS); every
    second host on each switch has two cabled NICs. Tests that break things reset faults."""
    tmp = tmp_path_factory.mktemp("lab")
    handle = start_lab(
        tmp,
        "--hosts",
        "6",
        "--switches",
        "2",
        "--deploy-seconds",
        "1",
        "--commission-seconds",
        "0.5",
        "--erase-seconds",
        "0.5",
        "--node-timeout",
        "6",
        block=free_block(20),
    )
    yield handle
    stop_lab(handle.proc)


@pytest.fixture(autouse=True)
def _fresh_scrubber():
    """Each test starts with a scrubber that knows no secret: the process's scrubber (a part
    of its Runtime) would otherwise remember every password an earlier test used, and mask
    that text in this test's messages."""
    from metalflow.integrations.common.secrets import SCRUBBER_PART
    from metalflow.integrations.runtime import Runtime

    Runtime.current().forget(SCRUBBER_PART)
    yield
