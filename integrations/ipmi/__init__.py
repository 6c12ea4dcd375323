"""IPMI: a power interface for one BMC (``BmcClient``, after Ironic's) and a bulk power reader
for the power poll (``BulkPowerReader``), a continuous staggered reader for the long-running
poll (``PowerWatch``), all on pyghmi with our own deadlines, plus the shim
that closes pyghmi 1.6.19's lost wake-up race (``patch_pyghmi``)."""

from metalflow.integrations.ipmi.bulk import BmcTarget, BulkPowerReader, PowerReading
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
from metalflow.integrations.ipmi.shim import patch_pyghmi, shim_active
from metalflow.integrations.ipmi.watch import PowerWatch, TimedReading, WatchStats
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
    "BulkPowerReader",
    "IpmiError",
    "PowerReading",
    "PowerWatch",
    "TimedReading",
    "WatchStats",
    "patch_pyghmi",
    "shim_active",
]
