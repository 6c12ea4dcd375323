"""``Inventory``: the inventory's repositories behind one database, the only way flows and
tasks touch it.

- ``hosts`` (``HostRepository``): import with the rack config, lookup, removal, MAAS and VM
  bookkeeping;
- ``ports`` (``PortRepository``): switches, cabled ports, desired VLANs;
- ``power`` (``PowerRepository``): power readings and maintenance;
- ``history`` (``JournalRepository``): the per-host journal;
- ``claims`` (``ClaimRepository``): placement claims.

Every method runs in its own short transaction (``session.Database``) and returns frozen
dataclasses. The methods of the one-object facade this used to be stay below as one-line
delegations until their callers use the repositories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from metalflow.integrations.config import RackConfig
from metalflow.integrations.inventory.claims import ClaimRepository
from metalflow.integrations.inventory.hosts import HostKey, HostRepository
from metalflow.integrations.inventory.importing import DEFAULT_SWITCH_CREDENTIAL_REF, CredentialRefSource
from metalflow.integrations.inventory.journal import JournalRepository
from metalflow.integrations.inventory.ports import PortRepository
from metalflow.integrations.inventory.power import MAINTENANCE_AFTER, PowerRepository
from metalflow.integrations.inventory.records import (
    BulkPowerResult,
    CabledPort,
    ClaimInfo,
    DesiredVlan,
    HostInfo,
    HostRecord,
    ImportSummary,
    InventoryError,
    JournalLine,
    PowerReading,
    PowerTransition,
    SwitchInfo,
    VlanInfo,
)
from metalflow.integrations.inventory.session import Database


class Inventory:
    """Hosts, switches, cabling, desired VLANs, power state, the journal and claims.

    ``url`` defaults to ``$METALFLOW_INVENTORY_URL`` or
    ``sqlite:///<$METALFLOW_HOME or ~/.metalflow>/inventory.db``. Call ``upgrade()`` once
    (it is cheap when the schema is current). One instance per process.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        maintenance_after: int = MAINTENANCE_AFTER,
        busy_timeout_ms: int = 30_000,
        write_deadline: float = 60.0,
        echo: bool = False,
    ):
        self.db = Database(url, busy_timeout_ms=busy_timeout_ms, write_deadline=write_deadline, echo=echo)
        self.url = self.db.url
        self.engine = self.db.engine
        self.write_deadline = write_deadline
        self.hosts = HostRepository(self.db)
        self.ports = PortRepository(self.db)
        self.power = PowerRepository(self.db, maintenance_after=maintenance_after)
        self.history = JournalRepository(self.db)
        self.claims = ClaimRepository(self.db)

    def __repr__(self) -> str:
        return f"Inventory({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def maintenance_after(self) -> int:
        return self.power.maintenance_after

    def upgrade(self, revision: str = "head") -> None:
        self.db.upgrade(revision)

    def dispose(self) -> None:
        self.db.dispose()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, committed on success (``Database.session``)."""
        with self.db.session(write=write) as s:
            yield s

    # ------------------------------------------------------------------ delegations (callers move to the repositories)

    def import_rack_config(
        self,
        rack: RackConfig,
        hosts: Sequence[HostRecord],
        *,
        switch_credential_ref: CredentialRefSource = DEFAULT_SWITCH_CREDENTIAL_REF,
        switch_names: Mapping[str, str] | None = None,
        pxe_vlan: int | None = None,
    ) -> ImportSummary:
        return self.hosts.import_rack_config(
            rack, hosts, switch_credential_ref=switch_credential_ref, switch_names=switch_names, pxe_vlan=pxe_vlan
        )

    def get_host(self, key: HostKey) -> HostInfo:
        return self.hosts.get(key)

    def find_host(self, key: HostKey) -> HostInfo | None:
        return self.hosts.find(key)

    def list_hosts(self, *, maintenance: bool | None = None) -> list[HostInfo]:
        return self.hosts.all(maintenance=maintenance)

    def remove_host(self, key: HostKey) -> bool:
        return self.hosts.remove(key)

    def set_maas_system_id(self, host: HostKey, system_id: str | None) -> HostInfo:
        return self.hosts.set_maas_system_id(host, system_id)

    def set_last_vm(self, host: HostKey, vm_uuid: str | None, vm_name: str | None) -> HostInfo:
        return self.hosts.set_last_vm(host, vm_uuid, vm_name)

    def list_switches(self) -> list[SwitchInfo]:
        return self.ports.list_switches()

    def get_switch(self, name: str) -> SwitchInfo:
        return self.ports.get_switch(name)

    def cabled_ports(self, host: HostKey) -> list[CabledPort]:
        return self.ports.cabled_ports(host)

    def desired_vlans(self, host: HostKey) -> list[VlanInfo]:
        return self.ports.desired_vlans(host)

    def switch_vlans(self, switch: str) -> list[VlanInfo]:
        return self.ports.switch_vlans(switch)

    def set_desired_vlan(
        self,
        host: HostKey,
        vlan: int,
        *,
        purpose: str = "guest",
        tagged: bool | None = None,
        ports: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        return self.ports.set_desired_vlan(host, vlan, purpose=purpose, tagged=tagged, ports=ports)

    def replace_desired_vlans(
        self, host: HostKey, plan: Callable[[list[CabledPort]], Sequence[DesiredVlan]]
    ) -> tuple[list[CabledPort], list[VlanInfo]]:
        return self.ports.replace_desired_vlans(host, plan)

    def clear_desired_vlan(
        self,
        host: HostKey,
        vlan: int | None = None,
        *,
        purpose: str | None = None,
        ports: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        return self.ports.clear_desired_vlan(host, vlan, purpose=purpose, ports=ports)

    def record_power(
        self,
        host: HostKey,
        state: str,
        at: datetime | None = None,
        error: str | None = None,
        *,
        run_id: str | None = None,
    ) -> PowerTransition:
        return self.power.record(host, state, at, error, run_id=run_id)

    def record_power_bulk(self, readings: Iterable[PowerReading], *, run_id: str | None = None) -> BulkPowerResult:
        return self.power.record_bulk(readings, run_id=run_id)

    def set_maintenance(self, host: HostKey, on: bool, reason: str | None = None) -> HostInfo:
        return self.power.set_maintenance(host, on, reason)

    def journal(
        self,
        host: HostKey,
        operation: str,
        run_id: str | None,
        step: str,
        system: str,
        outcome: str,
        detail: str | Mapping[str, Any] = "",
        *,
        at: datetime | None = None,
    ) -> JournalLine:
        return self.history.append(host, operation, run_id, step, system, outcome, detail, at=at)

    def journal_lines(self, lines: Sequence[JournalLine]) -> list[JournalLine | InventoryError]:
        return self.history.append_lines(lines)

    def events(
        self,
        host: HostKey,
        limit: int = 100,
        *,
        operation: str | None = None,
        run_id: str | None = None,
    ) -> list[JournalLine]:
        return self.history.events(host, limit, operation=operation, run_id=run_id)

    def step_events(
        self, hosts: Sequence[str], step: str, *, outcome: str | None = None, since: datetime | None = None
    ) -> list[JournalLine]:
        return self.history.step_events(hosts, step, outcome=outcome, since=since)

    def claim_host(
        self,
        vm_uuid: str,
        *,
        vm_name: str | None = None,
        host: HostKey | None = None,
        min_cpus: int = 0,
        min_memory_mb: int = 0,
    ) -> HostInfo:
        return self.claims.claim(vm_uuid, vm_name=vm_name, host=host, min_cpus=min_cpus, min_memory_mb=min_memory_mb)

    def release_claim(self, vm_uuid: str) -> ClaimInfo | None:
        return self.claims.release(vm_uuid)

    def claim_for(self, vm_uuid: str) -> ClaimInfo | None:
        return self.claims.for_vm(vm_uuid)

    def list_claims(self) -> list[ClaimInfo]:
        return self.claims.all()

    def host_for_vm(self, vm_uuid: str) -> HostInfo | None:
        return self.claims.host_for_vm(vm_uuid)
