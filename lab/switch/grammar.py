"""A small CLI command grammar: keywords by unique prefix, typed arguments, located errors.

Both simulated dialects parse the way their real parsers do: a keyword may be abbreviated
to any prefix that is unique among the words valid at that position ("sh vl br",
"int te 1/1/1"); a prefix shared by several words is ambiguous; a word that fits nothing is
invalid input, and the error carries the column for the caret line; a line that stops
before a command is complete is incomplete. Commands are written as data::

    cmd("switchport access vlan <vlan>", "access_vlan", vlan=Num(1, 4094))

and the parser hands the action name and the typed values to the dialect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class PortResolver(Protocol):
    def resolve_port(self, type_name: str, number: str) -> str | None: ...


@dataclass(frozen=True)
class Token:
    text: str
    col: int  # offset of the token in the typed line


class Arg:
    """A typed argument. ``parse`` returns the value, or None when the token is not one."""

    greedy = False  # consumes the rest of the line

    def parse(self, text: str, ctx: PortResolver) -> Any | None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Num(Arg):
    lo: int
    hi: int

    def parse(self, text: str, ctx: PortResolver) -> int | None:
        if not text.isdigit() or len(text) > 9:
            return None
        value = int(text)
        return value if self.lo <= value <= self.hi else None


@dataclass(frozen=True)
class Word(Arg):
    pattern: str = r"^\S{1,64}$"

    def parse(self, text: str, ctx: PortResolver) -> str | None:
        return text if re.match(self.pattern, text) else None


@dataclass(frozen=True)
class Line(Arg):
    """Free text up to the end of the line (descriptions)."""

    greedy = True
    max_len: int = 240

    def parse(self, text: str, ctx: PortResolver) -> str | None:
        text = text.strip()
        return text if 0 < len(text) <= self.max_len else None


@dataclass(frozen=True)
class VlanText(Arg):
    """A VLAN list as typed ("1,3-5"); range checks belong to the command (their errors differ)."""

    def parse(self, text: str, ctx: PortResolver) -> str | None:
        return text if re.match(r"^[0-9][0-9,\-]*$", text) else None


@dataclass(frozen=True)
class Port(Arg):
    """A port number of one interface type, existing on this switch; value: canonical name."""

    type_name: str

    def parse(self, text: str, ctx: PortResolver) -> str | None:
        return ctx.resolve_port(self.type_name, text)


@dataclass(frozen=True)
class PortList(Arg):
    """FTOS port lists: "1/1/1", "1/1/1-3", "1/1/1-1/1/3,1/1/5"; value: tuple of canonical names."""

    type_name: str

    def parse(self, text: str, ctx: PortResolver) -> tuple[str, ...] | None:
        names: list[str] = []
        for item in text.split(","):
            m = re.match(r"^((?:\d+/)*)(\d+)(?:-(?:((?:\d+/)*)(\d+)))?$", item)
            if not m:
                return None
            prefix, first, prefix2, last = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            if last is None:
                numbers = [first]
            else:
                if prefix2 and prefix2 != prefix:
                    return None
                if int(last) < first or int(last) - first > 512:
                    return None
                numbers = list(range(first, int(last) + 1))
            for n in numbers:
                name = ctx.resolve_port(self.type_name, f"{prefix}{n}")
                if name is None:
                    return None
                if name not in names:
                    names.append(name)
        return tuple(names)


@dataclass(frozen=True)
class Command:
    words: tuple[str | Arg, ...]
    names: tuple[str | None, ...]  # the argument's name at each position, None for keywords
    action: str
    config: bool = True  # counts as a configuration command (faults) when typed in a config mode


def cmd(spec: str, action: str, *, config: bool = True, **args: Arg) -> Command:
    """Build a command from "keyword keyword <arg>" with the named argument types."""
    words: list[str | Arg] = []
    names: list[str | None] = []
    for part in spec.split():
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1]
            words.append(args[name])
            names.append(name)
        else:
            words.append(part.lower())
            names.append(None)
    return Command(tuple(words), tuple(names), action, config)


@dataclass(frozen=True)
class Parsed:
    command: Command
    args: Mapping[str, Any]


@dataclass(frozen=True)
class ParseError:
    kind: str  # "invalid" | "incomplete" | "ambiguous"
    col: int  # where the caret goes, as an offset in the typed line


Splitter = Callable[[Token], Sequence[Token]]


def tokenize(line: str, split: Splitter | None = None) -> list[Token]:
    tokens = [Token(m.group(), m.start()) for m in re.finditer(r"\S+", line)]
    if split is None:
        return tokens
    out: list[Token] = []
    for t in tokens:
        out.extend(split(t))
    return out


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Candidate:
    command: Command
    args: dict[str, Any] = field(default_factory=dict)


def parse(
    line: str,
    commands: Sequence[Command],
    ctx: PortResolver,
    split: Splitter | None = None,
) -> Parsed | ParseError:
    """Match one typed line against the commands of a mode."""
    tokens = tokenize(line, split)
    alive = [_Candidate(c) for c in commands]
    finished: list[_Candidate] = []  # matched a greedy argument: the rest of the line is theirs
    for i, tok in enumerate(tokens):
        low = tok.text.lower()
        keywords: dict[str, list[_Candidate]] = {}
        by_arg: list[_Candidate] = []
        best_prefix = 0
        for cand in alive:
            words = cand.command.words
            if i >= len(words):
                continue
            word = words[i]
            if isinstance(word, str):
                if word.startswith(low):
                    keywords.setdefault(word, []).append(cand)
                else:
                    best_prefix = max(best_prefix, _common_prefix(word, low))
                continue
            text = line[tok.col :] if word.greedy else tok.text
            value = word.parse(text, ctx)
            if value is None:
                continue
            name = cand.command.names[i]
            assert name is not None  # an argument's position always has a name (see cmd)
            hit = _Candidate(cand.command, {**cand.args, name: value})
            if word.greedy:
                finished.append(hit)
            else:
                by_arg.append(hit)
        if low in keywords:
            alive = keywords[low]
        elif len(keywords) == 1:
            alive = next(iter(keywords.values()))
        elif len(keywords) > 1 and not by_arg:
            if finished:
                break
            return ParseError("ambiguous", tok.col)
        elif by_arg:
            alive = by_arg
        else:
            if finished:
                break
            return ParseError("invalid", tok.col + best_prefix)
    else:
        complete = [c for c in alive if len(c.command.words) == len(tokens)]
        if complete:
            return Parsed(complete[0].command, complete[0].args)
        if finished:
            return Parsed(finished[0].command, finished[0].args)
        return ParseError("incomplete", len(line.rstrip()))
    return Parsed(finished[0].command, finished[0].args)
