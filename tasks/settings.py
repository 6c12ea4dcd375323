"""metalflow's settings: the environment (``METALFLOW_*``) over an optional JSON file
(``$METALFLOW_HOME/config.json``) over defaults. No secret is a setting: settings hold
*references* to where secrets live (``env:NAME``, ``block:NAME`` or ``block:NAME#key``)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from metalflow.integrations.common.fields import EraseModeField, VlanId
from metalflow.integrations.common.values import EraseMode
from metalflow.tasks.runtime import runtime


def metalflow_home() -> Path:
    return Path(os.environ.get("METALFLOW_HOME") or Path.home() / ".metalflow")


class Settings(BaseModel, frozen=True):
    inventory_url: str = ""  # empty: sqlite:///$METALFLOW_HOME/inventory.db
    #: Where the MAAS settings string (the seed's external.baremetal.system.url) lives.
    maas_settings_ref: str = "env:METALFLOW_MAAS_SETTINGS"
    #: Where curtin preseeds go: a local directory on the region controller, or sftp://user@host/dir
    preseed_target: str = "/etc/maas/preseeds"
    preseed_credential_ref: str = ""
    #: The provisioning VLAN of switches that name none: 2-4094 (VLAN 1 is every switch's
    #: default VLAN, which every dialect refuses to change; ``true`` is not a VLAN).
    pxe_vlan: VlanId = 10
    erase_default: EraseModeField = EraseMode.QUICK
    commission_timeout: float = Field(1800.0, gt=0)
    deploy_timeout: float = Field(1800.0, gt=0)
    erase_timeout: float = Field(1800.0, gt=0)
    #: Seconds between two rounds of the serving process's MAAS status watch: each round is one
    #: ``GET machines/?id=…`` for every machine any run waits on (a deploy, erase, commission).
    maas_wait_interval: float = Field(1.0, ge=0.2, le=60)
    #: The power-poll schedule: a run starts every this many seconds and polls for as long
    #: (its window), so one long-running poller is always at work.
    power_poll_interval: float = Field(300.0, gt=0)
    #: Seconds between two reads of one BMC by the long-running poll (each BMC at its own phase).
    power_poll_period: float = Field(10.0, ge=1)
    #: Seconds between two reads of the host list by the long-running poll (hosts registered or
    #: removed meanwhile are picked up, changed BMC credentials too).
    power_poll_refresh: float = Field(30.0, gt=0)
    power_poll_processes: int = Field(2, ge=1)
    power_poll_call_timeout: float = Field(3.0, gt=0)
    power_poll_stale_after: float = Field(180.0, gt=0)
    #: Failed reads in a row before a host goes into maintenance. The long-running power-poll
    #: reads each BMC every power_poll_period (10 s): 12 is two minutes of silence, about what
    #: a BMC reset takes, so a rebooting BMC does not flap its host into maintenance.
    maintenance_after_failures: int = Field(12, ge=1)
    #: How switch sessions exclude each other: ``global`` (a Prefect global concurrency limit
    #: per switch, for process workers) or ``process`` (a lock in this process: set by
    #: ``metalflow serve``, where every run is a thread of one process).
    switch_lock: Literal["global", "process"] = "global"
    audit_interval: float = Field(3600.0, gt=0)
    #: How often ``recover`` sweeps for runs that died half-way (issue 18); with the crash
    #: automation's window this bounds how long a dead worker's host stays half-done.
    recover_interval: float = Field(60.0, gt=0)
    stop_soft_timeout: float = Field(30.0, gt=0)
    #: ``metalflow worker`` on SIGINT/SIGTERM: it stops taking runs at once, lets the running
    #: ones finish for this many seconds, then stops them (each rolls back its changes), giving
    #: each ``worker_rollback_grace`` seconds for that before it is killed (recover finishes).
    worker_stop_grace: float = Field(600.0, ge=0)
    worker_rollback_grace: float = Field(300.0, ge=0)
    #: Seconds a host lock outlives a run that stopped renewing it (its worker died); Prefect
    #: renews it every 3/4 of that while the run lives. Prefect's minimum is 60.
    host_lock_lease: float = Field(300.0, ge=60, le=86400)
    image_arch: str = "amd64/generic"

    def resolved_inventory_url(self) -> str:
        return self.inventory_url or f"sqlite:///{metalflow_home() / 'inventory.db'}"


_ENV_PREFIX = "METALFLOW_"


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    data: dict = {}
    path = Path(env.get("METALFLOW_CONFIG") or metalflow_home() / "config.json")
    if path.exists():
        try:
            data.update(json.loads(path.read_text()))
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    for name in Settings.model_fields:
        key = _ENV_PREFIX + name.upper()
        if key in env:
            data[name] = env[key]
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{_ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad metalflow settings ({path} or environment): {problems}") from None


def _config_path() -> Path:
    return Path(os.environ.get("METALFLOW_CONFIG") or metalflow_home() / "config.json")


def _fingerprint() -> tuple:
    """What the settings are read from: the config file's identity and the METALFLOW_*
    environment. Flow runs share one process under ``metalflow serve``, so an operator's edit
    of config.json must reach the next run without a restart, as it did with a process per run."""
    try:
        st = _config_path().stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = None
    return (
        str(_config_path()),
        stamp,
        tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIX))),
    )


class _Latest:
    """The settings last read and what they were read from: read again once that changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: tuple[tuple, Settings] | None = None

    def get(self) -> Settings:
        fingerprint = _fingerprint()
        with self._lock:
            if self._read is not None and self._read[0] == fingerprint:
                return self._read[1]
        value = load_settings()
        with self._lock:
            self._read = (fingerprint, value)
        return value


def settings() -> Settings:
    """The settings now (kept by the process's ``Runtime``, read again after an edit)."""
    return runtime().part("settings", _Latest).get()
