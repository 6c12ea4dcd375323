"""Run the extension's executable the way EPP ``executeExternalCommand`` does.

- Not an executable file: nothing runs, the result is the text ``File is not executable``.
- ``wait == 0`` means the global wait (``wait`` setting, 1800 s by default).
- The payload is written first, as Gson text, to ``<data_dir>/<extension name>/<uuid4>.json``,
  created new, mode 0644 (the management server's ``UMask=0022``).
- argv: ``[<absolute normalised path>, <action>, <payload file>, str(wait)]``; stderr merged into
  stdout; environment and working directory as configured (CloudStack's child inherits the
  JVM's); stdin is a pipe nobody writes to or closes while the child runs (Java's default).
- Nothing is read while the child runs: ``waitFor(wait)`` first, stdout after the exit. A child
  that writes more than a pipe buffer (64 KiB on Linux) therefore blocks until the timeout.
- Timeout: SIGKILL to the direct child only (``destroyForcibly``), its output is never read, the
  text is ``Timeout``. Grandchildren live on.
- After an exit, stdout is read to its end (a grandchild still holding it open keeps the reader
  waiting, as in Java), split into lines (``\\n``, ``\\r`` or ``\\r\\n``), re-joined with
  ``\\n`` and trimmed as ``String.trim`` does (every character up to U+0020 at either end).
  Exit 0: success, the text is that output. Exit N: ``Exit code: N, Output: <output>``; a child
  killed by signal S exits 128+S as Java reports it.
- The payload file of a successful ``status`` call is deleted; every other one stays.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metalflow.lab.cloudstack import gson

TIMEOUT_TEXT = "Timeout"
NOT_EXECUTABLE_TEXT = "File is not executable"
DELETED_ON_SUCCESS = ("status",)
PAYLOAD_MODE = 0o644  # 0666 & ~0022
DIR_MODE = 0o755


@dataclass
class Call:
    """One run of the executable, as CloudStack made it and as it came back."""

    action: str
    argv: list[str]
    wait: int
    payload: dict[str, Any] | None
    payload_path: str | None
    success: bool
    exit_code: int | None  # None: it timed out, or never ran
    timed_out: bool
    text: str  # what CloudStack works with: the trimmed output, or the wrapped failure
    output: str  # the raw bytes the child wrote (decoded), before any trimming
    seconds: float
    started_at: str
    vm: str | None = None  # the VM's uuid
    vm_name: str | None = None  # the VM's display name (for logs and the CLI)
    host: str | None = None
    try_number: int | None = None
    note: str | None = None  # why the orchestrator made it, when not obvious (e.g. "cleanup")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Call:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def java_trim(text: str) -> str:
    """``String.trim()``: strips every character whose code is U+0020 or less, at both ends."""
    start, end = 0, len(text)
    while start < end and text[start] <= " ":
        start += 1
    while end > start and text[end - 1] <= " ":
        end -= 1
    return text[start:end]


def java_lines(raw: str) -> str:
    """What ``BufferedReader.readLine`` + ``append(line).append(lineSeparator)`` rebuilds."""
    lines = re.split(r"\r\n|\r|\n", raw)
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(line + "\n" for line in lines)


def write_payload(data_dir: Path, extension_name: str, payload: dict[str, Any]) -> Path:
    folder = Path(data_dir) / extension_name
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, DIR_MODE)
    path = folder / f"{uuid.uuid4()}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PAYLOAD_MODE)
    try:
        os.fchmod(fd, PAYLOAD_MODE)  # whatever our own umask is
        os.write(fd, gson.dumps(payload).encode("utf-8"))
    finally:
        os.close(fd)
    return path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def run(
    path: str | os.PathLike[str],
    action: str,
    payload: dict[str, Any],
    *,
    wait: int,
    global_wait: int,
    data_dir: Path,
    extension_name: str,
    env: dict[str, str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> Call:
    """Run ``path action <payload file> wait`` and wait for it, as CloudStack does."""
    started_at = _now()
    t0 = time.monotonic()
    executable = os.path.normpath(os.path.abspath(os.fspath(path)))
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        return Call(
            action=action,
            argv=[executable, action],
            wait=wait or global_wait,
            payload=payload,
            payload_path=None,
            success=False,
            exit_code=None,
            timed_out=False,
            text=NOT_EXECUTABLE_TEXT,
            output="",
            seconds=0.0,
            started_at=started_at,
        )
    if wait == 0:
        wait = global_wait
    payload_path = write_payload(data_dir, extension_name, payload)
    argv = [executable, action, str(payload_path), str(wait)]
    child_env = dict(os.environ)
    child_env.update(env or {})
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=child_env,
        cwd=os.fspath(workdir) if workdir is not None else None,
    )
    assert proc.stdout is not None and proc.stdin is not None

    def ended(**outcome: Any) -> Call:
        return Call(
            action=action,
            argv=argv,
            wait=wait,
            payload=payload,
            payload_path=str(payload_path),
            seconds=round(time.monotonic() - t0, 3),
            started_at=started_at,
            **outcome,
        )

    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL, the direct child only
        proc.wait()  # reap it (Java's process reaper does the same)
        proc.stdout.close()
        proc.stdin.close()
        return ended(success=False, exit_code=None, timed_out=True, text=TIMEOUT_TEXT, output="")
    raw = proc.stdout.read().decode("utf-8", errors="replace")
    proc.stdout.close()
    proc.stdin.close()
    code = proc.returncode
    if code < 0:  # killed by a signal: Java reports 128 + signal
        code = 128 - code
    out = java_trim(java_lines(raw))
    success = code == 0
    if success and action in DELETED_ON_SUCCESS:
        payload_path.unlink(missing_ok=True)
    return ended(
        success=success,
        exit_code=code,
        timed_out=False,
        text=out if success else f"Exit code: {code}, Output: {out}",
        output=raw,
    )
