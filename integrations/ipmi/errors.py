"""The IPMI exception family, and the one place where pyghmi's failures get a meaning.

pyghmi reports almost everything as ``IpmiException(text)``: a login that timed out, a wrong
password, a BMC out of session slots. A caller (a Prefect retry condition, the power poll)
needs a class instead: transient (retry later), authentication (fix the credentials), wrong
state (the machine did not do what we asked). ``classify`` turns pyghmi's text or an IPMI
completion code into one of those, naming the BMC and the operation, and scrubs the password
out of any evidence it keeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from metalflow.integrations.common import MetalflowError, Secret
from metalflow.integrations.common.secrets import scrubber


class IpmiError(MetalflowError):
    """A BMC refused or failed a command in a way retrying will not fix (bad completion code,
    protocol trouble). ``target`` is ``address:port``, ``operation`` what we were doing."""


class BmcInvalidInput(IpmiError, ValueError):
    """Bad address, port, credentials or argument, found before anything touched the BMC."""


class BmcUnreachable(IpmiError):
    """The BMC could not be reached (no route, no answer, a dropped session). Transient."""

    transient = True


class BmcTimeout(BmcUnreachable):
    """The BMC did not answer within the deadline: a silent BMC is an unreachable one we
    waited for. Transient."""


class BmcBusy(IpmiError):
    """The BMC answered but cannot serve us now (node busy, out of session slots, still
    initialising). Transient."""

    transient = True


class BmcAuthFailed(IpmiError):
    """The BMC rejected the user, the password or the privilege level. Not transient: retrying
    a wrong password only locks the account on many BMCs."""


class BmcWrongState(IpmiError):
    """The machine is not in the state we asked for (still on after a soft off, a boot device
    that did not stick), or the BMC says the command does not fit its present state."""


# pyghmi's login failures, by the text it raises (pyghmi/ipmi/private/session.py and
# constants.rmcp_codes). Order matters: the first matching fragment wins.
_LOGIN_TEXT: tuple[tuple[str, type[IpmiError]], ...] = (
    ("incorrect password", BmcAuthFailed),
    ("unauthorized name", BmcAuthFailed),
    ("invalid username length", BmcAuthFailed),
    ("unauthorized role", BmcAuthFailed),
    ("invalid role", BmcAuthFailed),
    ("insufficient privilege", BmcAuthFailed),
    ("requesting privelege level", BmcAuthFailed),  # sic, pyghmi's spelling
    ("requesting privilege level", BmcAuthFailed),
    ("username too long", BmcInvalidInput),
    ("password is too long", BmcInvalidInput),
    ("insufficient resources", BmcBusy),
    ("timeout", BmcTimeout),
    ("session no longer connected", BmcUnreachable),
    ("session failed to initialize", BmcUnreachable),
    ("unable to transmit", BmcUnreachable),
)

# IPMI completion codes (IPMI 2.0 table 5-2) that say "not now" rather than "never".
_BUSY_CODES = MappingProxyType(
    {
        0xC0: "node busy",
        0xC3: "timeout while processing",
        0xCE: "response could not be provided",
        0xD2: "BMC initialisation in progress",
    }
)
_AUTH_CODES = MappingProxyType({0xD4: "insufficient privilege level"})
_STATE_CODES = MappingProxyType({0xD5: "command not supported in present state"})
PYGHMI_TIMEOUT_CODE = 0xFFFF  # pyghmi's own code for "no answer after its retries"


def scrub(text: str, password: Secret | None) -> str:
    """``text`` with the password (as text, bytes repr or hex), and every other secret the
    process knows, replaced by ``***`` (the process's scrubber)."""
    s = scrubber()
    s.learn(password)
    return s.scrub(text)


def error_for_code(code: int, *, target: str, operation: str, text: str = "") -> IpmiError:
    """The error for a non-zero IPMI completion code in a response to ``operation``."""
    evidence = f"completion code 0x{code:02X}" + (f": {text}" if text else "")
    if code == PYGHMI_TIMEOUT_CODE:
        return BmcTimeout(
            "the BMC did not answer",
            target=target,
            operation=operation,
            evidence="no response after pyghmi's retransmissions",
        )
    if code in _BUSY_CODES:
        return BmcBusy(f"the BMC is busy ({_BUSY_CODES[code]})", target=target, operation=operation, evidence=evidence)
    if code in _AUTH_CODES:
        return BmcAuthFailed(
            f"the BMC refused the command ({_AUTH_CODES[code]})", target=target, operation=operation, evidence=evidence
        )
    if code in _STATE_CODES:
        return BmcWrongState(
            f"the BMC refused the command ({_STATE_CODES[code]})", target=target, operation=operation, evidence=evidence
        )
    return IpmiError("the BMC rejected the command", target=target, operation=operation, evidence=evidence)


def classify(exc: BaseException, *, target: str, operation: str, password: Secret | None = None) -> IpmiError:
    """Turn whatever pyghmi (or the socket layer under it) raised into our family.

    Unknown Python errors from inside pyghmi (``struct.error`` on a malformed answer, an
    ``AssertionError`` on an unexpected response) are protocol trouble: ``IpmiError``, not
    transient, with the type and message as evidence.
    """
    if isinstance(exc, IpmiError):
        return exc
    text = scrub(str(exc), password)
    evidence = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, OSError):  # socket.gaierror, ENETUNREACH, EPERM from the firewall...
        return BmcUnreachable("cannot reach the BMC", target=target, operation=operation, evidence=evidence)
    if type(exc).__module__.startswith("pyghmi"):
        return classify_text(text, target=target, operation=operation, evidence=evidence)
    return IpmiError("unexpected failure talking to the BMC", target=target, operation=operation, evidence=evidence)


def classify_text(text: str, *, target: str, operation: str, evidence: str = "") -> IpmiError:
    """The error for a pyghmi failure text (raised, or returned in a response's ``error``)."""
    lowered = text.lower()
    for fragment, cls in _LOGIN_TEXT:
        if fragment in lowered:
            return cls(_MESSAGES[cls], target=target, operation=operation, evidence=evidence or text)
    return IpmiError("the BMC session failed", target=target, operation=operation, evidence=evidence or text)


_MESSAGES: Mapping[type[IpmiError], str] = MappingProxyType(
    {
        BmcAuthFailed: "the BMC rejected the credentials",
        BmcInvalidInput: "the credentials do not fit IPMI's limits",
        BmcBusy: "the BMC cannot open a session now",
        BmcTimeout: "the BMC did not answer",
        BmcUnreachable: "lost the session to the BMC",
    }
)
