"""Placement claims in the inventory: the pool model's prepare picks a free machine that fits,
and two concurrent claims never get the same machine (threads and processes, real SQLite)."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta

import pytest

from metalflow.integrations.inventory import ClaimConflict, HostUnfit, Inventory, InventoryError, NoFreeHost, migrate
from tests.cloudstack.inventory_fixtures import SIZES, make_inventory


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture
def inv(url):
    inventory = make_inventory(url)
    yield inventory
    inventory.dispose()


def test_the_smallest_free_host_that_fits_is_claimed(inv):
    h = inv.claims.claim("vm-a", vm_name="a", min_cpus=8, min_memory_mb=16000)
    assert h.name == "host-002"  # 8 CPUs / 16 GB: smallest, then by name
    assert inv.claims.claim("vm-b", min_cpus=8, min_memory_mb=16000).name == "host-005"
    assert inv.claims.claim("vm-c", min_cpus=16, min_memory_mb=40000).name == "host-003"
    claim = inv.claims.for_vm("vm-a")
    assert claim.host == "host-002" and claim.vm_name == "a" and claim.claimed_at.tzinfo is not None


def test_a_claim_is_idempotent_per_vm(inv):
    first = inv.claims.claim("vm-a", min_cpus=1)
    assert inv.claims.claim("vm-a", min_cpus=1).name == first.name
    assert [c.vm_uuid for c in inv.claims.all()] == ["vm-a"]


def test_hosts_that_are_not_free_are_skipped_and_counted(inv):
    inv.hosts.set_last_vm("host-002", "vm-old", "old")
    inv.power.set_maintenance("host-005", True, "broken fan")
    inv.power.record("host-004", "unknown", error="BMC silent")
    inv.claims.claim("vm-a", host="host-003")
    assert inv.claims.claim("vm-b").name == "host-001"
    with pytest.raises(NoFreeHost) as err:
        inv.claims.claim("vm-c")
    text = str(err.value)
    assert "5 hosts" in text and "2 claimed" in text and "1 carrying a VM" in text
    assert "1 in maintenance" in text and "1 power state unknown" in text


def test_nothing_fits_says_so(inv):
    with pytest.raises(NoFreeHost, match="no free host fits 64 CPUs and 1024 MB .*5 too small"):
        inv.claims.claim("vm-a", min_cpus=64, min_memory_mb=1024)


def test_unregistered_hosts_are_not_picked(url):
    inv = make_inventory(url, registered=False)
    with pytest.raises(NoFreeHost, match="5 not registered in MAAS"):
        inv.claims.claim("vm-a")


def test_a_pinned_host_seed_model(inv):
    assert inv.claims.claim("vm-a", host="1003").name == "host-003"  # by CloudStack id too
    with pytest.raises(ClaimConflict, match="claimed by VM vm-a"):
        inv.claims.claim("vm-b", host="host-003")
    with pytest.raises(ClaimConflict, match="already holds host host-003"):
        inv.claims.claim("vm-a", host="host-004")
    inv.hosts.set_last_vm("host-004", "vm-x", "x")
    with pytest.raises(ClaimConflict, match="carries VM x"):
        inv.claims.claim("vm-c", host="host-004")


def test_a_vm_already_on_a_host_gets_that_host_back(inv):
    inv.hosts.set_last_vm("host-004", "vm-a", "a")
    assert inv.claims.claim("vm-a").name == "host-004"


def test_release_and_lookup(inv):
    inv.claims.claim("vm-a", host="host-001")
    assert inv.claims.host_for_vm("vm-a").name == "host-001"
    assert inv.claims.release("vm-a").host == "host-001"
    assert inv.claims.release("vm-a") is None
    assert inv.claims.host_for_vm("vm-a") is None
    inv.hosts.set_last_vm("host-002", "vm-a", "a")
    assert inv.claims.host_for_vm("vm-a").name == "host-002"  # no claim: the host that carries it


def test_removing_a_host_drops_its_claim(inv):
    inv.claims.claim("vm-a", host="host-001")
    assert inv.hosts.remove("host-001")
    assert inv.claims.for_vm("vm-a") is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vm_uuid": ""}, "vm_uuid"),
        ({"vm_uuid": "x" * 65}, "vm_uuid"),
        ({"vm_uuid": "a", "min_cpus": -1}, "min_cpus"),
        ({"vm_uuid": "a", "min_memory_mb": True}, "min_memory_mb"),
        ({"vm_uuid": "a", "vm_name": ""}, "vm_name"),
    ],
)
def test_bad_claims(inv, kwargs, field):
    with pytest.raises(InventoryError) as err:
        inv.claims.claim(**kwargs)
    assert err.value.field == field


def test_concurrent_claims_from_threads_never_share_a_host(inv):
    got, errors = {}, []
    barrier = threading.Barrier(6)

    def claim(i: int) -> None:
        barrier.wait()
        try:
            got[i] = inv.claims.claim(f"vm-{i}").name
        except NoFreeHost as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got.values()) == sorted(SIZES) and len(errors) == 1


def _claim_in_process(url: str, vm: str, barrier, out) -> None:
    from metalflow.integrations.inventory import Inventory

    inv = Inventory(url)
    barrier.wait()
    try:
        out.put((vm, inv.claims.claim(vm).name))
    except NoFreeHost:
        out.put((vm, None))
    finally:
        inv.dispose()


def test_concurrent_claims_from_processes_never_share_a_host(inv, url):
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    for i, name in enumerate(("host-001", "host-002", "host-003")):
        inv.claims.claim(f"vm-pre{i}", host=name)
    procs = [ctx.Process(target=_claim_in_process, args=(url, f"vm-{i}", barrier, out)) for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    hosts = [h for _, h in results if h is not None]
    assert sorted(hosts) == ["host-004", "host-005"] and len(results) == 3


def test_the_claims_migration_goes_both_ways(url):
    from alembic import command

    migrate.upgrade(url)
    command.downgrade(migrate.alembic_config(url), "0001")
    assert migrate.current_revision(url) == "0001"
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision() == "0006" and migrate.drift(url) == []


def test_claims_made_before_leases_read_back_as_placements(url):
    """0003 on a database holding a 0002 claim: the claim is a placement (never expires)."""
    from alembic import command
    from sqlalchemy import create_engine, text

    make_inventory(url).dispose()  # at head, with hosts
    command.downgrade(migrate.alembic_config(url), "0002")
    engine = create_engine(url)
    with engine.begin() as c:
        host_id = c.execute(text("SELECT id FROM hosts WHERE name = 'host-001'")).scalar_one()
        c.execute(
            text("INSERT INTO host_claims (host_id, vm_uuid, vm_name, claimed_at) VALUES (:h, 'vm-old', 'old', :t)"),
            {"h": host_id, "t": "2026-11-30 10:00:00"},
        )
    engine.dispose()
    migrate.upgrade(url)
    inv = Inventory(url)
    try:
        (claim,) = inv.claims.all()
        assert claim.vm_uuid == "vm-old" and claim.state == "placed" and claim.expires_at is None
        assert inv.claims.reap(lambda c: False, now=claim.claimed_at + timedelta(days=365)) == []
    finally:
        inv.dispose()


# --- leases (issue 17) ------------------------------------------------------------------------


def test_a_lease_expires_and_is_reaped_unless_its_run_lives(inv):
    inv.claims.claim("vm-a", vm_name="a", lease_seconds=60)
    inv.claims.claim("vm-b", vm_name="b", lease_seconds=60)
    a = inv.claims.for_vm("vm-a")
    assert a.state == "leased" and a.expires_at is not None
    assert inv.claims.reap(lambda c: False, now=a.claimed_at + timedelta(seconds=30)) == []  # not expired yet
    later = a.expires_at + timedelta(seconds=1)
    live = {"vm-b"}
    released = inv.claims.reap(lambda c: c.vm_uuid in live, now=later)
    assert [c.vm_uuid for c in released] == ["vm-a"]
    assert inv.claims.for_vm("vm-a") is None and inv.claims.for_vm("vm-b") is not None
    (line,) = inv.history.events(a.host, operation="claims")
    assert line.step == "lease expired" and "vm-a" in line.detail
    # the host is free again: the next claim may get it
    assert inv.claims.claim("vm-c", host=a.host).name == a.host


def test_prepare_again_renews_a_lease_and_begin_then_placement_stop_the_clock(inv):
    inv.claims.claim("vm-a", lease_seconds=60)
    first = inv.claims.for_vm("vm-a").expires_at
    inv.claims.claim("vm-a", lease_seconds=600)
    assert inv.claims.for_vm("vm-a").expires_at > first + timedelta(seconds=500)
    began = inv.claims.begin("vm-a", lease_seconds=120)
    assert began.state == "provisioning" and began.expires_at is not None
    host = began.host
    inv.hosts.set_last_vm(host, "vm-a", "a")  # the provision completed: a placement
    placed = inv.claims.for_vm("vm-a")
    assert placed.state == "placed" and placed.expires_at is None
    assert inv.claims.begin("vm-a", lease_seconds=5).state == "placed"  # a placement stays one
    assert inv.claims.reap(lambda c: False, now=placed.claimed_at + timedelta(days=30)) == []


def test_an_installed_vm_is_never_reaped_even_when_its_claim_was_not_placed(inv):
    inv.claims.claim("vm-a", host="host-001", lease_seconds=1)
    claim = inv.claims.for_vm("vm-a")
    # the host carries the VM (recorded by an older path that did not place the claim)
    from metalflow.integrations.inventory.models import Host

    inv.db.write(lambda s: s.query(Host).filter(Host.name == "host-001").update({"last_vm_uuid": "vm-a"}))
    assert inv.claims.reap(lambda c: False, now=claim.expires_at + timedelta(seconds=5)) == []
    assert inv.claims.for_vm("vm-a") is not None


def test_a_named_host_is_checked_for_fitness_when_asked(inv):
    inv.power.set_maintenance("host-005", True, "fan noise, see ticket 42")
    with pytest.raises(HostUnfit) as err:
        inv.claims.claim("vm-a", host="host-005", fit=True)
    assert err.value.why == "in maintenance" and "ticket 42" in str(err.value)
    with pytest.raises(HostUnfit) as err:
        inv.claims.claim("vm-a", host="host-001", fit=True, min_cpus=512)
    assert err.value.why == "too small"
    assert inv.claims.for_vm("vm-a") is None  # nothing claimed
    assert inv.claims.claim("vm-a", host="host-005").name == "host-005"  # without fit: the seed model


def test_lease_seconds_must_be_positive(inv):
    for bad in (0, -5, True, "60"):
        with pytest.raises(InventoryError, match="lease_seconds"):
            inv.claims.claim("vm-a", lease_seconds=bad)
