"""The inventory: what metalflow knows about hosts, switches, cabling, the VLANs each port
should carry, power state and a per-host journal. SQLAlchemy 2 models, Alembic migrations
shipped in the package (``migrate.upgrade(url)``), and the ``Inventory`` facade that flows
use. SQLite by default (safe for several processes), PostgreSQL at scale."""

from metalflow.integrations.inventory.engine import ENV_HOME, ENV_URL, default_url, make_engine
from metalflow.integrations.inventory.importing import DEFAULT_SWITCH_CREDENTIAL_REF
from metalflow.integrations.inventory.migrate import upgrade
from metalflow.integrations.inventory.models import Base, Host, HostClaim, HostEvent, HostNic, PortVlan, Switch
from metalflow.integrations.inventory.records import (
    BulkPowerResult,
    CabledPort,
    ClaimConflict,
    ClaimInfo,
    DesiredVlan,
    EventInfo,
    HostInfo,
    HostNotFound,
    HostRecord,
    ImportSummary,
    InventoryError,
    NicInfo,
    NoFreeHost,
    PowerReading,
    PowerTransition,
    SwitchInfo,
    VlanInfo,
    check_credential_ref,
    split_credential_ref,
)
from metalflow.integrations.inventory.store import Inventory, clean_detail

__all__ = [
    "DEFAULT_SWITCH_CREDENTIAL_REF",
    "ENV_HOME",
    "ENV_URL",
    "Base",
    "BulkPowerResult",
    "CabledPort",
    "ClaimConflict",
    "ClaimInfo",
    "DesiredVlan",
    "EventInfo",
    "Host",
    "HostClaim",
    "HostEvent",
    "HostInfo",
    "HostNic",
    "HostNotFound",
    "HostRecord",
    "ImportSummary",
    "Inventory",
    "InventoryError",
    "NicInfo",
    "NoFreeHost",
    "PortVlan",
    "PowerReading",
    "PowerTransition",
    "Switch",
    "SwitchInfo",
    "VlanInfo",
    "check_credential_ref",
    "clean_detail",
    "default_url",
    "make_engine",
    "split_credential_ref",
    "upgrade",
]
