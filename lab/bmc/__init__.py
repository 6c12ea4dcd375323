"""Simulated IPMI BMCs (IPMI 2.0 / RMCP+ over UDP), one per simulated server.

``BmcFleet`` serves many BMCs, each on its own address and port, from a few child processes;
pyghmi and ``ipmitool -I lanplus`` (cipher suites 3 and 17) can drive them. The machine
behind each BMC (power, boot device, soft-off, faults) is ``model.Machine``; every power
transition reaches the main process as a ``BmcEvent``.
"""

from metalflow.lab.bmc.fleet import BmcFleet, BmcFleetError, BmcStartError
from metalflow.lab.bmc.model import BOOT_DEVICE_CODES, FAULT_MODES, BmcEvent, BmcState

__all__ = [
    "BOOT_DEVICE_CODES",
    "FAULT_MODES",
    "BmcEvent",
    "BmcFleet",
    "BmcFleetError",
    "BmcStartError",
    "BmcState",
]
