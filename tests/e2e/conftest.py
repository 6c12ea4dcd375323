"""End-to-end harness: a real Prefect server, the lab, metalflow served by ``metalflow serve``,
everything triggered over the REST API as CloudStack would. One stack per test session."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
import requests

from metalflow.deployments.stack import Stack
from metalflow.integrations.common import Deadline
from metalflow.integrations.prefectapi import FlowRun, PrefectApi, idempotency_key
from tests.conftest import LabHandle, free_block


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class E2E:
    """What a test needs: trigger a deployment and wait, read the lab, read the inventory."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.api = PrefectApi(stack.api_url)
        self.lab = LabHandle(stack.manifest, stack.lab_proc)

    def trigger(self, flow: str, key: str | None = None, **params) -> FlowRun:
        key = key or idempotency_key("test", flow, uuid.uuid4().hex)
        return self.api.create_flow_run(f"{flow}/metalflow", params, idempotency_key=key)

    def run(self, flow: str, timeout: float = 180, key: str | None = None, **params) -> FlowRun:
        """Trigger and wait for a final state."""
        run = self.trigger(flow, key=key, **params)
        return self.wait(run.id, timeout)

    def wait(self, run_id: str, timeout: float = 180) -> FlowRun:
        run = self.api.wait(run_id, Deadline(timeout), interval=0.3)
        assert run.final, f"run {run.name} still {run.state_name} after {timeout} s"
        return run

    def register(self, *hosts: str) -> tuple[str, ...]:
        """Register ``hosts`` (all at once) and wait until each is Ready in MAAS, faults cleared."""
        self.lab.reset_faults()
        runs = [self.trigger("register-host", host=h) for h in hosts]
        for run in runs:
            done = self.wait(run.id)
            assert done.ok, f"{done.name}: {done.message}"
        return hosts

    def http(self, method: str, path: str, body: dict | None = None, patience: float = 60.0) -> requests.Response:
        """One request to the Prefect API, riding out the 503s a SQLite-backed server answers
        under load ("database is locked"), as every caller of this API must."""
        deadline = Deadline(patience)
        while True:
            r = requests.request(method, f"{self.stack.api_url}/{path}", json=body, timeout=10)
            if r.status_code != 503 or deadline.remaining() <= 0:
                return r
            deadline.sleep(0.5)

    def rerun(self, run_id: str, timeout: float = 180) -> FlowRun:
        """What the UI's "Retry" does: put the same run back to Scheduled."""
        r = self.http(
            "POST",
            f"flow_runs/{run_id}/set_state",
            {"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True},
        )
        r.raise_for_status()
        return self.wait(run_id, timeout)

    def logs(self, run_id: str, settle: float = 10.0) -> str:
        """The run's logs once they stop arriving: Prefect ships logs in batches (every 2 s by
        default), so a run can be Completed before its last lines reach the API."""
        deadline = Deadline(settle)
        previous = None
        while True:
            r = self.http("POST", "logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
            r.raise_for_status()
            text = "\n".join(entry["message"] for entry in r.json())
            if text == previous or deadline.remaining() <= 0:
                return text
            previous = text
            deadline.sleep(2.5)

    def artifacts(self, run_id: str) -> list[dict]:
        r = self.http("POST", "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        r.raise_for_status()
        return r.json()

    def inventory(self):
        from metalflow.integrations.inventory import Inventory

        return Inventory(json.loads((self.stack.home / "config.json").read_text())["inventory_url"])

    def maas(self):
        from metalflow.integrations.maas import MaasClient

        return MaasClient.from_settings(self.stack.manifest["maas"]["settings"])


@pytest.fixture(scope="session")
def e2e(tmp_path_factory) -> E2E:
    home = tmp_path_factory.mktemp("metalflow")
    stack = Stack(
        home=Path(home),
        api_url=f"http://127.0.0.1:{_free_port()}/api",
        hosts=14,
        switches=2,
        block=free_block(30),
        lab_args=(
            "--deploy-seconds",
            "1",
            "--commission-seconds",
            "0.5",
            "--erase-seconds",
            "0.5",
            "--node-timeout",
            "8",
        ),
        # The tests trigger recover themselves: a scheduled sweep would race them for the
        # half-done hosts they make on purpose.
        serve_env={"METALFLOW_RECOVER_INTERVAL": "3600"},
    )
    stack.start()
    yield E2E(stack)
    stack.stop()
