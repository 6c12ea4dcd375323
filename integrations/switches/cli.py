"""One SSH CLI session to a switch: netmiko logs in, our own loop sends lines.

netmiko does the parts that differ per vendor and are hard to get right: the SSH login, the
banner and paging quirks, the enable password. After that we drive the channel ourselves:
write one line, read until the next prompt (any mode: ``sw#``, ``sw(config-if)#``,
``user@sw#``), within a timeout we choose, and notice at once when the switch closes the
channel. netmiko's own ``send_config_set`` would need its timing-based reads (seconds of
fixed waits on some platforms) and cannot tell which line was the last one applied.

Everything here raises the switch exception family; the driver adds the operation context.
"""

from __future__ import annotations

import re
import select
import time
from typing import Any, Protocol

import paramiko
from netmiko.base_connection import BaseConnection
from netmiko.exceptions import (
    NetmikoAuthenticationException,
    NetmikoBaseException,
    NetmikoTimeoutException,
)
from netmiko.ssh_dispatcher import CLASS_MAPPER

from metalflow.integrations.common import Secret
from metalflow.integrations.switches.errors import SwitchAuthFailed, SwitchSessionLost, SwitchUnreachable

POLL = 0.05  # longest wait for channel data before re-checking the deadline and session


class Cli(Protocol):
    """What the driver needs from a session (a fake in unit tests, netmiko in real life)."""

    prompt: str  # the last prompt seen

    def send(self, line: str, *, timeout: float, confirm: tuple[str, str] | None = None) -> str:
        """Send one line; return the switch's answer without the echo and the prompt.
        ``confirm`` is (question regex, answer) for a command that asks (y/n)."""
        ...

    def close(self, *, graceful: bool = True) -> None: ...


class NetmikoCli:
    """A logged-in netmiko connection, driven line by line."""

    def __init__(self, conn: BaseConnection, target: str):
        self._conn = conn
        self._target = target
        self.prompt = conn.base_prompt
        # Any prompt that starts with the base prompt and ends in # or >, on a line of its own.
        self._prompt_re = re.compile(rf"(?m)^{re.escape(conn.base_prompt)}[^\n]*?[#>]\s*$")

    def send(self, line: str, *, timeout: float, confirm: tuple[str, str] | None = None) -> str:
        if timeout <= 0:
            raise SwitchSessionLost(
                "the operation's deadline was spent before the switch answered",
                target=self._target,
                evidence=f"pending line: {line}",
            )
        conn = self._conn
        end = time.monotonic() + timeout
        try:
            conn.write_channel(conn.normalize_cmd(line))
            buf = ""
            answered = False
            while True:
                chunk = conn.read_channel()
                if chunk:
                    buf += chunk
                    m = self._prompt_re.search(buf)
                    if m:
                        self.prompt = m.group(0).strip()
                        return _strip_echo(buf[: m.start()], line)
                    if confirm and not answered and re.search(confirm[0], buf):
                        conn.write_channel(conn.normalize_cmd(confirm[1]))
                        answered = True
                    continue
                if self._dead():
                    raise SwitchSessionLost(
                        "the switch closed the session", target=self._target, evidence=f"after sending: {line}"
                    )
                if time.monotonic() >= end:
                    raise SwitchSessionLost(
                        f"the switch did not answer within {timeout:.1f} s",
                        target=self._target,
                        evidence=f"after sending: {line}",
                    )
                self._wait_readable(min(POLL, max(0.0, end - time.monotonic())))
        except (OSError, EOFError, paramiko.SSHException, NetmikoBaseException) as exc:
            raise SwitchSessionLost(
                f"the session failed: {type(exc).__name__}",
                target=self._target,
                evidence=f"after sending: {line}",
            ) from None

    def _wait_readable(self, timeout: float) -> None:
        """Sleep until the channel has data (or ``timeout``): no fixed polling delay per reply,
        which made a batch of changes cost several times what the switch itself takes."""
        chan = self._conn.remote_conn
        try:
            select.select([chan], [], [], timeout)
        except (ValueError, OSError, TypeError, AttributeError):
            time.sleep(min(timeout, 0.002))

    def _dead(self) -> bool:
        # A paramiko Channel: netmiko types it as any of its transports, but open_netmiko only
        # opens SSH sessions (and paramiko has no stubs).
        chan: Any = self._conn.remote_conn
        if chan is None or chan.closed or chan.eof_received:
            return True
        transport = chan.get_transport()
        return transport is None or not transport.is_active()

    def close(self, *, graceful: bool = True) -> None:
        """Log out. A session that is dead or out of sync gets only a short grace period:
        netmiko's logout reads the channel and must not hang on a silent switch."""
        self._conn.read_timeout_override = 2.0 if graceful else 0.2
        try:
            self._conn.disconnect()
        except Exception:  # noqa: BLE001 - closing is best effort; the socket goes regardless
            pass


def _strip_echo(text: str, line: str) -> str:
    """The answer without the echoed command (first line, when it is the echo)."""
    first, _, rest = text.partition("\n")
    if line.strip() and line.strip() in first:
        return rest.strip("\n")
    return text.strip("\n")


def open_netmiko(
    netmiko_class: type | None,
    device_type: str,
    host: str,
    port: int,
    username: str,
    password: Secret,
    enable_secret: Secret | None,
    timeout: float,
) -> NetmikoCli:
    """Log in with netmiko and enter privileged mode. Authentication failures (password or
    enable secret) raise SwitchAuthFailed; everything else about reaching the switch raises
    SwitchUnreachable, which the caller retries. netmiko's messages carry the host and port
    but no secret; we keep only the exception's class name and a scrubbed first line anyway."""
    cls = netmiko_class or CLASS_MAPPER[device_type]
    target = f"{host}:{port}"
    timeout = max(0.5, timeout)
    try:
        conn = cls(
            host=host,
            port=port,
            username=username,
            password=password.reveal(),
            secret=enable_secret.reveal() if enable_secret else "",
            device_type=device_type,
            conn_timeout=min(10.0, timeout),
            banner_timeout=timeout,
            auth_timeout=timeout,
            blocking_timeout=timeout,
            read_timeout_override=timeout,
            fast_cli=True,
            use_keys=False,
            allow_agent=False,
            ssh_config_file=None,
        )
    except (NetmikoAuthenticationException, paramiko.AuthenticationException):
        raise SwitchAuthFailed(
            "the switch rejected the username or password",
            target=target,
            operation="login",
            evidence=f"user {username}",
        ) from None
    except ValueError as exc:
        if "enable mode" in str(exc):  # platforms that enter enable during the login itself
            raise SwitchAuthFailed("the switch rejected the enable secret", target=target, operation="enable") from None
        raise SwitchUnreachable(
            "the switch did not present a usable prompt",
            target=target,
            operation="login",
            evidence=_first_line(exc, password, enable_secret),
        ) from None
    except (
        TimeoutError,
        NetmikoTimeoutException,
        paramiko.SSHException,
        OSError,
        EOFError,
        NetmikoBaseException,
    ) as exc:
        raise SwitchUnreachable(
            "could not open an SSH CLI session",
            target=target,
            operation="login",
            evidence=_first_line(exc, password, enable_secret),
        ) from None
    try:
        conn.enable()  # a no-op where the login lands in privileged mode or there is none
    except ValueError:
        conn.read_timeout_override = 0.2
        conn.disconnect()
        raise SwitchAuthFailed("the switch rejected the enable secret", target=target, operation="enable") from None
    except (OSError, EOFError, paramiko.SSHException, NetmikoBaseException) as exc:
        conn.disconnect()
        raise SwitchUnreachable(
            "the session failed while entering privileged mode",
            target=target,
            operation="enable",
            evidence=type(exc).__name__,
        ) from None
    return NetmikoCli(conn, target)


def _first_line(exc: BaseException, *secrets: Secret | None) -> str:
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    for s in secrets:
        if s and len(s.reveal()) >= 3:
            text = text.replace(s.reveal(), "***")
    return f"{type(exc).__name__}: {text[:200]}"
