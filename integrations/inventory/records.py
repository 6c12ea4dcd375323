"""What goes into the inventory and what comes out of it: frozen dataclasses, so callers (and
Prefect, which serialises task results) never hold a live ORM object or a session."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from metalflow.integrations.common import MetalflowError
from metalflow.integrations.common.values import BadValue, parse_secret_ref, parse_vlan
from metalflow.integrations.inventory.models import (
    VLAN_PURPOSES,
    Host,
    HostClaim,
    HostEvent,
    HostNic,
    PortVlan,
    RunUndo,
    Switch,
)


class InventoryError(MetalflowError):
    """Bad input to the inventory (``field`` names it) or a state the inventory refuses."""

    def __init__(self, message: str, *, field: str = "", target: str = "", operation: str = ""):
        self.field = field
        text = f"{field}: {message}" if field else message
        super().__init__(text, target=target, operation=operation)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.field, self.target, self.operation))


class HostNotFound(InventoryError):
    """No host with that name or CloudStack id."""


class NoFreeHost(InventoryError):
    """No host is free for a placement claim (or none fits the VM's size)."""


class ClaimConflict(InventoryError):
    """The host asked for is claimed by, or carries, another VM."""


class HostUnfit(InventoryError):
    """The host asked for cannot take a VM now: ``why`` is the category (``in maintenance``,
    ``too small``, ...) without the details that may name another VM or the operator's notes."""

    def __init__(self, message: str, *, why: str = "", field: str = ""):
        self.why = why
        super().__init__(message, field=field)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_unfit, (self.message, self.why, self.field))


def _rebuild_unfit(message: str, why: str, field_: str) -> HostUnfit:
    obj = HostUnfit.__new__(HostUnfit)
    obj.field, obj.why = field_, why
    MetalflowError.__init__(obj, message)
    return obj


def _rebuild(cls: type[InventoryError], message: str, field_: str, target: str, operation: str) -> InventoryError:
    obj = cls.__new__(cls)
    obj.field = field_
    MetalflowError.__init__(obj, message, target=target, operation=operation)
    return obj


def credential_ref(value: object, field: str) -> str:
    """``value`` as the text of a :class:`SecretRef` (``env:NAME``, ``block:name`` or
    ``block:name#key``, by ``values.parse_secret_ref``); InventoryError naming ``field``
    otherwise. The value is never in the message: a password pasted here by mistake must not
    reach a log or the journal."""
    try:
        return str(parse_secret_ref(value, field))
    except BadValue as exc:
        raise InventoryError(exc.reason, field=exc.field) from exc


@dataclass(frozen=True)
class HostRecord:
    """A host to import: what CloudStack's "add host" form carries, with the password replaced
    by a reference. ``macs[0]`` is the boot (PXE) NIC."""

    name: str
    cloudstack_id: str | int | None
    ipmi_address: str
    ipmi_port: int
    ipmi_username: str
    ipmi_credential_ref: str
    macs: tuple[str, ...]
    cpu_count: int
    memory_mb: int
    arch: str = "amd64/generic"

    def __post_init__(self) -> None:
        if isinstance(self.macs, list):
            object.__setattr__(self, "macs", tuple(self.macs))


@dataclass(frozen=True)
class SwitchInfo:
    name: str
    address: str
    port: int
    type: str
    username: str
    credential_ref: str
    pxe_vlan: int | None

    @classmethod
    def of(cls, s: Switch) -> SwitchInfo:
        return cls(s.name, s.address, s.port, s.type, s.username, s.credential_ref, s.pxe_vlan)


@dataclass(frozen=True)
class NicInfo:
    mac: str
    switch: str | None
    port: str | None
    is_boot: bool

    @classmethod
    def of(cls, n: HostNic) -> NicInfo:
        return cls(n.mac, n.switch.name if n.switch is not None else None, n.port, n.is_boot)


@dataclass(frozen=True)
class HostInfo:
    name: str
    cloudstack_id: str | None
    ipmi_address: str
    ipmi_port: int
    ipmi_username: str
    ipmi_credential_ref: str
    boot_mac: str
    cpu_count: int
    memory_mb: int
    arch: str
    maas_system_id: str | None
    last_vm_uuid: str | None
    last_vm_name: str | None
    power_state: str
    power_state_at: datetime | None
    poll_failures: int
    last_poll_error: str | None
    maintenance: bool
    maintenance_reason: str | None
    maintenance_source: str | None
    version: int
    nics: tuple[NicInfo, ...] = ()

    @classmethod
    def of(cls, h: Host) -> HostInfo:
        return cls(
            h.name,
            h.cloudstack_id,
            h.ipmi_address,
            h.ipmi_port,
            h.ipmi_username,
            h.ipmi_credential_ref,
            h.boot_mac,
            h.cpu_count,
            h.memory_mb,
            h.arch,
            h.maas_system_id,
            h.last_vm_uuid,
            h.last_vm_name,
            h.power_state,
            h.power_state_at,
            h.poll_failures,
            h.last_poll_error,
            h.maintenance,
            h.maintenance_reason,
            h.maintenance_source,
            h.version,
            tuple(NicInfo.of(n) for n in h.nics),
        )


class CabledPort(NamedTuple):
    """``(switch, port)``: a switch port one of the host's NICs is cabled to."""

    switch: SwitchInfo
    port: str


@dataclass(frozen=True)
class VlanInfo:
    switch: str
    port: str
    vlan: int
    tagged: bool
    purpose: str
    host: str | None

    @classmethod
    def of(cls, v: PortVlan) -> VlanInfo:
        return cls(v.switch.name, v.port, v.vlan, v.tagged, v.purpose, v.host.name if v.host else None)


@dataclass(frozen=True)
class DesiredVlan:
    """A VLAN the host's cabled ports (all, or ``ports``: ``(switch, port)`` pairs) should
    carry. ``tagged`` defaults by purpose: the PXE and guest VLANs untagged, extra networks
    tagged (as plug-nic does). Checked when made, before anything is written."""

    vlan: int
    purpose: str = "guest"
    tagged: bool | None = None
    ports: Sequence[tuple[str, str]] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vlan, int):  # an int only (parse_vlan would also read "10")
            raise InventoryError(f"expected a VLAN id as a number, got {type(self.vlan).__name__}", field="vlan")
        try:
            parse_vlan(self.vlan, "vlan")
        except BadValue as exc:
            raise InventoryError(exc.reason, field=exc.field) from exc
        if self.purpose not in VLAN_PURPOSES:
            raise InventoryError(f"{self.purpose!r} is not a VLAN purpose (pxe, guest or extra)", field="purpose")

    @property
    def is_tagged(self) -> bool:
        return (self.purpose == "extra") if self.tagged is None else bool(self.tagged)


@dataclass(frozen=True)
class JournalLine:
    """One line of a host's journal: checked and stamped before it is written
    (``journal.journal_line``, ``host`` the key it was given), and as read back (``host`` the
    inventory name)."""

    host: str
    at: datetime
    operation: str
    run_id: str | None
    step: str
    system: str
    outcome: str
    detail: str

    @classmethod
    def of(cls, e: HostEvent, host: str) -> JournalLine:
        return cls(host, e.at, e.operation, e.run_id, e.step, e.system, e.outcome, e.detail)


@dataclass(frozen=True)
class PowerReading:
    """One power poll result: ``state`` is on/off, or unknown with ``error`` when it failed."""

    host: str
    state: str
    at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class PowerTransition:
    """What recording a reading did to a host."""

    host: str
    previous: str
    state: str
    at: datetime | None
    poll_failures: int
    maintenance: bool
    entered_maintenance: bool = False
    left_maintenance: bool = False
    stale: bool = False  # older than the stored reading: ignored

    @property
    def changed(self) -> bool:
        return self.previous != self.state


@dataclass(frozen=True)
class BulkPowerResult:
    transitions: tuple[PowerTransition, ...]
    unknown_hosts: tuple[str, ...] = ()

    @property
    def entered_maintenance(self) -> tuple[str, ...]:
        return tuple(t.host for t in self.transitions if t.entered_maintenance)

    @property
    def left_maintenance(self) -> tuple[str, ...]:
        return tuple(t.host for t in self.transitions if t.left_maintenance)


@dataclass(frozen=True)
class ImportSummary:
    """What ``import_rack_config`` changed; ``changes == 0`` on a repeated import."""

    switches_added: int = 0
    switches_updated: int = 0
    hosts_added: int = 0
    hosts_updated: int = 0
    nics_added: int = 0
    nics_updated: int = 0
    nics_removed: int = 0
    details: tuple[str, ...] = ()
    unclaimed_macs: tuple[str, ...] = ()  # in the rack config but on no imported host
    switch_credential_refs: tuple[tuple[str, str], ...] = ()  # (switch name, where its password goes)
    warnings: tuple[str, ...] = field(default=())

    @property
    def changes(self) -> int:
        return (
            self.switches_added
            + self.switches_updated
            + self.hosts_added
            + self.hosts_updated
            + self.nics_added
            + self.nics_updated
            + self.nics_removed
        )


def problems_error(what: str, problems: Sequence[tuple[str, str]]) -> InventoryError:
    """One InventoryError listing every (field, message); ``field`` is the first one's."""
    if len(problems) == 1:
        f, m = problems[0]
        return InventoryError(m, field=f)
    lines = "\n".join(f"  - {f}: {m}" for f, m in problems)
    err = InventoryError(f"{what} has {len(problems)} problems:\n{lines}")
    err.field = problems[0][0]
    return err


@dataclass(frozen=True)
class ClaimInfo:
    """A host set aside for one CloudStack VM."""

    host: str
    vm_uuid: str
    vm_name: str | None
    claimed_at: datetime
    #: ``leased`` (prepare), ``provisioning`` (a create's run), ``placed`` (installed).
    state: str = "placed"
    #: When a lease or a provisioning claim runs out (None: a placement, never).
    expires_at: datetime | None = None

    @classmethod
    def of(cls, c: HostClaim) -> ClaimInfo:
        return cls(c.host.name, c.vm_uuid, c.vm_name, c.claimed_at, c.state, c.expires_at)

    def expired(self, now: datetime) -> bool:
        return self.state != "placed" and self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class UndoInfo:
    """One persisted undo of a run's change (``UndoRepository``)."""

    host: str
    run_id: str
    operation: str
    seq: int
    label: str
    action: str
    params: Mapping[str, Any]
    state: str
    detail: str
    created_at: datetime

    @classmethod
    def of(cls, u: RunUndo) -> UndoInfo:
        return cls(
            u.host.name,
            u.run_id,
            u.operation,
            u.seq,
            u.label,
            u.action,
            json.loads(u.params or "{}"),
            u.state,
            u.detail,
            u.created_at,
        )


@dataclass(frozen=True)
class LeaseInfo:
    """A host lock a run holds (``LeaseRepository``): the limit and Prefect's lease id."""

    run_id: str
    limit_name: str
    lease_id: str
    taken_at: datetime
