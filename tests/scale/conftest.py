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

#: Seconds without a heartbeat before the crash automation marks a run Crashed. Heartbeats come
#: every 30 s (Prefect's minimum), so 60 s is two missed heartbeats: short for the test, still
#: clear of a heartbeat that is a few seconds late on a busy machine.
CRASH_AFTER = 60.0

#: The settings the scale stack runs with (metalflow's own, through the environment).
SETTINGS = {
    "METALFLOW_POWER_POLL_INTERVAL": "30",  # several scheduled polls during the module
    "METALFLOW_AUDIT_INTERVAL": "60",
    # A dead run's host lock frees 90 s after its last renewal (production: 300 s). Renewed
    # every 3/4 of it, so a renewal may be ~22 s late on a busy machine before the lock is lost.
    "METALFLOW_HOST_LOCK_LEASE": "90",
}

#: Prefect server settings that make the test wait less (all documented in docs/scale-out.md).
SERVER_ENV = {
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",  # expired leases revoked within 2 s
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "2",  # waiters re-ask every ≤ 2 s
}

WORKER_ENV = {
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
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
        server_extra_env=SERVER_ENV,
        workers=2,
        worker_limit=3,
        worker_extra_env=WORKER_ENV,
        crash_after=CRASH_AFTER,
    )
    stack.start()
    yield Scale(stack, postgres)
    stack.stop()
