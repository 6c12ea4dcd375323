"""deployments/prefect.yaml declares exactly what `metalflow serve` serves."""

from importlib import import_module
from pathlib import Path

import pytest
import yaml

from metalflow.deployments.registry import DEPLOYMENT, deployments
from metalflow.tasks.settings import Settings

YAML = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"


def test_prefect_yaml_matches_the_served_deployments():
    doc = yaml.safe_load(YAML.read_text())
    declared = {}
    for d in doc["deployments"]:
        module, _, attr = d["entrypoint"].partition(":")
        flow = getattr(import_module(module), attr)
        assert d["name"] == DEPLOYMENT
        assert d["work_pool"]["name"] == "metalflow"
        declared[flow.name] = [(s["interval"], s.get("parameters", {})) for s in d.get("schedules", [])]
    cfg = Settings()
    served = {}
    for dep in deployments(cfg):
        served[dep.flow_name] = [
            (int(s.schedule.interval.total_seconds()), dict(s.parameters or {})) for s in dep.schedules or []
        ]
    assert declared == served


def test_maas_wait_interval_is_a_checked_setting():
    from metalflow.tasks.settings import load_settings

    assert load_settings({"METALFLOW_CONFIG": "/nonexistent.json"}).maas_wait_interval == 1.0
    assert (
        load_settings({"METALFLOW_CONFIG": "/nonexistent.json", "METALFLOW_MAAS_WAIT_INTERVAL": "5"}).maas_wait_interval
        == 5.0
    )
    with pytest.raises(ValueError, match="METALFLOW_MAAS_WAIT_INTERVAL"):
        load_settings({"METALFLOW_CONFIG": "/nonexistent.json", "METALFLOW_MAAS_WAIT_INTERVAL": "0"})
