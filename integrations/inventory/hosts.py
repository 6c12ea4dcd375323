"""The hosts: importing them with the rack config, looking them up, forgetting them, and the
MAAS and VM bookkeeping kept on their rows. Also the one way every repository finds a host
row (``host_row``: by name first, then CloudStack id)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from metalflow.integrations.config import RackConfig
from metalflow.integrations.inventory.importing import DEFAULT_SWITCH_CREDENTIAL_REF, CredentialRefSource, import_rack
from metalflow.integrations.inventory.models import Host, HostClaim, HostNic, utcnow
from metalflow.integrations.inventory.records import HostInfo, HostNotFound, HostRecord, ImportSummary, InventoryError
from metalflow.integrations.inventory.session import Database

HostKey = str | int  # a host name, or its CloudStack id


def host_key_ok(key: Any) -> bool:
    return not isinstance(key, bool) and isinstance(key, (str, int)) and str(key) != ""


def bad_host_key(key: Any) -> InventoryError:
    return InventoryError(f"{key!r} is not a host name or CloudStack id", field="host")


def host_not_found(key: str) -> HostNotFound:
    return HostNotFound(f"no host {key!r} in the inventory (by name or CloudStack id); import it first", field="host")


def host_row(s: Session, key: HostKey, *, lock: bool = False) -> Host:
    """The host row by name first, then CloudStack id (``lock``: ``FOR UPDATE``). Raises
    HostNotFound."""
    if not host_key_ok(key):
        raise bad_host_key(key)
    k = str(key)
    stmt = select(Host).where(or_(Host.name == k, Host.cloudstack_id == k))
    if lock:
        stmt = stmt.with_for_update()
    found = list(s.scalars(stmt))
    if not found:
        raise host_not_found(k)
    return next((h for h in found if h.name == k), found[0])


class HostRepository:
    """Hosts: import, lookup, removal, and the MAAS system id and last VM of each."""

    def __init__(self, db: Database):
        self.db = db

    def import_rack_config(
        self,
        rack: RackConfig,
        hosts: Sequence[HostRecord],
        *,
        switch_credential_ref: CredentialRefSource = DEFAULT_SWITCH_CREDENTIAL_REF,
        switch_names: Mapping[str, str] | None = None,
        pxe_vlan: int | None = None,
    ) -> ImportSummary:
        """Add or update switches (matched by address; named ``tor-N`` in rack order unless
        ``switch_names`` maps an address to a name), hosts (matched by name) and NIC cabling.
        Idempotent: a second identical call reports ``changes == 0``."""
        return self.db.write(
            lambda s: import_rack(
                s, rack, hosts, credential_ref=switch_credential_ref, switch_names=switch_names, pxe_vlan=pxe_vlan
            )
        )

    def get(self, key: HostKey) -> HostInfo:
        """By name first, then CloudStack id. Raises HostNotFound."""
        return self.db.read(lambda s: HostInfo.of(host_row(s, key)))

    def find(self, key: HostKey) -> HostInfo | None:
        try:
            return self.get(key)
        except HostNotFound:
            return None

    def by_system_id(self, system_id: str) -> HostInfo | None:
        """The host whose MAAS machine is ``system_id``, or None."""
        if not isinstance(system_id, str) or not system_id:
            raise InventoryError("expected a MAAS system id", field="maas_system_id")

        def read(s: Session) -> HostInfo | None:
            row = s.scalar(select(Host).where(Host.maas_system_id == system_id).limit(1))
            return HostInfo.of(row) if row is not None else None

        return self.db.read(read)

    def all(self, *, maintenance: bool | None = None) -> list[HostInfo]:
        def read(s: Session) -> list[HostInfo]:
            stmt = select(Host).options(selectinload(Host.nics).selectinload(HostNic.switch)).order_by(Host.name)
            if maintenance is not None:
                stmt = stmt.where(Host.maintenance.is_(maintenance))
            return [HostInfo.of(h) for h in s.scalars(stmt)]

        return self.db.read(read)

    def remove(self, key: HostKey) -> bool:
        """Forget a host (its NICs and journal go with it; desired VLANs stay, unowned). Only
        the inventory: the machine is never deleted from MAAS. False when it was not there."""

        def remove(s: Session) -> bool:
            try:
                row = host_row(s, key, lock=True)
            except HostNotFound:
                return False
            s.delete(row)
            return True

        return self.db.write(remove)

    def set_maas_system_id(self, host: HostKey, system_id: str | None) -> HostInfo:
        if system_id is not None and (not isinstance(system_id, str) or not re.fullmatch(r"[a-z0-9]{1,32}", system_id)):
            raise InventoryError(f"{system_id!r} is not a MAAS system_id (e.g. 4y3h7n)", field="system_id")

        def write(s: Session) -> HostInfo:
            row = host_row(s, host, lock=True)
            owner = (
                None
                if system_id is None
                else s.scalar(select(Host.name).where(Host.maas_system_id == system_id, Host.id != row.id))
            )
            if owner is not None:
                raise InventoryError(f"{system_id} already belongs to host {owner}", field="system_id")
            if row.maas_system_id != system_id:
                row.maas_system_id = system_id
                s.flush()
            return HostInfo.of(row)

        return self.db.write(write)

    def set_last_vm(self, host: HostKey, vm_uuid: str | None, vm_name: str | None) -> HostInfo:
        """The VM last provisioned on the host (case A of provisioning reads it back)."""
        for field, value, limit in (("vm_uuid", vm_uuid, 64), ("vm_name", vm_name, 255)):
            if value is not None and (not isinstance(value, str) or not value or len(value) > limit):
                raise InventoryError(f"expected a non-empty string of at most {limit} characters", field=field)

        def write(s: Session) -> HostInfo:
            row = host_row(s, host, lock=True)
            if (row.last_vm_uuid, row.last_vm_name) != (vm_uuid, vm_name):
                row.last_vm_uuid, row.last_vm_name = vm_uuid, vm_name
                s.flush()
            if vm_uuid is not None:
                # The provision completed: the VM's claim on this host is its placement now
                # (a lease never frees an installed machine).
                claim = s.scalar(
                    select(HostClaim).where(HostClaim.vm_uuid == vm_uuid, HostClaim.host_id == row.id).with_for_update()
                )
                if claim is not None and claim.state != "placed":
                    claim.state, claim.expires_at, claim.updated_at = "placed", None, utcnow()
            return HostInfo.of(row)

        return self.db.write(write)
