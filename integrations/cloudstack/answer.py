"""What the extension tells CloudStack: one JSON document on stdout and an exit code.

For create/start/stop/reboot/delete CloudStack reads only the exit code; the document is
for its log and the operator. ``status`` is read for ``power_state``, ``prepare``'s document
is a merge patch of the VM (nothing else may be in it), and a custom action's document
becomes the result's details (``printmessage`` makes the UI show ``message``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

POWER_ON, POWER_OFF, POWER_UNKNOWN = "PowerOn", "PowerOff", "PowerUnknown"
# CloudStack reads stdout only after the process exits: far below a pipe buffer (64 KiB), so
# a long message can never block the process until CloudStack's timeout kills it.
MESSAGE_LIMIT = 4000


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[: MESSAGE_LIMIT - 3] + "..."


@dataclass(frozen=True)
class Answer:
    ok: bool
    body: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def success(cls, message: str, **extra: Any) -> Answer:
        return cls(True, {"status": "success", "message": _short(message), **extra})

    @classmethod
    def error(cls, message: str, **extra: Any) -> Answer:
        return cls(False, {"status": "error", "message": _short(message), **extra})

    @classmethod
    def power(cls, state: str, message: str) -> Answer:
        return cls(True, {"status": "success", "power_state": state, "message": message})

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def text(self) -> str:
        return json.dumps(self.body, separators=(",", ":"), default=str)


def no_console() -> Answer:
    """``getconsole`` (4.22): CloudStack forwards a VNC endpoint or a URL; metalflow has neither
    for a bare-metal machine, and says so (exit 1, shown to the user) rather than inventing one."""
    return Answer.error(
        "metalflow offers no console for bare-metal machines (no VNC or serial-over-LAN "
        "proxy): use the machine's BMC or SSH"
    )
