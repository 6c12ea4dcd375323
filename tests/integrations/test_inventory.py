"""The inventory on real SQLite files: migrations, import, power rules, desired VLANs, the
journal and concurrent writers (threads and processes) that must not lose updates."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text

from metalflow.integrations.common.values import SecretRef, parse_secret_ref
from metalflow.integrations.config import RackConfig, load_rack_config
from metalflow.integrations.inventory import (
    DesiredVlan,
    HostNotFound,
    HostRecord,
    Inventory,
    InventoryError,
    PowerReading,
    clean_detail,
    migrate,
)
from metalflow.integrations.inventory.hosts import host_row
from metalflow.lab.spec import generate

UTC = UTC
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def records_for(spec) -> list[HostRecord]:
    return [
        HostRecord(
            name=h.name,
            cloudstack_id=h.cloudstack_id,
            ipmi_address=h.bmc.address,
            ipmi_port=h.bmc.port,
            ipmi_username=h.bmc.username,
            ipmi_credential_ref=f"block:ipmi-{h.name}",
            macs=h.macs,
            cpu_count=h.cpu_count,
            memory_mb=h.memory_mb,
        )
        for h in spec.hosts
    ]


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'inventory.db'}"


@pytest.fixture
def inv(url):
    inventory = Inventory(url)
    inventory.upgrade()
    yield inventory
    inventory.dispose()


@pytest.fixture(scope="module")
def spec():
    # 6 hosts on 2 switches (Force10 and Cisco IOS); hosts 3 and 4 have two cabled NICs.
    return generate(hosts=6, switches=2, seed_secrets="inventory-tests", privileged=True)


@pytest.fixture
def loaded(inv, spec):
    inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records_for(spec))
    return inv


# ---------------------------------------------------------------- repositories


def test_the_repositories_share_one_database(loaded):
    """Inventory is the composition of its repositories over one Database: a write through
    one repository is what every other one reads next."""
    assert {repo.db for repo in (loaded.hosts, loaded.ports, loaded.power, loaded.history, loaded.claims)} == {
        loaded.db
    }
    loaded.ports.set_desired_vlan("host-001", 200)
    assert [v.vlan for v in loaded.ports.desired_vlans("host-001")] == [200]
    line = loaded.history.append("host-001", "provision", "run-1", "deploy", "maas", "ok", "x")
    assert loaded.history.events("host-001") == [line]
    assert loaded.power.record("host-001", "on").state == "on"
    assert loaded.hosts.get("host-001").power_state == "on"
    assert loaded.claims.claim("vm-1", vm_name="web-01", host="host-002").name == "host-002"
    assert loaded.claims.host_for_vm("vm-1") == loaded.hosts.get("host-002")
    assert not hasattr(loaded, "get_host"), "callers name the repository: inv.hosts.get(...)"


# ---------------------------------------------------------------- migrations and engine


def test_migrations_create_the_schema_on_a_fresh_file(tmp_path, url):
    migrate.upgrade(url)
    assert (tmp_path / "inventory.db").exists()
    assert migrate.current_revision(url) == migrate.head_revision()
    inv = Inventory(url)
    try:
        tables = set(inspect(inv.engine).get_table_names())
        assert {"switches", "hosts", "host_nics", "port_vlans", "host_events", "alembic_version"} <= tables
    finally:
        inv.dispose()
    migrate.upgrade(url)  # at head already: nothing to do, no error
    assert migrate.current_revision(url) == migrate.head_revision()


def test_models_and_migrations_do_not_drift(url):
    migrate.upgrade(url)
    assert migrate.drift(url) == []
    # The comparison is not vacuous: a schema that differs from the models is reported.
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    con.execute("DROP INDEX ix_host_nics_host_id")
    con.commit()
    con.close()
    assert any("ix_host_nics_host_id" in repr(d) for d in migrate.drift(url))


def test_migrations_render_for_postgresql():
    """No database needed: alembic's offline mode writes the PostgreSQL DDL, which shows the
    migrations use nothing SQLite-only."""
    import io

    from alembic import command

    cfg = migrate.alembic_config("postgresql://metalflow@db.invalid/metalflow")
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, "head", sql=True)
    ddl = cfg.output_buffer.getvalue()
    assert "CREATE TABLE hosts" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl
    assert "is_boot BOOLEAN DEFAULT false NOT NULL" in ddl
    assert "PRAGMA" not in ddl and "AUTOINCREMENT" not in ddl


def test_each_connection_gets_wal_busy_timeout_and_foreign_keys(inv):
    inv.upgrade()  # turns foreign keys off while it migrates: they must be back on after
    with inv.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_default_url_follows_metalflow_home_and_the_override(tmp_path, monkeypatch):
    monkeypatch.delenv("METALFLOW_INVENTORY_URL", raising=False)
    monkeypatch.setenv("METALFLOW_HOME", str(tmp_path / "home"))
    inv = Inventory()
    try:
        assert inv.url == f"sqlite:///{tmp_path / 'home' / 'inventory.db'}"
        inv.upgrade()
        assert (tmp_path / "home" / "inventory.db").exists()
    finally:
        inv.dispose()
    monkeypatch.setenv("METALFLOW_INVENTORY_URL", f"sqlite:///{tmp_path / 'other.db'}")
    assert Inventory().url.endswith("other.db")


# ---------------------------------------------------------------- import


def test_import_is_idempotent(inv, spec):
    rack = load_rack_config(spec.rack_config())
    records = records_for(spec)
    first = inv.hosts.import_rack_config(rack, records)
    nics = sum(len(h.nics) for h in spec.hosts)
    assert (first.switches_added, first.hosts_added, first.nics_added) == (2, 6, nics)
    assert first.changes == 2 + 6 + nics
    assert first.switch_credential_refs == (
        ("tor-1", "env:METALFLOW_SWITCH_TOR_1_PASSWORD"),
        ("tor-2", "env:METALFLOW_SWITCH_TOR_2_PASSWORD"),
    )
    versions = {h.name: h.version for h in inv.hosts.all()}

    second = inv.hosts.import_rack_config(rack, records)
    assert second.changes == 0 and second.details == ()
    assert {h.name: h.version for h in inv.hosts.all()} == versions  # no row was rewritten

    host = inv.hosts.get("host-003")
    assert host.cloudstack_id == "1003" and host.boot_mac == spec.host("host-003").boot_mac
    assert [(n.mac, n.switch, n.port, n.is_boot) for n in host.nics] == [
        (n.mac, n.switch, n.port, i == 0) for i, n in enumerate(spec.host("host-003").nics)
    ]
    assert [s.type for s in inv.ports.list_switches()] == ["Force10", "CiscoIOS"]


def test_import_updates_a_changed_field(loaded, spec):
    rack = load_rack_config(spec.rack_config())
    records = records_for(spec)
    records[1] = replace(records[1], memory_mb=131072, ipmi_port=6230)
    summary = loaded.hosts.import_rack_config(rack, records, pxe_vlan=10)
    assert (summary.hosts_updated, summary.switches_updated, summary.changes) == (1, 2, 3)
    assert "host host-002: memory_mb 65536 -> 131072" in summary.details
    host = loaded.hosts.get("host-002")
    assert (host.memory_mb, host.ipmi_port, host.version) == (131072, 6230, 2)
    assert {s.pxe_vlan for s in loaded.ports.list_switches()} == {10}
    assert loaded.hosts.import_rack_config(rack, records).changes == 0  # pxe_vlan=None keeps it


def test_import_recables_nics_from_the_rack_config(loaded, spec):
    rack = load_rack_config(spec.rack_config())
    # Swap the ports of host-001's and host-003's boot NICs on tor-1, and drop host-003's
    # second NIC from the rack config.
    sw0 = rack.racks[0]
    h = list(sw0.hosts)
    a, b = h[0], h[1]
    assert (a.mac, b.mac) == (spec.host("host-001").boot_mac, spec.host("host-003").boot_mac)
    h[0], h[1] = replace(a, port=b.port), replace(b, port=a.port)
    dropped = next(c for c in h if c.mac == spec.host("host-003").nics[1].mac)
    h.remove(dropped)
    new_rack = RackConfig((replace(sw0, hosts=tuple(h)),) + rack.racks[1:])
    summary = loaded.hosts.import_rack_config(new_rack, records_for(spec))
    assert summary.nics_updated == 3 and summary.changes == 3
    assert f"NIC {dropped.mac}: uncabled (not in the rack config)" in summary.details
    assert loaded.hosts.get("host-001").nics[0].port == b.port
    assert [(p.switch.name, p.port) for p in loaded.ports.cabled_ports("host-003")] == [("tor-1", a.port)]
    assert loaded.hosts.import_rack_config(new_rack, records_for(spec)).changes == 0


def test_import_moves_and_removes_nics(loaded, spec):
    rack = load_rack_config(spec.rack_config())
    records = records_for(spec)
    moving = records[2].macs[1]  # host-003's second NIC now belongs to host-001
    records[0] = replace(records[0], macs=records[0].macs + (moving,))
    records[2] = replace(records[2], macs=records[2].macs[:1])
    summary = loaded.hosts.import_rack_config(rack, records)
    assert (summary.nics_updated, summary.nics_removed, summary.nics_added) == (1, 0, 0)
    assert moving in [n.mac for n in loaded.hosts.get("host-001").nics]
    records[0] = replace(records[0], macs=records[0].macs[:1])
    summary = loaded.hosts.import_rack_config(rack, records)
    assert summary.nics_removed == 1 and summary.unclaimed_macs == (moving,)


def test_import_names_switches_and_refs_as_asked(inv, spec):
    rack = load_rack_config(spec.rack_config())
    summary = inv.hosts.import_rack_config(
        rack,
        records_for(spec),
        switch_names={spec.switches[0].address: "rack-a"},
        switch_credential_ref="block:switch-{name}",
    )
    assert summary.switch_credential_refs == (("rack-a", "block:switch-rack-a"), ("tor-2", "block:switch-tor-2"))
    assert parse_secret_ref(inv.ports.get_switch("rack-a").credential_ref) == SecretRef("block", "switch-rack-a")


def test_passwords_never_reach_the_database(loaded, spec, url):
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        dump = "\n".join(con.iterdump())
    finally:
        con.close()
    for secret in [s.password for s in spec.switches] + [h.bmc.password for h in spec.hosts]:
        assert secret not in dump


@pytest.mark.parametrize(
    "change, field",
    [
        ({"name": "bad name"}, "hosts[1].name"),
        ({"name": "host-001"}, "hosts[1].name"),
        ({"cloudstack_id": 1001}, "hosts[1].cloudstack_id"),
        ({"cloudstack_id": "id with spaces"}, "hosts[1].cloudstack_id"),
        ({"ipmi_address": "999.1.1.1"}, "hosts[1].ipmi_address"),
        ({"ipmi_port": 0}, "hosts[1].ipmi_port"),
        ({"ipmi_username": ""}, "hosts[1].ipmi_username"),
        ({"ipmi_credential_ref": "hunter2"}, "hosts[1].ipmi_credential_ref"),
        ({"macs": ()}, "hosts[1].macs"),
        ({"macs": ("not-a-mac",)}, "hosts[1].macs[0]"),
        ({"cpu_count": 0}, "hosts[1].cpu_count"),
        ({"memory_mb": -1}, "hosts[1].memory_mb"),
        ({"arch": ""}, "hosts[1].arch"),
    ],
)
def test_bad_records_are_refused_before_anything_changes(inv, spec, change, field):
    records = records_for(spec)
    records[1] = replace(records[1], **change)
    with pytest.raises(InventoryError) as info:
        inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    assert info.value.field == field
    assert "hunter2" not in str(info.value)
    assert inv.hosts.all() == [] and inv.ports.list_switches() == []


def test_a_cloudstack_id_owned_by_another_host_is_refused(loaded, spec):
    extra = replace(records_for(spec)[0], name="host-new", macs=("02:ff:00:00:00:01",))
    with pytest.raises(InventoryError) as info:
        loaded.hosts.import_rack_config(load_rack_config(spec.rack_config()), [extra])
    assert info.value.field == "hosts[0].cloudstack_id" and "host-001" in str(info.value)


def test_lookup_by_name_or_cloudstack_id(loaded):
    assert loaded.hosts.get("host-002").name == "host-002"
    assert loaded.hosts.get(1002).name == "host-002"
    assert loaded.hosts.get("1002").name == "host-002"
    with pytest.raises(HostNotFound) as info:
        loaded.hosts.get("host-999")
    assert info.value.field == "host"
    assert loaded.hosts.find("host-999") is None
    assert loaded.hosts.remove("host-006") and not loaded.hosts.remove("host-006")
    assert len(loaded.hosts.all()) == 5


# ---------------------------------------------------------------- cabling and desired VLANs


def test_cabled_ports_boot_first(loaded, spec):
    ports = loaded.ports.cabled_ports("host-003")
    want = [(n.switch, n.port) for n in spec.host("host-003").nics]
    assert [(p.switch.name, p.port) for p in ports] == want
    switch, port = ports[0]  # unpacks as a pair
    assert switch.credential_ref.startswith("env:") and port == want[0][1]


def test_desired_vlans_set_and_clear_are_idempotent(loaded, spec):
    ports = [(n.switch, n.port) for n in spec.host("host-003").nics]
    assert loaded.ports.set_desired_vlan("host-003", 10, purpose="pxe") == 2
    assert loaded.ports.set_desired_vlan("host-003", 10, purpose="pxe") == 0
    assert [
        (v.switch, v.port, v.vlan, v.tagged, v.purpose, v.host) for v in loaded.ports.desired_vlans("host-003")
    ] == [(sw, p, 10, False, "pxe", "host-003") for sw, p in sorted(ports)]
    # One untagged VLAN per port: the guest VLAN needs the PXE VLAN gone first.
    with pytest.raises(InventoryError) as info:
        loaded.ports.set_desired_vlan("host-003", 200, purpose="guest")
    assert info.value.field == "vlan" and "untagged VLAN 10" in str(info.value)
    assert loaded.ports.clear_desired_vlan("host-003", 10) == 2
    assert loaded.ports.clear_desired_vlan("host-003", 10) == 0
    assert loaded.ports.set_desired_vlan("host-003", 200, purpose="guest") == 2
    assert loaded.ports.set_desired_vlan("host-003", 300, purpose="extra", ports=[ports[1]]) == 1
    vlans = {(v.port, v.vlan): v.tagged for v in loaded.ports.desired_vlans("host-003")}
    assert vlans == {(ports[0][1], 200): False, (ports[1][1], 200): False, (ports[1][1], 300): True}
    assert {(v.port, v.vlan) for v in loaded.ports.switch_vlans("tor-1")} == set(vlans)
    assert loaded.ports.clear_desired_vlan("host-003", purpose="extra") == 1
    assert loaded.ports.clear_desired_vlan("host-003") == 2
    assert loaded.ports.desired_vlans("host-003") == []


def test_replacing_desired_vlans_is_one_transaction(loaded, spec):
    """What want-ports does: forget the host's VLANs and record the new set at once. The plan
    sees the cabled ports; a set the inventory refuses leaves the old one in place."""
    ports = [(n.switch, n.port) for n in spec.host("host-003").nics]
    loaded.ports.set_desired_vlan("host-003", 10, purpose="pxe")
    seen = []

    def to_guest(cabled):
        seen.append([(p.switch.name, p.port) for p in cabled])
        return [DesiredVlan(200, "guest"), DesiredVlan(300, "extra", ports=[ports[1]])]

    got_ports, desired = loaded.ports.replace_desired_vlans("host-003", to_guest)
    assert seen[-1] == ports and [(p.switch.name, p.port) for p in got_ports] == ports
    want = {(ports[0][1], 200, False, "guest"), (ports[1][1], 200, False, "guest"), (ports[1][1], 300, True, "extra")}
    assert {(v.port, v.vlan, v.tagged, v.purpose) for v in desired} == want
    assert {(v.port, v.vlan, v.tagged, v.purpose) for v in loaded.ports.desired_vlans("host-003")} == want

    # Two untagged VLANs on one port: refused, and the guest set above is still recorded.
    with pytest.raises(InventoryError) as info:
        loaded.ports.replace_desired_vlans("host-003", lambda cabled: [DesiredVlan(11, "pxe"), DesiredVlan(12, "pxe")])
    assert info.value.field == "vlan" and "untagged VLAN 11" in str(info.value)
    assert {(v.port, v.vlan, v.tagged, v.purpose) for v in loaded.ports.desired_vlans("host-003")} == want
    # A plan that fails before anything is written changes nothing either.
    with pytest.raises(InventoryError) as info:
        loaded.ports.replace_desired_vlans("host-003", lambda cabled: [DesiredVlan(5000, "guest")])
    assert info.value.field == "vlan"
    assert {(v.port, v.vlan, v.tagged, v.purpose) for v in loaded.ports.desired_vlans("host-003")} == want
    _, desired = loaded.ports.replace_desired_vlans("host-003", lambda cabled: [])
    assert desired == [] == loaded.ports.desired_vlans("host-003")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"vlan": 0}, "vlan"),
        ({"vlan": 4095}, "vlan"),
        ({"vlan": 10, "purpose": "storage"}, "purpose"),
        ({"vlan": 10, "ports": [("tor-2", "GigabitEthernet1/0/1")]}, "ports[0]"),
    ],
)
def test_desired_vlan_bad_input(loaded, kwargs, field):
    with pytest.raises(InventoryError) as info:
        loaded.ports.set_desired_vlan("host-001", **kwargs)
    assert info.value.field == field


# ---------------------------------------------------------------- power and maintenance


def test_three_failures_put_a_host_in_maintenance_and_a_success_takes_it_out(loaded):
    for i in range(2):
        t = loaded.power.record("host-001", "unknown", T0 + timedelta(minutes=i), error="BMC timeout")
        assert not t.maintenance and t.poll_failures == i + 1
    t = loaded.power.record("host-001", "unknown", T0 + timedelta(minutes=2), error="BMC timeout")
    assert t.entered_maintenance and t.maintenance and t.poll_failures == 3
    host = loaded.hosts.get("host-001")
    assert host.maintenance_source == "poll" and "3 times" in host.maintenance_reason
    assert host.last_poll_error == "BMC timeout" and host.power_state == "unknown"

    t = loaded.power.record("host-001", "on", T0 + timedelta(minutes=3))
    assert t.left_maintenance and not t.maintenance and t.changed and t.previous == "unknown"
    host = loaded.hosts.get("host-001")
    assert (host.power_state, host.poll_failures, host.last_poll_error, host.maintenance_reason) == (
        "on",
        0,
        None,
        None,
    )
    assert host.power_state_at == T0 + timedelta(minutes=3)
    steps = [(e.step, e.detail.split(":")[0]) for e in loaded.history.events("host-001")]
    assert steps == [("maintenance", "left maintenance"), ("maintenance", "entered maintenance")]


def test_a_success_between_failures_resets_the_count(loaded):
    for i, error in enumerate(["x", "x", None, "x", "x"]):
        state = "unknown" if error else "off"
        t = loaded.power.record("host-001", state, T0 + timedelta(minutes=i), error=error)
    assert t.poll_failures == 2 and not t.maintenance


def test_operator_maintenance_survives_a_successful_poll(loaded):
    loaded.power.set_maintenance("host-002", True, "replacing a DIMM")
    for i in range(4):
        loaded.power.record("host-002", "unknown", T0 + timedelta(minutes=i), error="no answer")
    t = loaded.power.record("host-002", "off", T0 + timedelta(minutes=5))
    assert t.maintenance and not t.left_maintenance
    host = loaded.hosts.get("host-002")
    assert (host.maintenance_source, host.maintenance_reason) == ("operator", "replacing a DIMM")
    assert not loaded.power.set_maintenance("host-002", False).maintenance
    with pytest.raises(InventoryError) as info:
        loaded.power.set_maintenance("host-002", True)
    assert info.value.field == "reason"


def test_a_stale_reading_is_ignored(loaded):
    loaded.power.record("host-001", "on", T0)
    t = loaded.power.record("host-001", "off", T0 - timedelta(seconds=1))
    assert t.stale and t.state == "on"
    assert loaded.hosts.get("host-001").power_state == "on"


@pytest.mark.parametrize(
    "state, at, error, field",
    [("standby", None, None, "state"), ("on", None, "timeout", "state"), ("on", datetime(2026, 1, 1), None, "at")],
)
def test_bad_power_readings(loaded, state, at, error, field):
    with pytest.raises(InventoryError) as info:
        loaded.power.record("host-001", state, at, error)
    assert info.value.field == field


@pytest.mark.parametrize(
    "detail, want",
    [
        (
            "ipmitool -I lanplus -H 10.0.0.1 -U admin -P hunter2 chassis power status failed",
            "ipmitool -I lanplus -H 10.0.0.1 -U admin -P *** chassis power status failed",
        ),
        ("login failed: password=hunter2, user=admin", "login failed: password=***, user=admin"),
        ("MaasIP=10.0.0.5;MaasSecret=hunter2;MaasKey=abc", "MaasIP=10.0.0.5;MaasSecret=***;MaasKey=***"),
        ('{"api_key": "c:t:hunter2"}', '{"api_key": ***}'),
        ({"address": "10.0.0.1", "password": "hunter2"}, "address=10.0.0.1, password=***"),
        ("power is on", "power is on"),
    ],
)
def test_details_and_poll_errors_are_masked(detail, want):
    assert clean_detail(detail) == want


def test_a_poll_error_is_stored_masked(loaded):
    loaded.power.record("host-001", "unknown", error="auth failed with password=hunter2")
    assert loaded.hosts.get("host-001").last_poll_error == "auth failed with password=***"


def test_bulk_power_record_of_2000_hosts(inv):
    spec = generate(hosts=2000, switches=40, nics_per_host=1, seed_secrets="bulk", privileged=True)
    inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records_for(spec))
    names = [h.name for h in spec.hosts]
    failing = set(names[:25])
    for minute in range(3):
        readings = [
            PowerReading(n, "unknown", T0 + timedelta(minutes=minute), error="timeout")
            if n in failing
            else PowerReading(n, "on" if i % 2 else "off", T0 + timedelta(minutes=minute))
            for i, n in enumerate(names)
        ]
        result = inv.power.record_bulk(readings + [PowerReading("host-gone", "on")], run_id=f"run-{minute}")
        assert len(result.transitions) == 2000 and result.unknown_hosts == ("host-gone",)
    assert set(result.entered_maintenance) == failing
    hosts = {h.name: h for h in inv.hosts.all()}
    assert {n for n, h in hosts.items() if h.maintenance} == failing
    assert hosts[names[100]].power_state == "off" and hosts[names[101]].power_state == "on"
    result = inv.power.record_bulk([PowerReading(n, "on", T0 + timedelta(minutes=9)) for n in names])
    assert set(result.left_maintenance) == failing and inv.hosts.all(maintenance=True) == []
    assert inv.history.events(names[0], run_id="run-2")[0].step == "maintenance"


# ---------------------------------------------------------------- bookkeeping and journal


def test_maas_system_id_and_last_vm(loaded):
    host = loaded.hosts.set_maas_system_id("host-001", "4y3h7n")
    assert host.maas_system_id == "4y3h7n"
    assert loaded.hosts.set_maas_system_id("host-001", "4y3h7n").version == host.version  # no-op
    with pytest.raises(InventoryError) as info:
        loaded.hosts.set_maas_system_id("host-002", "4y3h7n")  # unique: one machine, one host
    assert info.value.field == "system_id" and "host-001" in str(info.value)
    with pytest.raises(InventoryError) as info:
        loaded.hosts.set_maas_system_id("host-002", "Not An Id")
    assert info.value.field == "system_id"
    host = loaded.hosts.set_last_vm("host-001", "3f6e0c8e-1b6c-4c34-9d1c-0a3b2e4f5a6b", "vm-web-1")
    assert (host.last_vm_uuid, host.last_vm_name) == ("3f6e0c8e-1b6c-4c34-9d1c-0a3b2e4f5a6b", "vm-web-1")
    assert loaded.hosts.set_last_vm("host-001", None, None).last_vm_uuid is None


def test_journal(loaded):
    for i, (step, outcome) in enumerate([("set-pxe-vlan", "started"), ("set-pxe-vlan", "ok"), ("deploy", "failed")]):
        loaded.history.append("host-001", "provision", "run-1", step, "switch", outcome, at=T0 + timedelta(seconds=i))
    loaded.history.append(
        "host-001",
        "destroy",
        "run-2",
        "release",
        "maas",
        "ok",
        {"erase": "quick", "api_key": "c:t:s3cr3t"},
        at=T0 + timedelta(seconds=9),
    )
    loaded.history.append("host-002", "stop", None, "power-off", "ipmi", "skipped", "already off")
    events = loaded.history.events("host-001")
    assert [(e.operation, e.step, e.outcome) for e in events] == [
        ("destroy", "release", "ok"),
        ("provision", "deploy", "failed"),
        ("provision", "set-pxe-vlan", "ok"),
        ("provision", "set-pxe-vlan", "started"),
    ]
    assert events[0].detail == "erase=quick, api_key=***" and events[0].at == T0 + timedelta(seconds=9)
    assert len(loaded.history.events("host-001", limit=2)) == 2
    assert [e.step for e in loaded.history.events("host-001", run_id="run-1", operation="provision")][
        -1
    ] == "set-pxe-vlan"
    assert len(loaded.history.append("host-001", "x", None, "y", "maas", "ok", "z" * 5000).detail) == 1000
    with pytest.raises(InventoryError) as info:
        loaded.history.append("host-001", "provision", "run-1", "deploy", "maas", "exploded")
    assert info.value.field == "outcome"
    with pytest.raises(HostNotFound):
        loaded.history.append("host-999", "provision", "run-1", "deploy", "maas", "ok")


def test_step_events_of_several_hosts_in_one_query(loaded):
    for host, run, step, outcome, sec in [
        ("host-001", "r1", "deploy-machine", "ok", 5),
        ("host-002", "r2", "deploy-machine", "started", 6),
        ("host-002", "r2", "deploy-machine", "ok", 7),
        ("host-001", "r0", "deploy-machine", "ok", -5),  # before since
        ("host-003", "r3", "rename-machine", "ok", 8),
    ]:
        loaded.history.append(host, "provision", run, step, "maas", outcome, at=T0 + timedelta(seconds=sec))
    got = loaded.history.step_events(
        ["host-002", "host-001", "host-003", "host-002"], "deploy-machine", outcome="ok", since=T0
    )
    assert [(e.host, e.run_id, e.at) for e in got] == [
        ("host-001", "r1", T0 + timedelta(seconds=5)),
        ("host-002", "r2", T0 + timedelta(seconds=7)),
    ]
    assert [e.outcome for e in loaded.history.step_events(["host-002"], "deploy-machine")] == ["started", "ok"]
    assert loaded.history.step_events([], "deploy-machine") == []
    with pytest.raises(InventoryError) as info:
        loaded.history.step_events(["host-001"], "deploy-machine", since=T0.replace(tzinfo=None))
    assert info.value.field == "since"


# ---------------------------------------------------------------- concurrency


def test_a_stale_version_is_retried_on_fresh_data(loaded):
    """The version column turns a write based on a stale read into StaleDataError, and the
    facade retries the whole read-modify-write. The concurrent writer is simulated by
    bumping the row's version behind the ORM's back."""
    attempts = []

    def bump(s):
        row = host_row(s, "host-001", lock=True)
        if not attempts:
            s.execute(text("UPDATE hosts SET version = version + 1 WHERE name = 'host-001'"))
        attempts.append(row.version)
        row.poll_failures += 1
        s.flush()
        return row.poll_failures

    assert loaded.db.write(bump) == 1
    assert attempts == [1, 1]  # the first attempt's bump was rolled back with it
    assert loaded.hosts.get("host-001").version == 2


def _record_failures(url: str, host: str, n: int, start) -> None:
    inv = Inventory(url, maintenance_after=10_000)
    try:
        start.wait(60)  # a barrier: both writers start together, after their imports
        for i in range(n):
            inv.power.record(host, "unknown", error=f"timeout {i}")
            inv.history.append(host, "power-poll", None, "read", "ipmi", "failed")
    finally:
        inv.dispose()


def test_two_threads_do_not_lose_updates(loaded):
    start = threading.Barrier(2)
    threads = [threading.Thread(target=_record_failures, args=(loaded.url, "host-001", 40, start)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert loaded.hosts.get("host-001").poll_failures == 80
    assert len(loaded.history.events("host-001", limit=1000)) == 80


def test_two_processes_do_not_lose_updates(loaded):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_record_failures, args=(loaded.url, "host-002", 40, start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    host = loaded.hosts.get("host-002")
    assert host.poll_failures == 80 and host.version == 81
    assert len(loaded.history.events("host-002", limit=1000)) == 80


# ---------------------------------------------------------------- import = what MAAS and the switches accept

TABLES = ("switches", "hosts", "host_nics", "port_vlans", "host_events", "host_claims")


def row_counts(url: str) -> dict[str, int]:
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


def dump(url: str) -> str:
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


@pytest.mark.parametrize(
    "name, hint",
    [
        ("host_3", "'_'"),
        ("h" * 64, "1 to 63 characters"),
        ("host-003\n", "whitespace"),
        (" host-003", "whitespace"),
        ("Host-003", "upper-case"),
        ("host-003.example", "FQDN"),
        ("-host", "dash"),
        ("h\u00f6st-1", "ASCII"),
        ("host-\u0661", "ASCII"),
        ("", "1 to 63 characters"),
    ],
)
def test_a_host_name_maas_would_refuse_is_refused_at_import_and_nothing_is_written(loaded, spec, url, name, hint):
    """MAAS refuses these as hostnames, after register-host has changed the switch; the
    import refuses them first, naming the field and the fix, and writes nothing (the other
    records' changes in the same import included)."""
    before, text = row_counts(url), dump(url)
    records = records_for(spec)
    records[0] = replace(records[0], memory_mb=999)  # a valid change that must not land either
    records.append(replace(records[1], name=name, cloudstack_id=None, macs=("02:ff:00:00:00:07",)))
    with pytest.raises(InventoryError) as info:
        loaded.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    assert info.value.field == f"hosts[{len(records) - 1}].name"
    assert hint in str(info.value) and "hostname" in str(info.value)
    if hint != "ASCII":
        assert "lower-case letters, digits and dashes" in str(info.value)  # the fix
    assert row_counts(url) == before and dump(url) == text
    assert loaded.hosts.get("host-001").memory_mb != 999


def test_every_bad_record_is_listed_and_the_63_character_name_is_taken(inv, spec):
    records = records_for(spec)
    records[0] = replace(records[0], name="x" * 63)
    records[1] = replace(records[1], name="host_2")
    records[2] = replace(records[2], name="HOST-3")
    with pytest.raises(InventoryError) as info:
        inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    assert "hosts[1].name" in str(info.value) and "hosts[2].name" in str(info.value)
    assert "hosts[0].name" not in str(info.value)
    assert inv.hosts.all() == []
    del records[1:3]
    inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    assert inv.hosts.get("x" * 63).name == "x" * 63


@pytest.mark.parametrize("pxe_vlan", [1, True, False, 0, 4095, -1, "10", 10.0])
def test_a_pxe_vlan_no_switch_would_accept_is_refused_and_nothing_is_written(loaded, spec, url, pxe_vlan):
    """VLAN 1 is every switch's default VLAN and True is not VLAN 1: both used to be stored
    and then refused by every switch at each provision."""
    loaded.hosts.import_rack_config(load_rack_config(spec.rack_config()), records_for(spec), pxe_vlan=10)
    before, text = row_counts(url), dump(url)
    with pytest.raises(InventoryError) as info:
        loaded.hosts.import_rack_config(load_rack_config(spec.rack_config()), records_for(spec), pxe_vlan=pxe_vlan)
    assert info.value.field == "pxe_vlan" and re.search(r"2(-| to )4094", str(info.value))
    assert row_counts(url) == before and dump(url) == text
    assert {s.pxe_vlan for s in loaded.ports.list_switches()} == {10}


def test_the_pxe_vlan_is_checked_by_every_dialect_in_the_rack(inv, spec):
    """Every switch of the lab rack (Force10 and Cisco IOS) is asked: the check is the
    dialects', so a dialect with a narrower range would refuse it here too."""
    from metalflow.integrations.switches import dialect_for

    rack = load_rack_config(spec.rack_config())
    assert {r.switch.type for r in rack.racks} == {"Force10", "CiscoIOS"}
    for r in rack.racks:
        assert dialect_for(r.switch.type).validate_vlan(4094) == 4094
    inv.hosts.import_rack_config(rack, records_for(spec), pxe_vlan=4094)
    assert {s.pxe_vlan for s in inv.ports.list_switches()} == {4094}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"cloudstack_id": "1001\n"}, "hosts[1].cloudstack_id"),
        ({"cloudstack_id": "\u0661\u0660\u0660\u0662"}, "hosts[1].cloudstack_id"),
        ({"cloudstack_id": True}, "hosts[1].cloudstack_id"),
        ({"ipmi_address": "127.0.0.1\n"}, "hosts[1].ipmi_address"),
        ({"ipmi_address": " 127.0.0.1"}, "hosts[1].ipmi_address"),
        ({"ipmi_port": "\u0666\u0662\u0663"}, "hosts[1].ipmi_port"),
        ({"ipmi_port": True}, "hosts[1].ipmi_port"),
        ({"ipmi_username": "admin\n"}, "hosts[1].ipmi_username"),
        ({"ipmi_credential_ref": "block:ipmi-host-002\n"}, "hosts[1].ipmi_credential_ref"),
        ({"ipmi_credential_ref": "env:IPMI PASS"}, "hosts[1].ipmi_credential_ref"),
        ({"macs": ("02:00:00:00:00:10\n",)}, "hosts[1].macs[0]"),
        ({"macs": ("01:00:5e:00:00:01",)}, "hosts[1].macs[0]"),
        ({"arch": "amd64/generic\n"}, "hosts[1].arch"),
    ],
)
def test_record_values_are_parsed_by_the_vocabulary(inv, spec, change, field):
    records = records_for(spec)
    records[1] = replace(records[1], **change)
    with pytest.raises(InventoryError) as info:
        inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    assert info.value.field == field
    assert inv.hosts.all() == [] and inv.ports.list_switches() == []


@pytest.mark.parametrize(
    "pasted", ["hunter2-Pasted-Here", "env:OK\nhunter2-Pasted-Here", "block:x#hunter2-Pasted-Here "]
)
def test_a_secret_pasted_as_a_credential_reference_is_never_echoed(inv, spec, url, pasted):
    records = records_for(spec)
    records[1] = replace(records[1], ipmi_credential_ref=pasted)
    with pytest.raises(InventoryError) as info:
        inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    assert info.value.field == "hosts[1].ipmi_credential_ref"
    assert "hunter2" not in str(info.value) and "hunter2" not in repr(info.value)
    assert "env:METALFLOW_IPMI_PASSWORD" in str(info.value)  # the fix: what a reference looks like
    assert "hunter2" not in dump(url)


@pytest.mark.parametrize("name", ["tor-1\n", "tor 1", "", "tor-\u0661"])
def test_a_bad_switch_name_is_refused_before_anything_is_written(inv, spec, name):
    with pytest.raises(InventoryError) as info:
        inv.hosts.import_rack_config(
            load_rack_config(spec.rack_config()), records_for(spec), switch_names={spec.switches[0].address: name}
        )
    assert info.value.field.startswith("switch_names[")
    assert inv.hosts.all() == [] and inv.ports.list_switches() == []


@pytest.mark.parametrize("vlan", [1, True, 0, 4095, "10"])
def test_desired_vlans_use_the_one_bound(vlan):
    with pytest.raises(InventoryError) as info:
        DesiredVlan(vlan)
    assert info.value.field == "vlan"
