"""``Inventory``: the inventory's repositories behind one database, the only way flows and
tasks touch it.

- ``hosts`` (``HostRepository``): import with the rack config, lookup, removal, MAAS and VM
  bookkeeping;
- ``ports`` (``PortRepository``): switches, cabled ports, desired VLANs;
- ``power`` (``PowerRepository``): power readings and maintenance;
- ``history`` (``JournalRepository``): the per-host journal;
- ``claims`` (``ClaimRepository``): placement claims;
- ``undos`` (``UndoRepository``): the undo stacks of runs, persisted;
- ``leases`` (``LeaseRepository``): the host locks runs hold, by lease id.

Every repository method runs in its own short transaction (``session.Database``) and
returns frozen dataclasses. Callers say which repository they mean (``inv.hosts.get(...)``,
``inv.ports.switch_vlans(...)``): the one-object facade with thirty methods this used to be
is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from metalflow.integrations.inventory.claims import ClaimRepository
from metalflow.integrations.inventory.hosts import HostRepository
from metalflow.integrations.inventory.journal import JournalRepository
from metalflow.integrations.inventory.leases import LeaseRepository
from metalflow.integrations.inventory.ports import PortRepository
from metalflow.integrations.inventory.power import MAINTENANCE_AFTER, PowerRepository
from metalflow.integrations.inventory.session import Database
from metalflow.integrations.inventory.undos import UndoRepository


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
        self.undos = UndoRepository(self.db)
        self.leases = LeaseRepository(self.db)

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
