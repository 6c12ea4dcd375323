"""The catalogue as docs/operator.md lists it, and the two entry points run as the processes
operators and CloudStack start: one JSON answer (extension), plain text (CLI), no traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fuzz import drivers
from tests.fuzz.catalogue import CATALOGUE, DOC_END, DOC_START, doc_section
from tests.fuzz.drivers import World

REPO = Path(__file__).resolve().parents[2]


def test_operator_doc_lists_the_catalogue() -> None:
    text = (REPO / "docs" / "operator.md").read_text()
    assert DOC_START in text and DOC_END in text, "docs/operator.md lacks the fuzz catalogue section"
    section = text[text.index(DOC_START) : text.index(DOC_END) + len(DOC_END)]
    listed = re.findall(r"^- `([a-z0-9-]+)`", section, re.M)
    assert listed == [c.name for c in CATALOGUE], "regenerate the section: python -m tests.fuzz.catalogue"
    assert section == doc_section(), "regenerate the section: python -m tests.fuzz.catalogue"


def test_catalogue_is_big_enough_and_covers_every_entry() -> None:
    assert len(CATALOGUE) >= 60
    assert {c.entry for c in CATALOGUE} == {"extension", "rack", "import", "maas", "cli", "flow"}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def test_extension_process_answers_bad_payloads_in_json(world: World, tmp_path: Path) -> None:
    """``metalflow-cloudstack create <file> <wait>`` with hostile payloads: exactly one JSON
    document on stdout, exit 1, no traceback, no secret, nothing written."""
    from metalflow.integrations.cloudstack.extension_config import install

    config = tmp_path / "cloudstack.json"
    install(config, prefect_api_url=world.prefect.url, inventory_url=world.url, log_file=str(tmp_path / "ext.log"))
    for name in ("vm-name-trailing-newline", "secret-in-reference-field", "payload-not-json", "vlan-1-as-guest"):
        case = next(c for c in CATALOGUE if c.name == name)
        action, text = drivers.extension_doc(case.input)
        path = tmp_path / f"{name}.json"
        path.write_text(text, encoding="utf-8")
        before = world.snapshot()
        proc = subprocess.run(
            [sys.executable, "-m", "metalflow.integrations.cloudstack.extension", action, str(path), "60"],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(METALFLOW_CLOUDSTACK_CONFIG=str(config)),
            cwd=REPO,
        )
        assert world.snapshot() == before, f"{name}: something was written"
        assert proc.returncode == 1, f"{name}: exit {proc.returncode}: {proc.stdout}"
        answer = json.loads(proc.stdout)  # exactly one document
        assert answer["status"] == "error" and case.field in answer["message"], f"{name}: {answer}"
        assert "Traceback" not in proc.stdout + proc.stderr
        for secret in (*case.hidden, *drivers.EXTENSION_SECRETS):
            assert secret not in proc.stdout + proc.stderr + (tmp_path / "ext.log").read_text()


def test_cli_process_fails_like_a_cli(world: World) -> None:
    """``metalflow trigger provision --param '[/red]'`` and bad JSON: exit 2, one plain line
    (no markup interpretation: a markup error would be a traceback), no traceback, no request
    to the Prefect API. A ``--param`` without ``=`` is named by its position, not quoted: it
    may be a secret typed in the wrong place."""
    for argv, shown in ((["--param", "[/red]"], "--param #1"), (["--param", "vm={bad json"], "vm")):
        before = world.snapshot()
        proc = subprocess.run(
            [sys.executable, "-m", "metalflow.deployments.cli", "trigger", "provision", *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=_env(PREFECT_API_URL=world.prefect.url, METALFLOW_INVENTORY_URL=world.url, COLUMNS="200"),
            cwd=REPO,
        )
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out[-2000:]
        assert proc.returncode == 2, f"exit {proc.returncode}: {out[-1000:]}"
        assert shown in out
        assert world.snapshot() == before
