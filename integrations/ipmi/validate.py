"""Offline checks of a BMC's address, port and credentials (nothing touches the network).

Limits are IPMI 2.0's: a user name of at most 16 bytes, a password of at most 20 bytes
(RMCP+ "key" length). Messages name the field and the fix, and never show the password.
"""

from __future__ import annotations

from metalflow.integrations.common import Secret
from metalflow.integrations.common.values import BadValue, parse_address, parse_tcp_port
from metalflow.integrations.ipmi.errors import BmcInvalidInput

MAX_USERNAME = 16
MAX_PASSWORD = 20


def _bad(field: str, problem: str, target: str) -> BmcInvalidInput:
    return BmcInvalidInput(f"{field}: {problem}", target=target, operation="validate")


def check_address(address: object, target: str = "") -> str:
    try:
        return parse_address(address, "address")
    except BadValue as exc:
        raise _bad("address", exc.reason.replace("an IP address", "the BMC's IP address", 1), target) from None


def check_port(port: object, target: str = "") -> int:
    """An int port by ``values.parse_tcp_port`` (never a bool), as BmcInvalidInput. Text is
    refused: the client is called with a parsed port, and a string here is a caller's slip."""
    if not isinstance(port, int):
        raise _bad("port", f"expected the port as a number, got {type(port).__name__}; use 623", target)
    try:
        return parse_tcp_port(port, "port")
    except BadValue as exc:
        raise _bad("port", f"{exc.reason}; use 623 unless the BMC says otherwise", target) from None


def check_username(username: object, target: str = "") -> bytes:
    if isinstance(username, str):
        raw = username.encode("utf-8")
    elif isinstance(username, bytes):
        raw = username
    else:
        raise _bad("username", "missing; give the BMC user name", target)
    if not raw:
        raise _bad("username", "empty; give the BMC user name", target)
    if len(raw) > MAX_USERNAME:
        raise _bad("username", f"longer than {MAX_USERNAME} bytes, the IPMI limit", target)
    if b"\x00" in raw:
        raise _bad("username", "contains a NUL byte", target)
    return raw


def check_password(password: object, target: str = "") -> Secret:
    """The password as a ``Secret``; the message says what is wrong, never what it is."""
    if isinstance(password, (str, bytes)):
        password = Secret(password)
    if not isinstance(password, Secret):
        raise _bad("password", "missing; give the BMC password (a string, bytes or Secret)", target)
    raw = password.reveal_bytes()
    if not raw:
        raise _bad("password", "empty; give the BMC password", target)
    if len(raw) > MAX_PASSWORD:
        raise _bad("password", f"longer than {MAX_PASSWORD} bytes, the IPMI 2.0 limit", target)
    return password
