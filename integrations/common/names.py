"""Names that more than one part of metalflow must spell the same way, and nothing else.

Standard library only, and no metalflow import: the CloudStack extension's ``status`` path
(which must start in milliseconds, without the ORM or Prefect) reads the same names as the
flows that take the locks and the models that make the tables.

Locks are Prefect global concurrency limits (limit 1, leased): ``host-<name>`` serialises the
operations on one host, ``switch-<name>`` the SSH sessions on one switch, ``power-poll`` the
long-running poller.
"""

from __future__ import annotations

import re

POWER_POLL_LIMIT = "power-poll"

#: The inventory's tables (integrations/inventory/models.py), as raw SQL readers name them.
SWITCHES_TABLE = "switches"
HOSTS_TABLE = "hosts"
HOST_NICS_TABLE = "host_nics"
PORT_VLANS_TABLE = "port_vlans"
HOST_EVENTS_TABLE = "host_events"
HOST_CLAIMS_TABLE = "host_claims"
RUN_UNDOS_TABLE = "run_undos"
RUN_LEASES_TABLE = "run_leases"
SWITCH_VLAN_DEFS_TABLE = "switch_vlan_defs"

_NOT_A_NAME = re.compile(r"[^a-z0-9-]+")


def limit_name(kind: str, name: str) -> str:
    """``switch``, ``Tor 1/A`` -> ``switch-tor-1-a``: a limit name Prefect accepts, the same for
    every spelling of one device's name."""
    return f"{kind}-" + _NOT_A_NAME.sub("-", name.lower()).strip("-")


def host_lock_name(host: str) -> str:
    """The limit that serialises every operation on ``host`` (its inventory name)."""
    return limit_name("host", host)


def switch_lock_name(switch: str) -> str:
    """The limit that makes one session the only one on ``switch``."""
    return limit_name("switch", switch)


#: How a run's state message says its changes were undone (``flows.runbook.RolledBack``), as
#: against a run refused before any change: the CloudStack extension holds a machine only
#: after provisions that changed it and failed, never for a refused one (a bad image).
ROLLED_BACK = "rolled back"
ROLLBACK_INCOMPLETE = "ROLLBACK INCOMPLETE"
