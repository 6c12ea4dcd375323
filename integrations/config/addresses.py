"""Host addresses as the configuration inputs give them (the settings string's ``MaasIP``, a
switch's ``ip``, a BMC's address), checked one way for every reader.

MAC addresses are :func:`metalflow.integrations.common.values.parse_mac`'s: one normaliser.
"""

from __future__ import annotations

import ipaddress

from metalflow.integrations.common.values import BadValue, parse_address


def valid_address(host: object) -> bool:
    """Whether ``host`` is, exactly as written, an IPv4/IPv6 address or a DNS host name
    (``values.parse_address``; callers name the field in their own words)."""
    try:
        parse_address(host)
    except BadValue:
        return False
    return True


def address_key(address: str) -> str:
    """One spelling per address, to find the same switch written twice (``fd00::5`` and
    ``fd00:0::5``, ``tor.example.`` and ``TOR.example``)."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address.lower().rstrip(".")
