"""Lint, format and type checks (``make test`` runs them before the suite; so does CI).

    python -m tests.lint

ruff (lint and format) over the whole tree; mypy over the installed namespace, strict on
``metalflow.integrations`` and ``metalflow.flows`` (pyproject.toml). mypy cannot follow the
editable install's import hook, so the ``metalflow`` namespace is laid out for it in a
temporary folder as links to the repository's folders.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("integrations", "tasks", "flows", "deployments", "lab", "bench")
BIN = Path(sys.executable).parent


def _run(title: str, cmd: list[str], **kwargs: object) -> bool:
    proc = subprocess.run(cmd, cwd=kwargs.pop("cwd", ROOT), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    ok = proc.returncode == 0
    print(f"lint: {title}: {'ok' if ok else 'FAILED'}", flush=True)
    if not ok:
        sys.stdout.write(proc.stdout[-20000:] + proc.stderr[-5000:])
    return ok


def main() -> int:
    ok = _run("ruff check", [str(BIN / "ruff"), "check", "."])
    ok &= _run("ruff format --check", [str(BIN / "ruff"), "format", "--check", "."])
    with tempfile.TemporaryDirectory(prefix="metalflow-mypy-") as tmp:
        ns = Path(tmp) / "metalflow"
        ns.mkdir()
        for folder in FOLDERS:
            (ns / folder).symlink_to(ROOT / folder, target_is_directory=True)
        packages = [a for f in FOLDERS for a in ("-p", f"metalflow.{f}")]
        ok &= _run(
            "mypy",
            [
                str(BIN / "mypy"),
                "--config-file",
                str(ROOT / "pyproject.toml"),
                "--cache-dir",
                str(Path(tmp) / "cache"),
                *packages,
            ],
            cwd=tmp,
            env={"MYPYPATH": tmp, "PATH": str(BIN)},
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
