"""The inventory on PostgreSQL: the Alembic migrations (run by two processes at once), the
schema the models describe, and two processes updating one host row without losing an update
(``SELECT ... FOR UPDATE`` plus the version column)."""

from __future__ import annotations

import multiprocessing

import pytest

from metalflow.integrations.config import load_rack_config
from metalflow.integrations.inventory import HostRecord, Inventory, migrate
from metalflow.lab.spec import generate

pytestmark = pytest.mark.slow  # spawns processes; seconds, not minutes


def _upgrade(url: str, start) -> None:
    start.wait(60)
    migrate.upgrade(url)


def _record_failures(url: str, host: str, n: int, start) -> None:
    inv = Inventory(url, maintenance_after=10_000)
    try:
        start.wait(60)  # both writers start together, after their imports
        for i in range(n):
            inv.power.record(host, "unknown", error=f"timeout {i}")
            inv.history.append(host, "power-poll", None, "read", "ipmi", "failed")
    finally:
        inv.dispose()


def _spawn(target, *args) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=target, args=(*args, start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    return [p.exitcode for p in procs]


@pytest.fixture(scope="module")
def inventory(postgres) -> Inventory:
    url = postgres.url("scratch")
    assert _spawn(_upgrade, url) == [0, 0]  # the advisory lock serialises them; the second finds nothing to do
    inv = Inventory(url)
    spec = generate(hosts=2, switches=1, seed_secrets="scale-inventory", privileged=True)
    inv.hosts.import_rack_config(
        load_rack_config(spec.rack_config()),
        [
            HostRecord(
                name=h.name,
                cloudstack_id=str(h.cloudstack_id),
                ipmi_address=h.bmc.address,
                ipmi_port=h.bmc.port,
                ipmi_username=h.bmc.username,
                ipmi_credential_ref=f"env:IPMI_{i}",
                macs=h.macs,
                cpu_count=h.cpu_count,
                memory_mb=h.memory_mb,
            )
            for i, h in enumerate(spec.hosts)
        ],
    )
    yield inv
    inv.dispose()


def test_migrations_reach_head_and_match_the_models(inventory, postgres):
    url = postgres.url("scratch")
    assert migrate.current_revision(url) == migrate.head_revision()
    assert migrate.drift(url) == []
    assert inventory.engine.dialect.name == "postgresql"


def test_two_processes_recording_power_for_one_host_lose_no_update(inventory, postgres):
    host = inventory.hosts.all()[0].name
    version = inventory.hosts.get(host).version
    assert _spawn(_record_failures, postgres.url("scratch"), host, 40) == [0, 0]
    after = inventory.hosts.get(host)
    assert after.poll_failures == 80 and after.version == version + 80
    assert len(inventory.history.events(host, limit=1000)) == 80
