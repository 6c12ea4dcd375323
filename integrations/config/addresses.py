"""Host addresses and MAC addresses as the configuration inputs give them, checked and
normalised one way for every reader (the settings string, the rack config, the inventory's
host records)."""

from __future__ import annotations

import ipaddress
import re

from metalflow.integrations.config.problems import show

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def valid_address(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 address or a DNS host name."""
    return isinstance(host, str) and _valid_host(host)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not re.fullmatch(r"[\d.]+", host)


_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(value: str) -> str:
    """``00:18:8b:52:79:80`` from ``00-18-8B-52-79-80``, ``00188b527980`` or ``0018.8b52.7980``.
    Raises ValueError for anything else (callers add the field name)."""
    if not isinstance(value, str):
        raise ValueError(f"{show(value)} is not a MAC address (expected like 00:18:8b:52:79:80)")
    v = value.strip().lower()
    if re.fullmatch(r"[0-9a-f]{1,2}([:-][0-9a-f]{1,2}){5}", v):
        digits = "".join(p.zfill(2) for p in re.split(r"[:-]", v))
    elif re.fullmatch(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}", v):
        digits = v.replace(".", "")
    else:
        digits = v
    if not _HEX12.match(digits):
        raise ValueError(f"{show(value)} is not a MAC address (expected like 00:18:8b:52:79:80)")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def address_key(address: str) -> str:
    """One spelling per address, to find the same switch written twice (``fd00::5`` and
    ``fd00:0::5``, ``tor.example.`` and ``TOR.example``)."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address.lower().rstrip(".")
