"""The switch exception family: what went wrong, on which switch and port, with the evidence.

A caller (a Prefect retry condition, the audit flow) needs a class, not a CLI transcript:
``transient`` says whether the same call may succeed later (a refused connection, a dropped
session, a configuration database locked by another session); everything else is about the
input, the credentials or the switch's state and will not fix itself.

Every message names the switch (``address:port``) and, where there is one, the port; the
evidence is a short excerpt of what the switch said, with the password and enable secret
scrubbed out by the driver before it gets here.
"""

from __future__ import annotations

from typing import Any

from metalflow.integrations.common import MetalflowError


class SwitchError(MetalflowError):
    """A switch operation failed. ``target`` is ``address:port`` (plus ``port X`` when the
    failure concerns one port), ``operation`` what we were doing."""

    def __init__(self, message: str, *, target: str = "", operation: str = "", evidence: str = "", **details: Any):
        super().__init__(message, target=target, operation=operation, evidence=evidence)
        for name, value in details.items():
            setattr(self, name, value)


class UnknownSwitchType(SwitchError, ValueError):
    """The rack config names a switch type no dialect speaks."""


class InvalidSwitchSettings(SwitchError, ValueError):
    """A bad address, SSH port, username or timeout, found before any connection."""


class InvalidPort(SwitchError, ValueError):
    """A port name does not match the dialect's grammar (found before any connection)."""


class InvalidVlan(SwitchError, ValueError):
    """A VLAN id outside 2..4094 (VLAN 1 is the default VLAN, which metalflow never changes)."""


class SwitchUnreachable(SwitchError):
    """No SSH session could be opened within the deadline (refused, reset, timed out). Transient."""

    transient = True


class SwitchSessionLost(SwitchUnreachable):
    """An open session died or stopped answering mid-batch. ``applied`` lists the changes that
    were verified before it happened (running config, not saved); a rerun converges because
    every change reads the port first. Transient."""

    applied: tuple[str, ...] = ()


class SwitchAuthFailed(SwitchError):
    """The switch rejected the username, password or enable secret. Never retried: a wrong
    password does not get better, and retrying may lock the account."""


class SwitchCommandFailed(SwitchError):
    """The switch answered a CLI line with an error. ``line`` is the offending line,
    ``transient`` is true for the retryable kind (configuration locked or busy)."""

    line: str = ""


class SwitchVerifyFailed(SwitchError):
    """The port read back after a change is not what the change should have produced."""

    port: str = ""
    expected: object = None
    observed: object = None


class SwitchWrongState(SwitchError):
    """The port's present state forbids the change (e.g. untagged in another VLAN: remove that
    membership first). Not transient: the caller must change the plan."""


class SwitchNotSupported(SwitchError):
    """The dialect has no commands for this operation (the VLAN table and VLAN deletion exist
    for the simulated dialects only: no commands are guessed for switches nothing tested).
    Found before any connection; not transient."""


class SwitchParseError(SwitchError):
    """The read-back output could not be understood: we will not guess a port's VLANs."""
