"""What every simulated CLI dialect shares, and the registry of dialects.

A dialect is a small class: its prompts, its error texts, its port grammar, its port record
and how that maps onto ``PortVlans``, its configuration commands (as grammar data) and the
renderers of its show commands. The exec-level plumbing (enable with a secret, terminal
settings, configure terminal, end/exit, ``do``, write memory, running vs. startup config)
lives here, so a third dialect only writes what is really its own.

Modes: ``user`` (``host>``), ``enable`` (``host#``), ``config`` and the dialect's
configuration sub-modes, each with ``config`` as parent. As on the real systems, a line that
does not parse in a sub-mode is tried in ``config`` and, if it fits there, leaves the
sub-mode (so ``interface ...`` lines can follow each other).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .grammar import Command, Line, Num, Parsed, ParseError, Token, cmd
from .model import Config, PortVlans

if TYPE_CHECKING:  # pragma: no cover
    from .session import CliSession

USER = "user"
ENABLE = "enable"
CONFIG = "config"
EXEC_MODES = (USER, ENABLE)


class CliError(Exception):
    """A command was understood but refused; ``lines`` are what the switch prints."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class Dialect:
    name: ClassVar[str]
    netmiko_device_type: ClassVar[str]
    port_type: ClassVar[str]  # interface type of the front-panel ports, e.g. "TenGigabitEthernet"
    submodes: ClassVar[tuple[str, ...]] = ()
    # The transient error of the "busy" fault: what a switch says when another session holds
    # the configuration lock. Clients classify it as retryable.
    busy_lines: ClassVar[tuple[str, ...]] = ()
    access_denied: ClassVar[str] = "% Access denied"
    password_prompt: ClassVar[str] = "Password: "
    banner: ClassVar[tuple[str, ...]] = ("",)

    def __init__(self) -> None:
        self.commands: dict[str, tuple[Command, ...]] = {
            USER: tuple(self.exec_commands(privileged=False)),
            ENABLE: tuple(self.exec_commands(privileged=True)),
            CONFIG: tuple(self.config_common()) + tuple(self.config_commands()),
        }
        for mode in self.submodes:
            self.commands[mode] = tuple(self.config_common()) + tuple(self.submode_commands(mode))

    # ---- grammar -------------------------------------------------------------------------

    def exec_commands(self, privileged: bool) -> list[Command]:
        cmds = [
            cmd("enable", "enable", config=False),
            cmd("exit", "logout", config=False),
            cmd("logout", "logout", config=False),
            cmd("terminal length <n>", "terminal", config=False, n=Num(0, 512)),
            cmd("terminal width <n>", "terminal", config=False, n=Num(0, 512)),
        ]
        cmds += self.show_commands(privileged)
        if privileged:
            cmds += [
                cmd("disable", "disable", config=False),
                cmd("configure terminal", "configure", config=False),
                cmd("write memory", "write_memory", config=False),
                cmd("copy running-config startup-config", "copy_run_start", config=False),
                cmd("show running-config", "show_running", config=False),
                cmd("show startup-config", "show_startup", config=False),
            ]
        return cmds

    def config_common(self) -> list[Command]:
        return [
            cmd("exit", "exit", config=False),
            cmd("end", "end", config=False),
            cmd("do <line>", "do", config=False, line=Line()),
        ]

    def show_commands(self, privileged: bool) -> list[Command]:
        return []

    def config_commands(self) -> list[Command]:
        return []

    def submode_commands(self, mode: str) -> list[Command]:
        return []

    def split_token(self, tok: Token) -> Sequence[Token]:
        return (tok,)

    # ---- texts ---------------------------------------------------------------------------

    def prompt(self, hostname: str, mode: str, ctx: Any) -> str:
        raise NotImplementedError

    def parse_error_lines(self, err: ParseError, caret_col: int, line: str) -> list[str]:
        raise NotImplementedError

    def unknown_exec_lines(self, line: str) -> list[str] | None:
        """What an exec-mode single unknown word prints, when the dialect treats it specially."""
        return None

    # ---- ports and configuration ---------------------------------------------------------

    def canonical_port(self, type_name: str, number: str) -> str:
        raise NotImplementedError

    def short_port(self, canonical: str) -> str:
        raise NotImplementedError

    def port_aliases(self, name: str) -> str | None:
        """Map an API-given port name (canonical or a CLI spelling) to the canonical name."""
        raise NotImplementedError

    def default_port(self) -> Any:
        raise NotImplementedError

    def default_vlans(self) -> dict[int, str]:
        return {1: ""}

    def port_vlans(self, port: Any) -> PortVlans:
        raise NotImplementedError

    def with_port_vlans(self, config: Config, name: str, vlans: PortVlans) -> Config:
        """The configuration in which port ``name`` carries exactly ``vlans`` (drift, initial)."""
        raise NotImplementedError

    def render_running(self, config: Config, hostname: str) -> list[str]:
        raise NotImplementedError

    # ---- dispatch ------------------------------------------------------------------------

    def run(self, s: CliSession, parsed: Parsed) -> list[str]:
        handler = getattr(self, "do_" + parsed.command.action)
        return handler(s, **parsed.args) or []

    # ---- exec handlers -------------------------------------------------------------------

    def do_enable(self, s: CliSession) -> list[str]:
        if s.mode == ENABLE:
            return []
        s.ask(self.password_prompt, self._check_secret, echo=False)
        return []

    def _check_secret(self, s: CliSession, answer: str) -> list[str]:
        if s.check_enable_secret(answer):
            s.enter(ENABLE)
            return []
        return [self.access_denied]

    def do_disable(self, s: CliSession) -> list[str]:
        s.enter(USER)
        return []

    def do_logout(self, s: CliSession) -> list[str]:
        s.close()
        return []

    def do_terminal(self, s: CliSession, n: int) -> list[str]:
        # Accepted and remembered; output is never paged (clients always send "length 0").
        return []

    def do_configure(self, s: CliSession) -> list[str]:
        s.enter(CONFIG)
        return self.configure_banner()

    def configure_banner(self) -> list[str]:
        return []

    def do_write_memory(self, s: CliSession) -> list[str]:
        s.save()
        return self.saved_lines()

    def saved_lines(self) -> list[str]:
        return []

    def do_copy_run_start(self, s: CliSession) -> list[str]:
        s.save()
        return self.saved_lines()

    def do_show_running(self, s: CliSession) -> list[str]:
        return self.render_running(s.view(), s.hostname)

    def do_show_startup(self, s: CliSession) -> list[str]:
        return self.render_running(s.startup(), s.hostname)

    # ---- config-mode handlers --------------------------------------------------------------

    def do_exit(self, s: CliSession) -> list[str]:
        s.enter(CONFIG if s.mode in self.submodes else ENABLE)
        return []

    def do_end(self, s: CliSession) -> list[str]:
        s.enter(ENABLE)
        return []

    def do_do(self, s: CliSession, line: str) -> list[str]:
        return s.run_nested(line, ENABLE)

    # ---- helpers -------------------------------------------------------------------------

    @staticmethod
    def timestamp() -> str:
        return _dt.datetime.now().strftime("%b %d %H:%M:%S")


def wrap_items(items: Iterable[str], width: int, sep: str = ",") -> list[str]:
    """Join items with ``sep`` into lines no wider than ``width`` (at least one item a line)."""
    lines: list[str] = []
    current = ""
    for item in items:
        candidate = f"{current}{sep}{item}" if current else item
        if current and len(candidate) > width:
            lines.append(current + sep.rstrip())
            current = item
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def dialects() -> dict[str, type[Dialect]]:
    """Every simulated dialect by its lab-spec name (a fixed table: no registration state)."""
    from .cisco_ios import CiscoIos
    from .force10 import Force10

    return {Force10.name: Force10, CiscoIos.name: CiscoIos}


def dialect_for(name: str) -> Dialect:
    table = dialects()
    try:
        return table[name]()
    except KeyError:
        raise ValueError(f"unknown switch dialect {name!r}; known: {sorted(table)}") from None
