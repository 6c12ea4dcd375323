"""Clients built from settings and credential references, inside the worker process.

Each worker process keeps one inventory engine and one MAAS session (connection reuse);
BMC and switch clients are made per call, since each targets one device."""

from __future__ import annotations

import threading
from functools import lru_cache

from metalflow.integrations.inventory import HostInfo, Inventory, SwitchInfo
from metalflow.integrations.inventory.group import GroupJournal
from metalflow.integrations.ipmi import BmcClient, BmcTarget, CallGuards, patch_pyghmi
from metalflow.integrations.maas import MaasClient
from metalflow.integrations.maas.preseed import LocalPreseedStore, PreseedStore, SftpPreseedStore
from metalflow.integrations.runtime import Runtime
from metalflow.integrations.switches import SwitchDriver, connect
from metalflow.tasks.credentials import resolve
from metalflow.tasks.settings import settings

_lock = threading.Lock()


@lru_cache(maxsize=4)
def _inventory(url: str) -> Inventory:
    inv = Inventory(url)
    inv.upgrade()
    return inv


def inventory() -> Inventory:
    with _lock:
        return _inventory(settings().resolved_inventory_url())


@lru_cache(maxsize=4)
def _journal(url: str) -> GroupJournal:
    return GroupJournal(_inventory(url))


def journal() -> GroupJournal:
    """The process's journal writer: the lines that the runs of this process write at the
    same time share one transaction (``integrations.inventory.group``)."""
    with _lock:
        return _journal(settings().resolved_inventory_url())


@lru_cache(maxsize=4)
def _maas(ref: str, wait_interval: float) -> MaasClient:
    return MaasClient.from_settings(resolve(ref), watch_interval=wait_interval)


def maas() -> MaasClient:
    with _lock:
        cfg = settings()
        return _maas(cfg.maas_settings_ref, cfg.maas_wait_interval)


def _ipmi_guards() -> CallGuards:
    # The shim goes in before the process's first BMC client (tasks.runtime.runtime() is to
    # apply it at process start; until then, here, once per runtime).
    patch_pyghmi()
    return CallGuards()


def call_guards() -> CallGuards:
    """The process's IPMI call guards (one per BMC, whoever the client): a runtime part."""
    return Runtime.current().part(("ipmi", "guards"), _ipmi_guards)


def bmc(host: HostInfo, **kwargs) -> BmcClient:
    kwargs.setdefault("guards", call_guards())
    return BmcClient(
        host.ipmi_address, host.ipmi_username, resolve(host.ipmi_credential_ref), port=host.ipmi_port, **kwargs
    )


def bmc_target(host: HostInfo) -> BmcTarget:
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
