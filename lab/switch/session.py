"""One CLI login on a simulated switch: modes, questions, dispatch, and the line editor.

``CliSession.handle(line)`` turns one typed line into a ``Reply`` (output lines, the next
prompt, and what the transport must do: close politely, drop abruptly, wait first). It does
no I/O, so the SSH layer stays a thin loop and the CLI behaviour is one place to read.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import grammar
from .core import SwitchCore
from .dialect import CONFIG, ENABLE, EXEC_MODES, USER, CliError
from .grammar import Parsed, ParseError
from .model import Config

CTRL_Z = "\x1a"
Question = Callable[["CliSession", str], list[str]]


@dataclass(frozen=True)
class Reply:
    output: list[str] = field(default_factory=list)  # lines, without terminators
    prompt: str = ""  # printed after the output ("" when the session ends)
    close: bool = False  # end the session after the output
    drop: bool = False  # abort the transport at once, printing nothing
    delay: float = 0.0  # wait this long before printing (the "slow" fault)
    failed: bool = False  # the line was refused (exit status of exec requests)


class _Drop(Exception):
    pass


class CliSession:
    def __init__(self, core: SwitchCore, *, hostname: str, enable_secret: str) -> None:
        self.core = core
        self.dialect = core.dialect
        self.hostname = hostname
        self._secret = enable_secret
        self.mode = USER
        self.ctx: Any = None
        self._question: Question | None = None
        self._question_prompt = ""
        self.echo = True
        self._closing = False
        self._line = ""
        self._caret_base = 0

    # ---- what the transport asks ---------------------------------------------------------

    def prompt(self) -> str:
        if self._question is not None:
            return self._question_prompt
        return self.dialect.prompt(self.hostname, self.mode, self.ctx)

    def greeting(self) -> str:
        return "".join(line + "\r\n" for line in self.dialect.banner) + self.prompt()

    def handle(self, line: str) -> Reply:
        """One line typed at the prompt."""
        if self._question is not None:
            answer_to, self._question = self._question, None
            self.echo = True
            with self.core.lock:
                out = answer_to(self, line.strip())
            return self._reply(out)
        if line == CTRL_Z:
            if self.in_config():
                self.enter(ENABLE)
            return Reply(prompt=self.prompt())
        if not line.strip():
            return Reply(prompt=self.prompt())
        caret_base = len(self.prompt())
        with self.core.lock:
            self.core.count("commands")
            delay = self.core.command_delay()
            try:
                out, failed = self._execute(line, caret_base)
            except _Drop:
                return Reply(drop=True, delay=delay)
        return self._reply(out, delay=delay, failed=failed)

    def run_exec(self, line: str) -> Reply:
        """An SSH exec request: one line, at the user's level, no prompt."""
        if "\n" in line or "\r" in line or not line.strip():
            return Reply(self.dialect.parse_error_lines(ParseError("invalid", 0), 0, line), failed=True)
        with self.core.lock:
            self.core.count("commands")
            delay = self.core.command_delay()
            try:
                out, failed = self._execute(line, 0)
            except _Drop:
                return Reply(drop=True, delay=delay)
        return Reply(out, delay=delay, failed=failed, close=True)

    def _reply(self, out: list[str], *, delay: float = 0.0, failed: bool = False) -> Reply:
        if self._closing:
            return Reply(out, "", close=True, delay=delay, failed=failed)
        return Reply(out, self.prompt(), delay=delay, failed=failed)

    # ---- parsing and dispatch ------------------------------------------------------------

    def in_config(self, mode: str | None = None) -> bool:
        mode = self.mode if mode is None else mode
        return mode == CONFIG or mode in self.dialect.submodes

    def _parse(self, line: str, mode: str) -> tuple[Parsed | ParseError, str]:
        result = grammar.parse(line, self.dialect.commands[mode], self, self.dialect.split_token)
        if isinstance(result, ParseError) and mode in self.dialect.submodes:
            parent = grammar.parse(line, self.dialect.commands[CONFIG], self, self.dialect.split_token)
            if isinstance(parent, Parsed):
                return parent, CONFIG
            if parent.col > result.col:
                result = parent
        return result, mode

    def _execute(self, line: str, caret_base: int) -> tuple[list[str], bool]:
        self._line, self._caret_base = line, caret_base
        result, mode = self._parse(line, self.mode)
        if self.in_config():
            if isinstance(result, ParseError) or result.command.config:
                fault = self.core.config_command_fault()
                if fault == "drop":
                    raise _Drop()
                if fault == "busy":
                    return list(self.dialect.busy_lines), True
        if isinstance(result, ParseError):
            return self._error_lines(result, line, caret_base), True
        if mode != self.mode:
            self.enter(mode)
        try:
            return self.dialect.run(self, result), False
        except CliError as e:
            return e.lines, True

    def _error_lines(self, err: ParseError, line: str, caret_base: int) -> list[str]:
        if self.mode in EXEC_MODES and err.kind == "invalid" and len(line.split()) == 1:
            special = self.dialect.unknown_exec_lines(line.strip())
            if special is not None:
                return special
        return self.dialect.parse_error_lines(err, caret_base + err.col, line)

    def run_nested(self, text: str, mode: str) -> list[str]:
        """``do <command>`` from a configuration mode: run an exec command in place."""
        offset = self._caret_base + max(self._line.find(text), 0)
        result = grammar.parse(text, self.dialect.commands[mode], self, self.dialect.split_token)
        if isinstance(result, ParseError):
            raise CliError(*self.dialect.parse_error_lines(result, offset + result.col, text))
        return self.dialect.run(self, result)

    # ---- what handlers use ---------------------------------------------------------------

    def resolve_port(self, type_name: str, number: str) -> str | None:
        if not number or len(number) > 16:
            return None
        name = self.dialect.canonical_port(type_name, number)
        return name if self.core.has_port(name) else None

    def enter(self, mode: str, ctx: Any = None) -> None:
        self.mode = mode
        self.ctx = ctx

    def close(self) -> None:
        self._closing = True

    def ask(self, prompt: str, answer_to: Question, *, echo: bool = True) -> None:
        self._question = answer_to
        self._question_prompt = prompt
        self.echo = echo

    def check_enable_secret(self, answer: str) -> bool:
        return hmac.compare_digest(answer.encode(), self._secret.encode())

    @property
    def config(self) -> Config:
        return self.core.running

    def commit(self, config: Config) -> None:
        self.core.commit(config)

    def view(self) -> Config:
        return self.core.view()

    def startup(self) -> Config:
        return self.core.startup

    def save(self) -> None:
        self.core.save()


class LineEditor:
    """Turns received characters into echo text and complete lines, like a switch's tty.

    Handles CR, LF and CRLF as Enter, backspace/DEL, Ctrl-U (kill line), and swallows NUL
    (netmiko's keep-alive probe), other control characters and ANSI escape sequences.
    """

    MAX_LINE = 4096

    def __init__(self) -> None:
        self.buffer = ""
        self._last_cr = False
        self._esc = 0

    def feed(self, ch: str, echo: bool) -> tuple[str, str | None]:
        """One character: (text to echo, completed line or None)."""
        if self._esc:
            if self._esc == 1 and ch in "[O":
                self._esc = 2
            elif self._esc == 2 and (ch.isdigit() or ch == ";"):
                pass
            else:
                self._esc = 0
            return "", None
        if ch == "\n" and self._last_cr:
            self._last_cr = False
            return "", None
        self._last_cr = ch == "\r"
        if ch in "\r\n":
            line, self.buffer = self.buffer, ""
            return "", line
        if ch == "\x1b":
            self._esc = 1
            return "", None
        if ch in "\x08\x7f":
            if self.buffer:
                self.buffer = self.buffer[:-1]
                return ("\b \b" if echo else ""), None
            return "", None
        if ch == "\x15":
            erased, self.buffer = len(self.buffer), ""
            return ("\b \b" * erased if echo else ""), None
        if ch == CTRL_Z:  # "end" in configuration modes
            self.buffer = ""
            return "", CTRL_Z
        if ch < " ":
            return "", None
        if len(self.buffer) >= self.MAX_LINE:
            return "", None
        self.buffer += ch
        return (ch if echo else ""), None
