"""Port lists as switches print them: ``1/1/2-1/1/4,1/1/6`` (OS9), ``0/1-3`` (range on the
last number), ``ethe 1/1/1 to 1/1/4 ethe 1/1/7`` (FastIron). Numbers only: the interface
type is matched by the caller."""

from __future__ import annotations

import re

_ITEM = re.compile(r"(\d+(?:/\d+)*)(?:-(\d+(?:/\d+)*))?")


def _span(lo: str, hi: str) -> set[str]:
    """All port numbers from ``lo`` to ``hi``, which differ only in their last number."""
    lo_parts, hi_parts = lo.split("/"), hi.split("/")
    if len(hi_parts) == 1:
        hi_parts = lo_parts[:-1] + hi_parts
    if len(hi_parts) != len(lo_parts) or hi_parts[:-1] != lo_parts[:-1]:
        raise ValueError(f"port range {lo}-{hi} spans more than one module")
    first, last = int(lo_parts[-1]), int(hi_parts[-1])
    if last < first:
        raise ValueError(f"port range {lo}-{hi} runs backwards")
    prefix = "/".join(lo_parts[:-1])
    return {f"{prefix}/{n}" if prefix else str(n) for n in range(first, last + 1)}


def expand_ports(text: str) -> set[str]:
    """``"1/1/2-1/1/4,1/1/6"`` -> {"1/1/2", "1/1/3", "1/1/4", "1/1/6"}."""
    out: set[str] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        m = _ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"not a port list item: {item!r}")
        out |= _span(m.group(1), m.group(2)) if m.group(2) else {m.group(1)}
    return out


def expand_fastiron(text: str) -> set[str]:
    """``"ethe 1/1/1 to 1/1/4 ethe 1/1/7"`` -> {"1/1/1", ..., "1/1/4", "1/1/7"}."""
    out: set[str] = set()
    tokens = text.split()
    i = 0
    while i < len(tokens):
        if not re.fullmatch(r"(?i)e|eth|ethe|ethernet", tokens[i]) or i + 1 >= len(tokens):
            raise ValueError(f"not a FastIron port list: {text!r}")
        lo = tokens[i + 1]
        if i + 3 < len(tokens) and tokens[i + 2].lower() == "to":
            out |= _span(lo, tokens[i + 3])
            i += 4
        else:
            if not re.fullmatch(r"\d+(?:/\d+)*", lo):
                raise ValueError(f"not a port number: {lo!r}")
            out.add(lo)
            i += 2
    return out
