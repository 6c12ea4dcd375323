"""Flow runs for one CloudStack VM: start one, or re-attach to the one already going.

Every run the extension starts is tagged with the VM, the action, the host and a hash of
its parameters, and created with an idempotency key made of the same plus the id of the
previous such run (or ``first``):

- a repeated identical call while a run is going finds it by its tags and waits on it
  (CloudStack killed us at its deadline, or an operator re-ran the command): no second run;
- two identical calls at the same moment compute the same key: Prefect returns one run;
- a call after the previous run ended (CloudStack's retry after a failed create, a second
  stop) gets a new key, hence a new run; the flows are idempotent, so a repeat of a
  completed operation converges (provision's case A only powers on);
- a lost response to ``create_flow_run`` is retried with the same key (503s and connection
  errors are retried by ``PrefectApi``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from metalflow.integrations.common import Deadline
from metalflow.integrations.prefectapi import FlowRun, PrefectApi, idempotency_key

TAG = "metalflow-cloudstack"


def params_hash(params: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_tags(
    vm_uuid: str, label: str, host: str, flow: str | None = None, params: Mapping[str, Any] | None = None
) -> list[str]:
    tags = [TAG, f"vm:{vm_uuid}", f"op:{label}", f"host:{host}"]
    if flow:
        tags.append(f"flow:{flow}")
    if params is not None:
        tags.append(f"params:{params_hash(params)}")
    return tags


class ExtensionApi(PrefectApi):
    """``PrefectApi`` plus the tag query the extension needs to find its own runs."""

    def runs_tagged(self, tags: Sequence[str], *, limit: int = 10, deadline: Deadline | None = None) -> list[FlowRun]:
        """Runs carrying every tag in ``tags``, newest (expected start) first."""
        body = {"flow_runs": {"tags": {"all_": list(tags)}}, "sort": "EXPECTED_START_TIME_DESC", "limit": limit}
        data = self._request("POST", "/flow_runs/filter", body=body, deadline=deadline, what="find the VM's runs")
        return [FlowRun.from_api(d) for d in data or []]


class Runs:
    def __init__(self, api: ExtensionApi, deployment: str = "metalflow"):
        self.api = api
        self.deployment = deployment

    def live(self, vm_uuid: str, label: str, host: str, *, deadline: Deadline | None = None) -> FlowRun | None:
        """A run for this VM, action and host that has not ended (any parameters)."""
        for run in self.api.runs_tagged(run_tags(vm_uuid, label, host), deadline=deadline):
            if not run.final:
                return run
        return None

    def latest(
        self,
        vm_uuid: str,
        host: str,
        *,
        label: str | None = None,
        flow: str | None = None,
        completed: bool = False,
        deadline: Deadline | None = None,
    ) -> FlowRun | None:
        """The newest run for this VM on ``host`` (of one action, one flow, or any), or the
        newest that completed."""
        tags = [TAG, f"vm:{vm_uuid}", f"host:{host}"]
        if label:
            tags.append(f"op:{label}")
        if flow:
            tags.append(f"flow:{flow}")
        for run in self.api.runs_tagged(tags, limit=10 if completed else 1, deadline=deadline):
            if run.ok or not completed:
                return run
        return None

    def start_or_attach(
        self, flow: str, params: Mapping[str, Any], *, vm_uuid: str, label: str, host: str, deadline: Deadline
    ) -> tuple[FlowRun, bool]:
        """The run to wait for, and whether it was already going (re-attached)."""
        tags = run_tags(vm_uuid, label, host, flow, params)
        recent = self.api.runs_tagged(tags, deadline=deadline)
        going = [r for r in recent if not r.final]
        if going:
            return going[0], True
        previous = recent[0].id if recent else "first"
        key = idempotency_key("cloudstack", vm_uuid, label, host, params_hash(params), previous)
        run = self.api.create_flow_run(
            f"{flow}/{self.deployment}", params, idempotency_key=key, tags=tuple(tags), deadline=deadline
        )
        return run, False

    def wait(self, run: FlowRun, deadline: Deadline, interval: float = 1.0) -> FlowRun:
        if run.final:
            return run
        return self.api.wait(run.id, deadline, interval=interval, max_interval=3.0)
