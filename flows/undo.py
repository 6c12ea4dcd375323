"""The undos a run can register, by name (issue 18).

A run's undo is written to the inventory before the change it undoes (``Runbook.undo_action``)
as one of these names and JSON parameters, never as code: the process that registered it may
be dead when the undo has to run, and a recovery run (in another process, later) replays it
from the inventory. Each is idempotent: undoing a change that never happened, or twice, is a
no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from metalflow.flows.runbook import Runbook
from metalflow.integrations.inventory import HostInfo
from metalflow.tasks import inventory as inv_t
from metalflow.tasks import ipmi, maas, switches
from metalflow.tasks.inventory import PortState
from metalflow.tasks.ipmi import BootFrom
from metalflow.tasks.maas import WaitFor
from metalflow.tasks.settings import settings

UndoFn = Callable[[Runbook, HostInfo, Mapping[str, Any]], object]


def converge(rb: Runbook, h: HostInfo, state: PortState) -> list[str]:
    """Record ``state`` as the ports' desired VLANs and bring the switches there."""
    return rb.run(switches.converge_ports, h, rb.run(inv_t.want_ports, h, state))


def release_and_wait(rb: Runbook, h: HostInfo, system_id: str, erase: str) -> str:
    """Release with ``erase`` and wait until MAAS has the machine Ready (the erase PXE-boots:
    the caller's undo order has put the ports back on the PXE VLAN before this runs)."""
    result = rb.run(maas.release_machine, h, erase)
    ready = rb.run(maas.wait_for_status, h, system_id, WaitFor.READY, settings().erase_timeout, phase="erase")
    return f"{result}; {ready.status.label}"


def _rename(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return rb.run(maas.rename_machine, h, str(p["name"]))


def _power_off(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return rb.run(ipmi.power_off, h)


def _release(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return release_and_wait(rb, h, str(p["system_id"]), str(p["erase"]))


def _untag(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return rb.run(maas.untag_machine, h, [str(x) for x in p["prefixes"]])


def _remove_preseeds(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return rb.run(maas.remove_preseeds, h, str(p["hostname"]))


def _boot_device(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return rb.run(ipmi.set_boot_device, h, BootFrom(p["device"]), bool(p["persistent"]))


def _ports(rb: Runbook, h: HostInfo, p: Mapping[str, Any]) -> object:
    return converge(rb, h, PortState(p["state"]))


#: Every undo action a run may register and a recovery may replay.
ACTIONS: Mapping[str, UndoFn] = MappingProxyType(
    {
        "rename": _rename,
        "power-off": _power_off,
        "release-with-erase": _release,
        "untag": _untag,
        "remove-preseeds": _remove_preseeds,
        "boot-device": _boot_device,
        "ports": _ports,
    }
)
