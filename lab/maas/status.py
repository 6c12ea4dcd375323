"""MAAS node statuses and the one table of what may follow what.

Numbers and labels are MAAS's (``maascommon/enums/node.py``, ``NODE_STATUS_CHOICES``); the
transition table is MAAS's ``NODE_TRANSITIONS`` (``src/maasserver/node_status.py``) restricted
to what a machine can do, and ``ACTIONS`` says from which statuses each API action starts.
They are written out here on purpose, not imported from the client: the duplication is the
check that client and simulator agree with MAAS independently.
"""

from __future__ import annotations

from enum import IntEnum


class NodeStatus(IntEnum):
    NEW = 0
    COMMISSIONING = 1
    FAILED_COMMISSIONING = 2
    MISSING = 3
    READY = 4
    RESERVED = 5
    DEPLOYED = 6
    RETIRED = 7
    BROKEN = 8
    DEPLOYING = 9
    ALLOCATED = 10
    FAILED_DEPLOYMENT = 11
    RELEASING = 12
    FAILED_RELEASING = 13
    DISK_ERASING = 14
    FAILED_DISK_ERASING = 15
    RESCUE_MODE = 16
    ENTERING_RESCUE_MODE = 17
    FAILED_ENTERING_RESCUE_MODE = 18
    EXITING_RESCUE_MODE = 19
    FAILED_EXITING_RESCUE_MODE = 20
    TESTING = 21
    FAILED_TESTING = 22

    @property
    def label(self) -> str:
        """MAAS's ``status_name`` (not always the capitalised enum name: 13 is "Releasing failed")."""
        return LABELS[self]

    @property
    def filter_name(self) -> str:
        """The value of the ``status`` filter of ``GET machines/`` (``failed_deployment``)."""
        return self.name.lower()


S = NodeStatus

LABELS: dict[NodeStatus, str] = {
    S.NEW: "New",
    S.COMMISSIONING: "Commissioning",
    S.FAILED_COMMISSIONING: "Failed commissioning",
    S.MISSING: "Missing",
    S.READY: "Ready",
    S.RESERVED: "Reserved",
    S.DEPLOYED: "Deployed",
    S.RETIRED: "Retired",
    S.BROKEN: "Broken",
    S.DEPLOYING: "Deploying",
    S.ALLOCATED: "Allocated",
    S.FAILED_DEPLOYMENT: "Failed deployment",
    S.RELEASING: "Releasing",
    S.FAILED_RELEASING: "Releasing failed",
    S.DISK_ERASING: "Disk erasing",
    S.FAILED_DISK_ERASING: "Failed disk erasing",
    S.RESCUE_MODE: "Rescue mode",
    S.ENTERING_RESCUE_MODE: "Entering rescue mode",
    S.FAILED_ENTERING_RESCUE_MODE: "Failed to enter rescue mode",
    S.EXITING_RESCUE_MODE: "Exiting rescue mode",
    S.FAILED_EXITING_RESCUE_MODE: "Failed to exit rescue mode",
    S.TESTING: "Testing",
    S.FAILED_TESTING: "Failed testing",
}

_TESTING_RESET = {
    S.COMMISSIONING,
    S.FAILED_DEPLOYMENT,
    S.MISSING,
    S.RETIRED,
    S.BROKEN,
    S.FAILED_RELEASING,
    S.FAILED_DISK_ERASING,
    S.FAILED_ENTERING_RESCUE_MODE,
    S.FAILED_EXITING_RESCUE_MODE,
    S.FAILED_TESTING,
}

# status -> the statuses it may move to. Every status change of the simulator is checked
# against this table, so a flow that MAAS would refuse cannot happen here by accident.
TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    s: frozenset(targets)
    for s, targets in {
        S.NEW: {S.COMMISSIONING, S.MISSING, S.READY, S.RETIRED, S.BROKEN, S.ENTERING_RESCUE_MODE},
        S.COMMISSIONING: {S.FAILED_COMMISSIONING, S.READY, S.RETIRED, S.MISSING, S.NEW, S.BROKEN, S.TESTING},
        S.FAILED_COMMISSIONING: {S.COMMISSIONING, S.MISSING, S.RETIRED, S.BROKEN, S.ENTERING_RESCUE_MODE, S.TESTING},
        S.READY: {
            S.ENTERING_RESCUE_MODE,
            S.COMMISSIONING,
            S.ALLOCATED,
            S.RESERVED,
            S.RETIRED,
            S.MISSING,
            S.BROKEN,
            S.TESTING,
        },
        S.RESERVED: {
            S.READY,
            S.ALLOCATED,
            S.RETIRED,
            S.MISSING,
            S.BROKEN,
            S.DISK_ERASING,
            S.RELEASING,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
        },
        S.ALLOCATED: {
            S.READY,
            S.RETIRED,
            S.MISSING,
            S.BROKEN,
            S.DEPLOYING,
            S.DISK_ERASING,
            S.RELEASING,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
        },
        S.RELEASING: {
            S.ALLOCATED,
            S.RESERVED,
            S.DEPLOYED,
            S.READY,
            S.BROKEN,
            S.MISSING,
            S.FAILED_DEPLOYMENT,
            S.FAILED_DISK_ERASING,
            S.FAILED_RELEASING,
        },
        S.DEPLOYING: {
            S.ALLOCATED,
            S.MISSING,
            S.BROKEN,
            S.FAILED_DEPLOYMENT,
            S.DEPLOYED,
            S.READY,
            S.DISK_ERASING,
            S.RELEASING,
        },
        S.FAILED_DEPLOYMENT: {
            S.ALLOCATED,
            S.MISSING,
            S.BROKEN,
            S.READY,
            S.DISK_ERASING,
            S.RELEASING,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
        },
        S.DEPLOYED: {
            S.ALLOCATED,
            S.MISSING,
            S.BROKEN,
            S.READY,
            S.DISK_ERASING,
            S.RELEASING,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
        },
        S.MISSING: {S.NEW, S.READY, S.ALLOCATED, S.COMMISSIONING, S.BROKEN, S.ENTERING_RESCUE_MODE, S.TESTING},
        S.RETIRED: {S.NEW, S.READY, S.MISSING, S.BROKEN, S.ENTERING_RESCUE_MODE, S.TESTING},
        # DEPLOYED: mark_fixed returns a machine that was broken while deployed to Deployed.
        S.BROKEN: {
            S.COMMISSIONING,
            S.READY,
            S.DEPLOYED,
            S.DISK_ERASING,
            S.RELEASING,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
        },
        S.FAILED_RELEASING: {S.RELEASING, S.DISK_ERASING, S.READY, S.BROKEN, S.TESTING},
        S.DISK_ERASING: {S.BROKEN, S.DISK_ERASING, S.FAILED_DISK_ERASING, S.READY, S.RELEASING},
        S.FAILED_DISK_ERASING: {
            S.DISK_ERASING,
            S.RELEASING,
            S.BROKEN,
            S.ALLOCATED,
            S.READY,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
        },
        S.ENTERING_RESCUE_MODE: {
            S.READY,
            S.BROKEN,
            S.DEPLOYED,
            S.RESCUE_MODE,
            S.FAILED_ENTERING_RESCUE_MODE,
            S.EXITING_RESCUE_MODE,
        },
        S.FAILED_ENTERING_RESCUE_MODE: {S.BROKEN, S.ENTERING_RESCUE_MODE, S.EXITING_RESCUE_MODE, S.TESTING},
        S.RESCUE_MODE: {S.BROKEN, S.EXITING_RESCUE_MODE, S.TESTING},
        S.EXITING_RESCUE_MODE: {
            S.NEW,
            S.BROKEN,
            S.FAILED_COMMISSIONING,
            S.READY,
            S.RESERVED,
            S.ALLOCATED,
            S.FAILED_DEPLOYMENT,
            S.DEPLOYED,
            S.MISSING,
            S.RETIRED,
            S.FAILED_RELEASING,
            S.FAILED_DISK_ERASING,
            S.RESCUE_MODE,
            S.FAILED_ENTERING_RESCUE_MODE,
            S.FAILED_EXITING_RESCUE_MODE,
            S.FAILED_TESTING,
        },
        S.FAILED_EXITING_RESCUE_MODE: {S.BROKEN, S.EXITING_RESCUE_MODE, S.TESTING},
        S.TESTING: {S.BROKEN, S.NEW, S.READY, S.RESERVED, S.ALLOCATED, S.DEPLOYED} | _TESTING_RESET,
        S.FAILED_TESTING: {
            S.COMMISSIONING,
            S.BROKEN,
            S.MISSING,
            S.ENTERING_RESCUE_MODE,
            S.TESTING,
            S.READY,
            S.DEPLOYED,
        },
    }.items()
}

RELEASABLE = frozenset(
    {
        S.ALLOCATED,
        S.RESERVED,
        S.BROKEN,
        S.DEPLOYING,
        S.DEPLOYED,
        S.FAILED_DEPLOYMENT,
        S.FAILED_DISK_ERASING,
        S.FAILED_RELEASING,
    }
)

# API action -> statuses it may start from (node_action.py and the API handlers).
ACTIONS: dict[str, frozenset[NodeStatus]] = {
    "allocate": frozenset({S.READY}),
    "deploy": frozenset({S.READY, S.ALLOCATED}),  # READY is auto-allocated first
    "release": RELEASABLE,
    "commission": frozenset({S.NEW, S.READY, S.FAILED_COMMISSIONING, S.BROKEN}),
    "mark_fixed": frozenset({S.BROKEN}),
    "abort": frozenset({S.COMMISSIONING, S.DISK_ERASING, S.DEPLOYING, S.TESTING}),
    "edit_interfaces": frozenset({S.NEW, S.READY, S.FAILED_TESTING, S.ALLOCATED, S.BROKEN}),
}

# In-progress status -> (its failed status, the operation name MAAS puts in its timeout message).
PHASES: dict[NodeStatus, tuple[NodeStatus, str]] = {
    S.COMMISSIONING: (S.FAILED_COMMISSIONING, "Commissioning"),
    S.DEPLOYING: (S.FAILED_DEPLOYMENT, "Deploying"),
    S.RELEASING: (S.FAILED_RELEASING, "Releasing"),
    S.DISK_ERASING: (S.FAILED_DISK_ERASING, "Disk erasing"),
    S.TESTING: (S.FAILED_TESTING, "Testing"),
}


def allowed(action: str, status: NodeStatus) -> bool:
    return status in ACTIONS[action]


def can_move(old: NodeStatus, new: NodeStatus) -> bool:
    return new in TRANSITIONS[old]
