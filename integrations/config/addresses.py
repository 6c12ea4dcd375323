"""Host addresses as the configuration inputs give them (the settings string's ``MaasIP``, a
switch's ``ip``, a BMC's address), checked one way for every reader.

MAC addresses are :func:`metalflow.integrations.common.values.parse_mac`'s: one normaliser.
"""

from __future__ import annotations

import ipaddress
import re

#: A DNS host name: labels of letters, digits and dashes (no dash at either end), 253
#: characters in all, an optional root dot. ASCII only and matched whole (``fullmatch``), so
#: ``"tor-1\n"`` or ``"tor-１"`` is not a host name.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
    re.ASCII,
)
_DOTTED_DIGITS = re.compile(r"[0-9.]+", re.ASCII)


def valid_address(host: object) -> bool:
    """Whether ``host`` is, exactly as written, an IPv4/IPv6 address or a DNS host name.

    Nothing is stripped, and an IPv6 zone (``fe80::1%eth0``) is refused: ``ipaddress`` takes any
    text after ``%``, a newline included, and a zone means nothing to a remote switch or MAAS."""
    if not isinstance(host, str) or not host.isascii() or "%" in host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        # "10.0.0.300" is a bad IPv4 address, not a host name made of digits.
        return bool(_HOSTNAME.fullmatch(host)) and not _DOTTED_DIGITS.fullmatch(host)


def address_key(address: str) -> str:
    """One spelling per address, to find the same switch written twice (``fd00::5`` and
    ``fd00:0::5``, ``tor.example.`` and ``TOR.example``)."""
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address.lower().rstrip(".")
