"""The neutral port model and the immutable switch configuration it is read from.

``PortVlans`` is the contract between the switch simulator and the rest of the lab: what a
port carries, whatever CLI dialect configured it. Each dialect stores what its CLI can
express (FTOS: membership per VLAN interface; IOS: mode, access, native and allowed VLANs) in
its own frozen port record and maps it onto ``PortVlans``; see the dialect modules for the
mapping rules.

``Config`` is immutable: a change builds a new one. That makes running vs. startup config,
"write memory" and the "read back the state before the last change" fault plain reference
assignments, with no copying discipline to get wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Generic, TypeVar

VLAN_MIN = 1
VLAN_MAX = 4094
DEFAULT_VLAN = 1


def valid_vlan(vid: int) -> bool:
    return VLAN_MIN <= vid <= VLAN_MAX


@dataclass(frozen=True)
class PortVlans:
    """What a port carries: one untagged (native) VLAN and a set of tagged VLANs.

    ``untagged is None`` means the port only carries the switch's default VLAN 1 untagged;
    an ``untagged`` of 1 is normalised to None so that equal states compare equal.
    """

    untagged: int | None = None
    tagged: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        untagged = self.untagged
        if untagged is not None:
            if isinstance(untagged, bool) or not isinstance(untagged, int) or not valid_vlan(untagged):
                raise ValueError(f"untagged VLAN must be 1..4094 or None, got {untagged!r}")
            if untagged == DEFAULT_VLAN:
                object.__setattr__(self, "untagged", None)
        tagged = frozenset(self.tagged)
        bad = sorted(v for v in tagged if isinstance(v, bool) or not isinstance(v, int) or not valid_vlan(v))
        if bad:
            raise ValueError(f"tagged VLANs must be 1..4094, got {bad[:5]!r}")
        object.__setattr__(self, "tagged", tagged)
        native = self.untagged if self.untagged is not None else DEFAULT_VLAN
        if native in tagged:
            raise ValueError(f"VLAN {native} cannot be both untagged (native) and tagged on one port")

    def to_json(self) -> dict[str, Any]:
        return {"untagged": self.untagged, "tagged": sorted(self.tagged)}


P = TypeVar("P")


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Config(Generic[P]):
    """One complete switch configuration (running or startup), never mutated in place."""

    vlans: Mapping[int, str]  # VLAN id -> name ("" when the dialect's default applies)
    ports: Mapping[str, P]  # canonical port name -> the dialect's port record

    def __post_init__(self) -> None:
        object.__setattr__(self, "vlans", _frozen(self.vlans))
        object.__setattr__(self, "ports", _frozen(self.ports))

    def with_port(self, name: str, port: P) -> Config[P]:
        ports = dict(self.ports)
        ports[name] = port
        return replace(self, ports=ports)

    def with_ports(self, changes: Mapping[str, P]) -> Config[P]:
        ports = dict(self.ports)
        ports.update(changes)
        return replace(self, ports=ports)

    def with_vlan(self, vid: int, name: str = "") -> Config[P]:
        vlans = dict(self.vlans)
        vlans[vid] = name
        return replace(self, vlans=vlans)

    def without_vlan(self, vid: int) -> Config[P]:
        vlans = dict(self.vlans)
        vlans.pop(vid, None)
        return replace(self, vlans=vlans)


def ranges(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted numbers folded into inclusive runs: [1, 2, 3, 5] -> [(1, 3), (5, 5)]."""
    runs: list[tuple[int, int]] = []
    for n in sorted(set(numbers)):
        if runs and runs[-1][1] == n - 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def format_vlan_list(numbers: Iterable[int]) -> str:
    """Cisco/FTOS VLAN list notation: "1-3,5"."""
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges(numbers))


_VLAN_LIST_CHARS = re.compile(r"^[0-9,\-]+$")


@dataclass(frozen=True)
class VlanListError:
    """Where a VLAN list went wrong: 1-based character index and the delimiter found there."""

    position: int
    delimiter: str  # the character at ``position`` or "EOL"
    out_of_range: bool


def parse_vlan_list(text: str) -> frozenset[int] | VlanListError:
    """Parse "1,3-5" into VLAN ids, or say where it fails (as IOS's "Bad VLAN list" does)."""
    if not _VLAN_LIST_CHARS.match(text):
        bad = next(i for i, c in enumerate(text) if not (c.isdigit() or c in ",-"))
        return VlanListError(bad + 1, text[bad], False)
    result: set[int] = set()
    pos = 0
    for item in text.split(","):
        end = pos + len(item)
        delim = "EOL" if end >= len(text) else text[end]
        parts = item.split("-")
        if len(parts) > 2 or any(not p for p in parts):
            return VlanListError(end + 1, delim, False)
        lo, hi = int(parts[0]), int(parts[-1])
        if not (valid_vlan(lo) and valid_vlan(hi)):
            return VlanListError(end + 1, delim, True)
        if lo > hi:
            return VlanListError(end + 1, delim, False)
        result.update(range(lo, hi + 1))
        pos = end + 1
    return frozenset(result)
