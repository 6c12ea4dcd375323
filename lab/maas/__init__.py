"""The MAAS region simulator: REST API 2.0 at ``/MAAS/api/2.0/`` with OAuth 1.0 PLAINTEXT,
MAAS's node state machine, curtin preseeds, and phases driven by the lab's physical world.

Written from the project's MAAS contract notes and MAAS's own source, never from
``integrations.maas``: the two must agree with MAAS independently.
"""

from metalflow.lab.maas.sim import MaasSim
from metalflow.lab.maas.status import NodeStatus
from metalflow.lab.maas.world import IpmiPowerDriver, MachineHooks, PowerDriver, PowerError

__all__ = ["IpmiPowerDriver", "MaasSim", "MachineHooks", "NodeStatus", "PowerDriver", "PowerError"]
