"""The distributed set-up under test: PostgreSQL (started here, for this session), a Prefect
server on it, the inventory on it, the lab, every deployment registered on the ``metalflow``
process work pool and two ``prefect worker start`` processes. Everything is triggered over the
REST API, as in tests/e2e, whose ``E2E`` helper this reuses.

PostgreSQL missing is a failure, not a skip: CI installs it (.ci/system-packages).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from metalflow.deployments.stack import Stack
from metalflow.deployments.workers import WorkerProcess
from metalflow.lab.postgres import LocalPostgres, PostgresUnavailable, free_port
from tests.conftest import free_block
from tests.e2e.conftest import E2E

#: The settings the scale stack runs with (metalflow's own, through the environment). The crash
#: window, the host lock's lease, the workers' poll and the Prefect server are left at their
#: defaults: the worker-kill tests measure what an installation gets out of the box.
SETTINGS = {
    "METALFLOW_POWER_POLL_INTERVAL": "30",  # several scheduled polls during the module
    "METALFLOW_AUDIT_INTERVAL": "60",
}


@pytest.fixture(scope="session")
def postgres() -> LocalPostgres:
    try:
        pg = LocalPostgres.start(("prefect", "inventory", "scratch"))
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield pg
    pg.stop()


class Scale(E2E):
    """``E2E`` plus the workers and the database."""

    def __init__(self, stack: Stack, postgres: LocalPostgres):
        super().__init__(stack)
        self.postgres = postgres

    @property
    def workers(self) -> list[WorkerProcess]:
        return self.stack.worker_procs

    def worker_of(self, run_id: str) -> list[str]:
        """Names of the workers that executed ``run_id`` (their logs say they submitted it and
        the server did not abort the submission)."""
        return [w.name for w in self.workers if run_id in w.runs()]


@pytest.fixture(scope="module")
def scale(postgres, tmp_path_factory) -> Scale:
    home = Path(tmp_path_factory.mktemp("scale"))
    stack = Stack(
        home=home,
        api_url=f"http://127.0.0.1:{free_port()}/api",
        hosts=6,
        switches=2,
        block=free_block(60),
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
        serve_env={"METALFLOW_INVENTORY_URL": postgres.url("inventory"), **SETTINGS},
        prefect_database_url=postgres.url("prefect", "asyncpg"),
        workers=2,
        worker_limit=3,
    )
    stack.start()
    yield Scale(stack, postgres)
    stack.stop()
