"""What the tasks keep between runs lives in the process's ``Runtime``: one of each part per
runtime, a fresh one after the runtime is replaced, settings read again after an edit."""

from __future__ import annotations

import pytest

from metalflow.integrations.runtime import Runtime
from metalflow.tasks import credentials, locks, switches
from metalflow.tasks.runtime import runtime
from metalflow.tasks.settings import settings


@pytest.fixture
def rt():
    fresh = Runtime.install(Runtime("test"))
    yield fresh
    Runtime.uninstall(fresh)


def test_parts_are_one_per_runtime_and_go_with_it(rt, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert runtime() is rt and rt.has("pyghmi-shim")  # the process-wide patches, applied once
    batches, blocks, leases = switches.switch_batches(), credentials._blocks(), locks.lease_locks()
    assert switches.switch_batches() is batches and credentials._blocks() is blocks
    assert locks.lease_locks() is leases
    Runtime.uninstall(rt)
    again = Runtime.install(Runtime("test-2"))
    try:
        assert switches.switch_batches() is not batches and credentials._blocks() is not blocks
        assert locks.lease_locks() is not leases
    finally:
        Runtime.uninstall(again)


def test_an_edit_of_the_settings_reaches_the_next_call(rt, monkeypatch, tmp_path):
    monkeypatch.setenv("METALFLOW_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("METALFLOW_PXE_VLAN", "11")
    assert settings().pxe_vlan == 11 and settings() is settings()  # read once while unchanged
    monkeypatch.setenv("METALFLOW_PXE_VLAN", "12")
    assert settings().pxe_vlan == 12
    (tmp_path / "config.json").write_text('{"audit_interval": 60}')
    assert settings().audit_interval == 60.0
