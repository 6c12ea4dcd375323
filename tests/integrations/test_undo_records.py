"""A run's undo stack in the inventory (issue 18): written before each change, marked as the
rollback goes, gone when the run completed or its rollback finished; a host with records left
is not handed out by a claim. Real SQLite, the Runbook with inline steps."""

from __future__ import annotations

import pytest

from metalflow.flows.runbook import RolledBack, Runbook
from metalflow.integrations.inventory import HostUnfit, InventoryError, NoFreeHost
from tests.cloudstack.inventory_fixtures import make_inventory


@pytest.fixture
def inv(tmp_path, monkeypatch):
    inventory = make_inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
    monkeypatch.setattr("metalflow.tasks.clients.inventory", lambda: inventory)
    monkeypatch.setattr("metalflow.flows.runbook.Report.publish", lambda self: None)
    yield inventory
    inventory.dispose()


def test_records_are_written_before_the_change_and_kept_while_the_run_lives(inv):
    undone = []
    host = inv.hosts.get("host-002")
    monkey_actions = {"power-off": lambda rb, h, p: undone.append(("power-off", h.name)) or "off"}
    rb = Runbook("provision", "host-002", "web-01", inline=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("metalflow.flows.undo.ACTIONS", monkey_actions)
        rb.undo_action("power off", "power-off", host)
        (record,) = inv.undos.left("host-002")
        assert (record.run_id, record.seq, record.action, record.state) == (rb.run_id, 0, "power-off", "pending")
        assert record.run_id.startswith("local-")  # no flow run here
        rb.undo_action("power off", "power-off", host)  # registered twice: one record
        assert len(inv.undos.left()) == 1
        # the host is not handed out while it has records (a run that died left it half-done)
        with pytest.raises(NoFreeHost, match="1 needs recovery"):
            _claim_only(inv, "host-002")
        with pytest.raises(HostUnfit, match="half-done") as err:
            inv.claims.claim("vm-y", host="host-002", fit=True)
        assert err.value.why == "needs recovery"


def _claim_only(inv, name):
    """Claim with every other host taken, so the answer counts why ``name`` was not picked."""
    for i, other in enumerate(h.name for h in inv.hosts.all() if h.name != name):
        inv.claims.claim(f"vm-other-{i}", host=other)
    return inv.claims.claim("vm-z")


def test_a_completed_run_clears_its_records(inv):
    host = inv.hosts.get("host-001")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("metalflow.flows.undo.ACTIONS", {"rename": lambda rb, h, p: "renamed"})
        with Runbook("provision", "host-001", inline=True) as rb:
            rb.undo_action("rename back", "rename", host, name="HOST-1001")
            assert len(inv.undos.left("host-001")) == 1
    assert inv.undos.left() == []


def test_a_rollback_marks_each_record_and_keeps_only_what_failed(inv):
    host = inv.hosts.get("host-003")

    def fails(rb, h, p):
        raise ConnectionError("BMC silent")

    actions = {"power-off": fails, "rename": lambda rb, h, p: "renamed", "ports": lambda rb, h, p: "pxe"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("metalflow.flows.undo.ACTIONS", actions)
        with pytest.raises(RolledBack, match="ROLLBACK INCOMPLETE: power off failed"):
            with Runbook("provision", "host-003", inline=True) as rb:
                rb.undo_action("rename back", "rename", host, name="HOST-1003")
                rb.undo_action("power off", "power-off", host)
                rb.undo_action("ports back", "ports", host, state="pxe")
                raise RuntimeError("MAAS said no")
    (left,) = inv.undos.left("host-003")
    assert (left.label, left.state) == ("power off", "failed") and "BMC silent" in left.detail
    assert left.params == {}


def test_a_full_rollback_leaves_nothing(inv):
    host = inv.hosts.get("host-004")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("metalflow.flows.undo.ACTIONS", {"power-off": lambda rb, h, p: "off"})
        with pytest.raises(RolledBack, match="rolled back \\(1 step undone\\)"):
            with Runbook("provision", "host-004", inline=True) as rb:
                rb.undo_action("power off", "power-off", host)
                raise RuntimeError("boom")
    assert inv.undos.left() == []


def test_unknown_actions_and_bad_records_are_refused(inv):
    rb = Runbook("provision", "host-001", inline=True)
    with pytest.raises(ValueError, match="no undo action 'explode'"):
        rb.undo_action("x", "explode", inv.hosts.get("host-001"))
    with pytest.raises(InventoryError, match="params"):
        inv.undos.push("host-001", "run-1", "provision", 0, "big", "rename", {"name": "x" * 5000})
    with pytest.raises(InventoryError, match="run_id"):
        inv.undos.push("host-001", "", "provision", 0, "l", "rename", {})


def test_the_host_locks_runs_hold_are_recorded_until_released(inv):
    """The lease id of a host lock (only the process that took it knows it; Prefect lists no
    leases) is written down when taken and gone when released, so recovery can release the lock
    of a run that died."""
    inv.leases.held("run-a", "host-host-002", "lease-1")
    inv.leases.held("run-a", "host-host-002", "lease-1")  # idempotent
    inv.leases.held("run-b", "host-host-003", "lease-2")
    assert [(x.run_id, x.limit_name, x.lease_id) for x in inv.leases.of_runs()] == [
        ("run-a", "host-host-002", "lease-1"),
        ("run-b", "host-host-003", "lease-2"),
    ]
    assert [x.lease_id for x in inv.leases.of_runs(["run-b"])] == ["lease-2"]
    inv.leases.released("lease-1")
    inv.leases.released("lease-1")  # already gone: no error
    assert [x.lease_id for x in inv.leases.of_runs()] == ["lease-2"]
    with pytest.raises(InventoryError, match="lease_id"):
        inv.leases.held("run-c", "host-host-002", "x" * 65)
    with pytest.raises(InventoryError, match="run_id"):
        inv.leases.held("", "host-host-002", "lease-3")


def test_who_made_a_vlan_definition_is_recorded_once(inv):
    """``found`` (an operator's) or ``made`` (created by metalflow's port change): a recorded
    origin never changes, so an operator's VLAN is never taken for metalflow's litter."""
    switch = inv.ports.list_switches()[0].name
    assert inv.ports.vlan_origins(switch) == {}
    inv.ports.record_vlans(switch, found=[10, 300], made=[])
    inv.ports.record_vlans(switch, found=[], made=[140, 300])  # 300 stays found
    inv.ports.record_vlans(switch, found=[140])  # 140 stays made
    assert inv.ports.vlan_origins(switch) == {10: "found", 300: "found", 140: "made"}
    with pytest.raises(InventoryError, match="switch"):
        inv.ports.record_vlans("no-such-switch", made=[5])
