"""Clients built from settings and credential references, inside the worker process.

Each process keeps one inventory engine, one journal group commit and one MAAS session
(connection reuse), as parts of its ``Runtime``: made on first use for the settings of the
moment (an edited inventory URL or MAAS reference gets its own), closed when the runtime
closes. BMC and switch clients are made per call, since each targets one device."""

from __future__ import annotations

from metalflow.integrations.inventory import HostInfo, Inventory, SwitchInfo
from metalflow.integrations.inventory.group import GroupJournal
from metalflow.integrations.ipmi import BmcClient, BmcTarget, CallGuards
from metalflow.integrations.maas import MaasClient
from metalflow.integrations.maas.preseed import LocalPreseedStore, PreseedStore, SftpPreseedStore
from metalflow.integrations.switches import SwitchDriver, connect
from metalflow.tasks.credentials import resolve
from metalflow.tasks.runtime import runtime
from metalflow.tasks.settings import settings


def _inventory(url: str) -> Inventory:
    def make() -> Inventory:
        inv = Inventory(url)
        inv.upgrade()
        return inv

    return runtime().part(("inventory", url), make, Inventory.dispose)


def inventory() -> Inventory:
    return _inventory(settings().resolved_inventory_url())


def journal() -> GroupJournal:
    """The process's journal writer: the lines that the runs of this process write at the
    same time share one transaction (``integrations.inventory.group``)."""
    url = settings().resolved_inventory_url()
    return runtime().part(("journal", url), lambda: GroupJournal(_inventory(url).history))


def maas() -> MaasClient:
    cfg = settings()
    ref, interval = cfg.maas_settings_ref, cfg.maas_wait_interval
    return runtime().part(
        ("maas", ref, interval),
        lambda: MaasClient.from_settings(resolve(ref), watch_interval=interval),
        MaasClient.close,
    )


def call_guards() -> CallGuards:
    """The process's IPMI call guards (one per BMC, whoever the client): a runtime part. Asking
    for them through ``runtime()`` puts the pyghmi shim in place before the first BMC call."""
    return runtime().part(("ipmi", "guards"), CallGuards)


def bmc(host: HostInfo, **kwargs) -> BmcClient:
    kwargs.setdefault("guards", call_guards())
    return BmcClient(
        host.ipmi_address, host.ipmi_username, resolve(host.ipmi_credential_ref), port=host.ipmi_port, **kwargs
    )


def bmc_target(host: HostInfo) -> BmcTarget:
    runtime()  # the pyghmi shim is in place before the first BMC call of the process
    return BmcTarget(
        key=host.name,
        address=host.ipmi_address,
        username=host.ipmi_username,
        password=resolve(host.ipmi_credential_ref),
        port=host.ipmi_port,
    )


def switch(sw: SwitchInfo) -> SwitchDriver:
    # The rack config has one password per switch; it doubles as the enable secret.
    password = resolve(sw.credential_ref)
    return connect(sw.type, sw.address, sw.username, password, port=sw.port, enable_secret=password)


def preseed_store() -> PreseedStore:
    target = settings().preseed_target
    if target.startswith("sftp://"):
        from urllib.parse import urlparse

        u = urlparse(target)
        return SftpPreseedStore(
            u.hostname or "",
            u.port or 22,
            u.username or "root",
            resolve(settings().preseed_credential_ref),
            u.path or "/etc/maas/preseeds",
        )
    return LocalPreseedStore(target)
