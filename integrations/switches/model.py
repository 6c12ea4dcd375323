"""What a port carries, and the VLAN-list notation switches print ("1,100-102,200").

``PortVlans`` is the one shape every dialect's read-back parser returns. The default VLAN (1)
is never reported: ``untagged is None`` means the port has no untagged VLAN besides the
default one, and ``tagged`` never contains 1. metalflow never changes VLAN 1 membership, so
leaving it out keeps every comparison about the VLANs we manage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_VLAN = 1
MIN_VLAN = 1
MAX_VLAN = 4094
ALL_VLANS = frozenset(range(MIN_VLAN, MAX_VLAN + 1))


@dataclass(frozen=True)
class PortVlans:
    """A port's VLAN membership as read from the switch (default VLAN 1 left out)."""

    untagged: int | None = None
    tagged: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tagged", frozenset(self.tagged) - {DEFAULT_VLAN})
        if self.untagged == DEFAULT_VLAN:
            object.__setattr__(self, "untagged", None)

    def has(self, vlan: int, tagged: bool) -> bool:
        return vlan in self.tagged if tagged else self.untagged == vlan

    def with_added(self, vlan: int, tagged: bool) -> PortVlans:
        if tagged:
            return PortVlans(self.untagged, self.tagged | {vlan})
        return PortVlans(vlan, self.tagged - {vlan})

    def with_removed(self, vlan: int) -> PortVlans:
        untagged = None if self.untagged == vlan else self.untagged
        return PortVlans(untagged, self.tagged - {vlan})

    def __str__(self) -> str:
        tagged = format_vlan_list(self.tagged) or "none"
        return f"untagged {self.untagged or 'none'}, tagged {tagged}"


_RANGE = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)


def parse_vlan_list(text: str) -> frozenset[int]:
    """``"1,100-102 200"`` -> {1, 100, 101, 102, 200}. ``none`` is empty, ``all`` is 1-4094.
    Anything else raises ValueError: a read-back we cannot read is not a read-back."""
    text = text.strip()
    if not text or text.lower() == "none":
        return frozenset()
    if text.lower() == "all":
        return ALL_VLANS
    out: set[int] = set()
    for item in re.split(r"[,\s]+", text):
        if not item:
            continue
        m = _RANGE.fullmatch(item)
        if m is None:
            raise ValueError(f"not a VLAN list item: {item!r}")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if not MIN_VLAN <= lo <= hi <= MAX_VLAN:
            raise ValueError(f"VLAN range out of 1-4094: {item!r}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def format_vlan_list(vlans: Iterable[int]) -> str:
    """{1, 100, 101, 102, 200} -> ``"1,100-102,200"`` (the compact form every CLI accepts)."""
    items = sorted(set(vlans))
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)
