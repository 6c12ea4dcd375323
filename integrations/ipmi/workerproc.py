"""A worker process of the IPMI readers (``BulkPowerReader``, ``PowerWatch``): a fresh
interpreter talking to its parent over one end of a socket pair.

Why a fresh interpreter: pyghmi keeps process-wide state (one I/O thread, its sessions); a
forked child would inherit it half-way through a call of another thread, and
multiprocessing's ``spawn`` re-imports the caller's ``__main__``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerProcess:
    """``python <code...> <fd> <args...>``; ``conn`` is the parent's end of the socket pair."""

    def __init__(self, code: list[str], *args: str):
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH", "")) if p)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *code, str(child.fileno()), *args],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask_to_stop(self) -> None:
        """Ask the worker to log out and exit (it also exits when the socket closes)."""
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass

    def kill(self, wait: float = 0.0) -> None:
        """Give it ``wait`` s to exit on its own, then close the socket and end it."""
        if wait > 0:
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: pyghmi's threads are daemons, the process just ends
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
