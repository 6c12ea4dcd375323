"""The inventory: what metalflow knows about hosts, switches, cabling, the VLANs each port
should carry, power state and a per-host journal. SQLAlchemy 2 models, Alembic migrations
shipped in the package (``migrate.upgrade(url)``), and the ``Inventory`` facade that flows
use, composed of small repositories (``hosts``, ``ports``, ``power``, ``history``, ``claims``)
over one ``Database``. SQLite by default (safe for several processes), PostgreSQL at scale."""

from metalflow.integrations.inventory.claims import ClaimRepository
from metalflow.integrations.inventory.engine import ENV_HOME, ENV_URL, default_url, make_engine
from metalflow.integrations.inventory.hosts import HostRepository
from metalflow.integrations.inventory.importing import DEFAULT_SWITCH_CREDENTIAL_REF
from metalflow.integrations.inventory.journal import JournalRepository, clean_detail, journal_line
from metalflow.integrations.inventory.migrate import upgrade
from metalflow.integrations.inventory.models import Base, Host, HostClaim, HostEvent, HostNic, PortVlan, Switch
from metalflow.integrations.inventory.ports import PortRepository
from metalflow.integrations.inventory.power import PowerRepository
from metalflow.integrations.inventory.records import (
    BulkPowerResult,
    CabledPort,
    ClaimConflict,
    ClaimInfo,
    DesiredVlan,
    HostInfo,
    HostNotFound,
    HostRecord,
    HostUnfit,
    ImportSummary,
    InventoryError,
    JournalLine,
    LeaseInfo,
    NicInfo,
    NoFreeHost,
    PowerReading,
    PowerTransition,
    SwitchInfo,
    UndoInfo,
    VlanInfo,
    credential_ref,
)
from metalflow.integrations.inventory.session import Database
from metalflow.integrations.inventory.store import Inventory

__all__ = [
    "DEFAULT_SWITCH_CREDENTIAL_REF",
    "ENV_HOME",
    "ENV_URL",
    "Base",
    "BulkPowerResult",
    "CabledPort",
    "ClaimConflict",
    "HostUnfit",
    "LeaseInfo",
    "UndoInfo",
    "ClaimInfo",
    "ClaimRepository",
    "Database",
    "DesiredVlan",
    "Host",
    "HostClaim",
    "HostEvent",
    "HostInfo",
    "HostNic",
    "HostNotFound",
    "HostRecord",
    "HostRepository",
    "ImportSummary",
    "Inventory",
    "InventoryError",
    "JournalLine",
    "JournalRepository",
    "NicInfo",
    "NoFreeHost",
    "PortRepository",
    "PortVlan",
    "PowerRepository",
    "PowerReading",
    "PowerTransition",
    "Switch",
    "SwitchInfo",
    "VlanInfo",
    "credential_ref",
    "clean_detail",
    "default_url",
    "journal_line",
    "make_engine",
    "upgrade",
]
