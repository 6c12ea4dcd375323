"""Simulated ToR switches: an SSH server per switch with a real CLI dialect netmiko drives.

Dialects: ``force10`` (Dell FTOS/OS9, netmiko ``dell_force10``) and ``cisco_ios`` (netmiko
``cisco_ios``). Each switch keeps a running and a startup configuration; the neutral
``PortVlans`` view of a port is what the lab's world model reads and what drift writes.
See ``server.SwitchSim`` for the fault knobs and the dialect modules for the CLI rules.
"""

from .core import FAULT_MODES
from .dialect import dialect_for, dialects
from .model import PortVlans
from .server import SwitchSim

__all__ = ["FAULT_MODES", "PortVlans", "SwitchSim", "dialect_for", "dialects"]
