"""The inventory's tables: switches, hosts, their cabled NICs, the VLANs each port should
carry (the desired state that rollback and audit compare against) and a per-host journal.

Portable SQL only (SQLite for one machine, PostgreSQL at scale). Times are stored as UTC and
always come back timezone-aware. Secrets are never stored: a ``*_credential_ref`` says where a
password lives (``env:NAME`` or ``block:name``). Changing a model means adding an Alembic
revision under ``migrations/versions``; a test fails when the two drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from metalflow.integrations.common.names import (
    HOST_CLAIMS_TABLE,
    HOST_EVENTS_TABLE,
    HOST_NICS_TABLE,
    HOSTS_TABLE,
    PORT_VLANS_TABLE,
    RUN_LEASES_TABLE,
    RUN_UNDOS_TABLE,
    SWITCH_VLAN_DEFS_TABLE,
    SWITCHES_TABLE,
)

POWER_STATES = ("on", "off", "unknown")
MAINTENANCE_SOURCES = ("poll", "operator")
VLAN_PURPOSES = ("pxe", "guest", "extra")
OUTCOMES = ("started", "ok", "failed", "skipped", "compensated")
#: A claim's life (issue 17): ``leased`` by prepare and freed when it expires; ``provisioning``
#: once a create started its run (kept while the run lives); ``placed`` when the provision
#: completed: the VM's placement until delete, never expiring.
CLAIM_STATES = ("leased", "provisioning", "placed")
#: An undo of a run's change (issue 18): ``pending`` until it ran; ``failed`` when it was tried
#: and did not finish (the host needs recovery); a run's rows go when the run completed or its
#: rollback finished.
UNDO_STATES = ("pending", "failed")
VLAN_ORIGINS = ("found", "made")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone: we store naive
    UTC there and put the zone back on read). Naive input is refused: it is ambiguous."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the inventory; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime()}


class Timestamps:
    created: Mapped[datetime] = mapped_column(default=utcnow)
    updated: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Switch(Timestamps, Base):
    __tablename__ = SWITCHES_TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(255), unique=True)
    port: Mapped[int] = mapped_column(Integer, server_default=text("22"))
    type: Mapped[str] = mapped_column(String(32))
    username: Mapped[str] = mapped_column(String(128))
    credential_ref: Mapped[str] = mapped_column(String(255))
    pxe_vlan: Mapped[int | None] = mapped_column(Integer)

    nics: Mapped[list[HostNic]] = relationship(back_populates="switch")

    def __repr__(self) -> str:
        return f"Switch({self.name!r}, {self.address}:{self.port}, {self.type})"


class Host(Timestamps, Base):
    __tablename__ = HOSTS_TABLE
    __table_args__ = (
        CheckConstraint(_in("power_state", POWER_STATES), name="power_state"),
        CheckConstraint(
            f"maintenance_source IS NULL OR {_in('maintenance_source', MAINTENANCE_SOURCES)}",
            name="maintenance_source",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    cloudstack_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    ipmi_address: Mapped[str] = mapped_column(String(255))
    ipmi_port: Mapped[int] = mapped_column(Integer, server_default=text("623"))
    ipmi_username: Mapped[str] = mapped_column(String(128))
    ipmi_credential_ref: Mapped[str] = mapped_column(String(255))
    boot_mac: Mapped[str] = mapped_column(String(17))
    cpu_count: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    arch: Mapped[str] = mapped_column(String(64))
    maas_system_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    last_vm_uuid: Mapped[str | None] = mapped_column(String(64))
    last_vm_name: Mapped[str | None] = mapped_column(String(255))
    power_state: Mapped[str] = mapped_column(String(8), default="unknown", server_default=text("'unknown'"))
    power_state_at: Mapped[datetime | None] = mapped_column()
    poll_failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_poll_error: Mapped[str | None] = mapped_column(String(500))
    maintenance: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    maintenance_reason: Mapped[str | None] = mapped_column(String(500))
    maintenance_source: Mapped[str | None] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)

    nics: Mapped[list[HostNic]] = relationship(
        back_populates="host", cascade="all, delete-orphan", order_by="HostNic.id"
    )

    __mapper_args__ = {"version_id_col": version}

    def __repr__(self) -> str:
        return f"Host({self.name!r}, cloudstack_id={self.cloudstack_id!r}, power={self.power_state})"


class HostNic(Base):
    __tablename__ = HOST_NICS_TABLE
    __table_args__ = (
        UniqueConstraint("switch_id", "port"),
        CheckConstraint("(switch_id IS NULL) = (port IS NULL)", name="cabled"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    switch_id: Mapped[int | None] = mapped_column(ForeignKey("switches.id"))
    port: Mapped[str | None] = mapped_column(String(64))
    is_boot: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    host: Mapped[Host] = relationship(back_populates="nics")
    switch: Mapped[Switch | None] = relationship(back_populates="nics")


class PortVlan(Timestamps, Base):
    """A VLAN a switch port should carry, and why. Rollback and audit read this."""

    __tablename__ = PORT_VLANS_TABLE
    __table_args__ = (
        UniqueConstraint("switch_id", "port", "vlan"),
        CheckConstraint("vlan BETWEEN 1 AND 4094", name="vlan"),
        CheckConstraint(_in("purpose", VLAN_PURPOSES), name="purpose"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    switch_id: Mapped[int] = mapped_column(ForeignKey("switches.id"))
    port: Mapped[str] = mapped_column(String(64))
    vlan: Mapped[int] = mapped_column(Integer)
    tagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    purpose: Mapped[str] = mapped_column(String(8))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), index=True)

    switch: Mapped[Switch] = relationship()
    host: Mapped[Host | None] = relationship()


class HostEvent(Base):
    """One journal line: a step of an operation on a host, its system and outcome."""

    __tablename__ = HOST_EVENTS_TABLE
    __table_args__ = (
        CheckConstraint(_in("outcome", OUTCOMES), name="outcome"),
        Index(None, "host_id", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    operation: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(128))
    system: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(String(1000), default="", server_default=text("''"))

    host: Mapped[Host] = relationship()


class HostClaim(Base):
    """A host set aside for one CloudStack VM (the placement of the pool model).

    CloudStack does no locking: two deploys' ``prepare`` calls can race for the same free
    machine. The unique constraints make the claim atomic on every backend: the second
    INSERT for a host fails instead of silently sharing it, and a VM holds at most one host.
    """

    __tablename__ = HOST_CLAIMS_TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), unique=True)
    vm_uuid: Mapped[str] = mapped_column(String(64), unique=True)
    vm_name: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Claims made before leases existed were placements: the server default says so.
    state: Mapped[str] = mapped_column(String(16), default="leased", server_default=text("'placed'"))
    expires_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime | None] = mapped_column()

    host: Mapped[Host] = relationship()


class RunUndo(Base):
    """One undo of a run's change, written before the change is made (issue 18): what a
    recovery needs when the run's process died (a killed worker) before it could undo it. The
    action is a name from ``flows.undo`` and its parameters JSON, never code."""

    __tablename__ = RUN_UNDOS_TABLE
    __table_args__ = (
        UniqueConstraint("run_id", "seq"),
        CheckConstraint(_in("state", UNDO_STATES), name="state"),
        Index(None, "host_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    params: Mapped[str] = mapped_column(String(4000), default="{}")
    state: Mapped[str] = mapped_column(String(16), default="pending")
    detail: Mapped[str] = mapped_column(String(500), default="", server_default=text("''"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    host: Mapped[Host] = relationship()


class RunLease(Base):
    """A host lock a run holds: the lease id of its Prefect global concurrency limit (issue 18).
    Prefect keeps a lease until it expires or its holder releases it, and offers no way to list
    them: the id is known only to the process that took it. Written here when taken, removed
    when released, it lets recovery release the lock of a run marked Crashed at once instead of
    waiting out the lease."""

    __tablename__ = RUN_LEASES_TABLE
    __table_args__ = (UniqueConstraint("lease_id"), Index(None, "run_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    limit_name: Mapped[str] = mapped_column(String(128))
    lease_id: Mapped[str] = mapped_column(String(64))
    taken_at: Mapped[datetime] = mapped_column(default=utcnow)


class SwitchVlanDef(Base):
    """Who made a VLAN definition on a switch (issue 18): ``found`` (defined when metalflow
    first looked, or when it first put that VLAN on a port: an operator's, never deleted) or
    ``made`` (not defined until metalflow put the VLAN on a port, which created it). Only a
    ``made`` definition that no port carries any more is litter the audit may delete."""

    __tablename__ = SWITCH_VLAN_DEFS_TABLE
    __table_args__ = (
        UniqueConstraint("switch_id", "vlan"),
        CheckConstraint(_in("origin", VLAN_ORIGINS), name="origin"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    switch_id: Mapped[int] = mapped_column(ForeignKey("switches.id", ondelete="CASCADE"))
    vlan: Mapped[int] = mapped_column(Integer)
    origin: Mapped[str] = mapped_column(String(8))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
