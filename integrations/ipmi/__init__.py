"""IPMI: a power interface for one BMC (``BmcClient``, after Ironic's) and the power-poll
engine (``PowerWatch``: every BMC read once per period at its own phase, or all at once in a
sweep, from worker processes), all on pyghmi with our own deadlines (``CallGuards``: one guard
per BMC, owned by whoever owns the process's parts), plus the shim that closes pyghmi 1.6.19's
lost wake-up race (``patch_pyghmi``, applied once when a process starts)."""

from metalflow.integrations.ipmi.client import BOOT_DEVICES, BmcClient
from metalflow.integrations.ipmi.errors import (
    BmcAuthFailed,
    BmcBusy,
    BmcInvalidInput,
    BmcTimeout,
    BmcUnreachable,
    BmcWrongState,
    IpmiError,
)
from metalflow.integrations.ipmi.guard import CallGuards
from metalflow.integrations.ipmi.keeper import Keeper
from metalflow.integrations.ipmi.readings import BmcTarget, PowerReading, TimedReading, WatchStats
from metalflow.integrations.ipmi.shim import patch_pyghmi, shim_active
from metalflow.integrations.ipmi.watch import PowerWatch, RunStats
from metalflow.integrations.ipmi.wire import BootDevice

__all__ = [
    "BOOT_DEVICES",
    "BmcAuthFailed",
    "BmcBusy",
    "BmcClient",
    "BmcInvalidInput",
    "BmcTarget",
    "BmcTimeout",
    "BmcUnreachable",
    "BmcWrongState",
    "BootDevice",
    "CallGuards",
    "IpmiError",
    "Keeper",
    "PowerReading",
    "PowerWatch",
    "RunStats",
    "TimedReading",
    "WatchStats",
    "patch_pyghmi",
    "shim_active",
]
