"""A dialect is data: how one switch OS names ports, which CLI lines make each change, how to
read a port back and which answers are errors (after networking-generic-switch).

The base class holds everything that is the same for every vendor: port and VLAN
validation (before any connection), formatting the templates, classifying error output.
A vendor module declares class attributes and a read-back parser, and overrides a hook only
where its protocol really differs (Junos commits; the Cisco family renders the whole port).

Templates are ``str.format`` strings. Fields available to every template:

- ``port``: the canonical port name, as the CLI wants it (``TenGigabitEthernet 1/1/1``);
- ``vlan``: the VLAN being added or removed;
- ``untagged``: the port's untagged VLAN after the change (1, the default, when none);
- ``native``: the same, for trunk-style templates;
- ``allowed``: the trunk allowed list after the change: tagged VLANs plus the native one.

The switch-level VLAN table (every defined VLAN and the ports that carry it) and the deletion
of one VLAN definition are data too: ``vlan_table_commands`` with ``parse_vlan_table``, and a
``delete_vlan`` template (field ``vlan``). Only dialects a lab simulator checks declare them;
the others raise SwitchNotSupported rather than guess a switch's words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from metalflow.integrations.common.values import BadValue, parse_vlan, show
from metalflow.integrations.switches.errors import InvalidPort, InvalidVlan, SwitchNotSupported
from metalflow.integrations.switches.model import (
    ALL_VLANS,
    DEFAULT_VLAN,
    PortVlans,
    format_vlan_list,
    parse_vlan_list,
)

OPS = ("add", "remove")
DELTA_TEMPLATES = ("add_tagged", "add_untagged", "remove_tagged", "remove_untagged")

# Retryable on every dialect: another session holds the configuration, or the switch is busy.
# These are checked before the fatal patterns (a "% Error: ... locked" is retryable).
COMMON_RETRYABLE = (re.compile(r"(?i)\b(?:locked|busy|try (?:again )?later|in progress)\b"),)


@dataclass(frozen=True)
class ErrorMatch:
    """A CLI answer that matched one of the dialect's error patterns."""

    text: str  # the matching line of output
    transient: bool


class Dialect:
    """Base class of every dialect. Subclasses fill in the class attributes below."""

    # Identity
    name: ClassVar[str]  # registry key, e.g. "force10"
    aliases: ClassVar[tuple[str, ...]] = ()  # rack-config names and netmiko names it answers to
    netmiko_device_type: ClassVar[str]
    netmiko_class: ClassVar[type | None] = None  # a faster subclass, where netmiko's waits hurt
    # Port grammar: ``[kind][ |-]number``; ``kinds`` maps accepted spellings (lower case) to
    # the canonical one; ``default_kind`` is used for a bare number (None: a kind is required).
    port_number: ClassVar[str]
    kinds: ClassVar[Mapping[str, str]]
    default_kind: ClassVar[str | None] = None
    port_format: ClassVar[str] = "{kind}{number}"
    port_example: ClassVar[str]
    # Commands
    templates: ClassVar[Mapping[str, tuple[str, ...]]]
    required_templates: ClassVar[tuple[str, ...]] = DELTA_TEMPLATES
    read_commands: ClassVar[tuple[str, ...]]
    # The VLAN table (every defined VLAN -> the ports carrying it) and ``templates["delete_vlan"]``:
    # empty / absent where no simulator checks them (SwitchNotSupported).
    vlan_table_commands: ClassVar[tuple[str, ...]] = ()
    # VLANs the switch defines by itself and never deletes: left out of the VLAN table.
    reserved_vlans: ClassVar[frozenset[int]] = frozenset({DEFAULT_VLAN})
    config_enter: ClassVar[str] = "configure terminal"
    config_exit: ClassVar[str] = "end"
    save_command: ClassVar[str] = "write memory"
    save_confirm: ClassVar[tuple[str, str] | None] = None  # (question regex, answer)
    save_success: ClassVar[str | None] = None  # regex the save answer must contain
    # Errors: a line of output matching one of these makes the command a failure.
    retryable_errors: ClassVar[tuple[re.Pattern[str], ...]] = COMMON_RETRYABLE
    fatal_errors: ClassVar[tuple[re.Pattern[str], ...]]
    # Protocol shape
    transactional: ClassVar[bool] = False  # changes live in a candidate until the save (commit)
    untagged_builds_on_tagged: ClassVar[bool] = False  # untagged = tagged member + native marker
    # Made from port_number and kinds when a subclass sets them (__init_subclass__).
    _port_re: ClassVar[re.Pattern[str]]

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "port_number" in cls.__dict__ or "kinds" in cls.__dict__:
            kinds = "|".join(sorted((re.escape(k) for k in cls.kinds), key=len, reverse=True))
            # ASCII: ``\d`` would take Arabic-Indic and fullwidth digits ("1/1/١"), which no
            # switch CLI reads as a port number; IGNORECASE folds ASCII letters only.
            cls._port_re = re.compile(
                rf"(?:(?P<kind>{kinds})[ -]?)?(?P<number>{cls.port_number})", re.IGNORECASE | re.ASCII
            )

    # ----- validation (pure, no connection) -----------------------------------------------

    @property
    def port_grammar(self) -> str:
        kinds = sorted(set(self.kinds.values()) - {""})
        bare = ""
        if self.default_kind is not None:
            bare = f"a bare number like {self.port_example.split()[-1]!r} or "
        kind_txt = f" with type one of {', '.join(kinds)}" if kinds else ""
        return f"{bare}{self.port_example!r}{kind_txt} (number pattern {self.port_number})"

    def validate_port(self, port: str) -> str:
        """The canonical CLI name of ``port``; InvalidPort naming the grammar otherwise.

        ``fullmatch`` of the whole string, ASCII only, nothing stripped, on a pattern without
        free whitespace: a newline, ``;``, ``|``, a non-ASCII digit or any other separator can
        never reach a CLI line."""
        if not isinstance(port, str):
            raise InvalidPort(f"port must be a string, not {type(port).__name__}", operation="validate port")
        m = self._port_re.fullmatch(port)
        if m is None or (m.group("kind") is None and self.default_kind is None):
            raise InvalidPort(
                f"port {show(port)} is not a {self.name} port name: expected {self.port_grammar} "
                "in ASCII, with nothing around it; fix the port in the rack config",
                operation="validate port",
            )
        kind = self.default_kind if m.group("kind") is None else self.kinds[m.group("kind").lower()]
        return self.port_format.format(kind=kind, number=m.group("number"))

    @staticmethod
    def validate_vlan(vlan: object) -> int:
        """``vlan`` if every switch may be given it (``values.parse_vlan``: an int, 2-4094;
        VLAN 1, the default VLAN, and ``True`` refused); InvalidVlan wrapping the BadValue
        otherwise. A string of digits is not taken here: callers parse their input first."""
        if isinstance(vlan, str):
            raise InvalidVlan(
                f"vlan: expected a VLAN id as a number, not the text {show(vlan)}", operation="validate vlan"
            )
        try:
            return parse_vlan(vlan)
        except BadValue as exc:
            raise InvalidVlan(str(exc), operation="validate vlan") from exc

    # ----- commands -------------------------------------------------------------------------

    def template_key(self, op: str, tagged: bool, target: PortVlans) -> str:
        """Which template makes ``op``; the Cisco family picks by the port's shape instead."""
        return f"{op}_{'tagged' if tagged else 'untagged'}"

    def commands_for(self, op: str, port: str, vlan: int, tagged: bool, current: PortVlans | None = None) -> list[str]:
        """The CLI lines (inside config mode) that make ``op`` on ``port``, given the port's
        ``current`` membership (a fresh port when omitted). Validates its input first."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, not {op!r}")
        port = self.validate_port(port)
        vlan = self.validate_vlan(vlan)
        current = current or PortVlans()
        target = current.with_added(vlan, tagged) if op == "add" else current.with_removed(vlan)
        native = target.untagged or DEFAULT_VLAN
        fields = {
            "port": port,
            "vlan": vlan,
            "untagged": native,
            "native": native,
            "allowed": format_vlan_list(target.tagged | {native}),
        }
        return [t.format(**fields) for t in self.templates[self.template_key(op, tagged, target)]]

    def read_commands_for(self, port: str) -> list[str]:
        return [c.format(port=self.validate_port(port)) for c in self.read_commands]

    @property
    def has_vlan_table(self) -> bool:
        """Whether this dialect can read the VLAN table and delete a VLAN definition."""
        return bool(self.vlan_table_commands) and bool(self.templates.get("delete_vlan"))

    def _require_vlan_table(self, operation: str) -> None:
        if not self.has_vlan_table:
            raise SwitchNotSupported(
                f"VLAN table not supported for dialect {self.name}: metalflow reads and deletes VLAN "
                "definitions only on the dialects its lab simulates (cisco_ios, force10); clean this "
                "switch's VLANs by hand",
                operation=operation,
            )

    def vlan_table_commands_for(self) -> list[str]:
        """The show commands whose outputs ``parse_vlan_table`` reads (SwitchNotSupported)."""
        self._require_vlan_table("read VLAN table")
        return list(self.vlan_table_commands)

    def delete_vlan_commands(self, vlan: int) -> list[str]:
        """The CLI lines (inside config mode) that delete VLAN ``vlan``'s definition. Refuses,
        before any connection, a dialect without them (SwitchNotSupported), VLAN 1 and any
        VLAN the switch reserves (InvalidVlan)."""
        self._require_vlan_table("delete VLAN")
        if isinstance(vlan, int) and not isinstance(vlan, bool) and vlan in self.reserved_vlans:
            raise InvalidVlan(
                f"VLAN {vlan} is reserved on {self.name} switches (default VLANs "
                f"{format_vlan_list(self.reserved_vlans)}) and is never deleted",
                operation="delete VLAN",
            )
        vlan = self.validate_vlan(vlan)
        return [t.format(vlan=vlan) for t in self.templates["delete_vlan"]]

    # ----- output -----------------------------------------------------------------------------

    def parse(self, port: str, outputs: Sequence[str]) -> PortVlans:
        """The membership of ``port`` (canonical name) from the read commands' outputs, in
        order. Raises ValueError when the output cannot be understood."""
        raise NotImplementedError

    def parse_vlan_table(self, outputs: Sequence[str]) -> dict[int, frozenset[str]]:
        """Every VLAN defined on the switch (reserved ones left out) -> the ports that carry
        it, tagged or untagged, from the outputs of ``vlan_table_commands``, in order. A port
        is named as ``validate_port`` gives it, or as printed when the dialect's grammar does
        not cover it (a port-channel): it still counts. Raises ValueError when the output
        cannot be understood: a line skipped could hide a port that carries a VLAN."""
        self._require_vlan_table("read VLAN table")
        raise NotImplementedError

    def port_or_printed(self, name: str) -> str:
        """``validate_port(name)``, or ``name`` as printed when it is not a front-panel port."""
        try:
            return self.validate_port(name)
        except InvalidPort:
            return name

    def scan(self, output: str, *, retryable: bool = True) -> ErrorMatch | None:
        """The first error in a command's answer: retryable patterns win over fatal ones.
        ``retryable=False`` for show output, which is data and may contain "busy"."""
        groups = ((True, self.retryable_errors),) if retryable else ()
        for transient, patterns in groups + ((False, self.fatal_errors),):
            for pattern in patterns:
                m = pattern.search(output)
                if m:
                    start = output.rfind("\n", 0, m.start()) + 1
                    end = output.find("\n", m.end())
                    return ErrorMatch(output[start : end if end >= 0 else None].strip(), transient)
        return None

    def __repr__(self) -> str:
        return f"<dialect {self.name} ({self.netmiko_device_type})>"


# ----- helpers the parsers share --------------------------------------------------------------


def interface_block(output: str, header: re.Pattern[str], *, indented: bool = True) -> list[str]:
    """The stripped lines of the configuration block that starts at a line matching
    ``header``. It ends at ``!``, ``exit`` or ``end``, or (when the OS indents its blocks) at
    the next unindented line. Raises ValueError when the block is absent: a read-back that
    does not name the port is not a read-back of that port."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if header.fullmatch(line.strip()):
            body = []
            for nxt in lines[i + 1 :]:
                text = nxt.strip()
                if not text:
                    continue
                if text in ("!", "exit", "end") or (indented and not nxt[:1].isspace()):
                    break
                body.append(text)
            return body
    raise ValueError("the output has no configuration block for the port")


def interface_blocks(output: str) -> dict[str, list[str]]:
    """Every ``interface NAME`` block of a whole running-config (IOS style: the body indented,
    blocks ended by ``!`` or the next unindented line): name as printed -> stripped body."""
    blocks: dict[str, list[str]] = {}
    body: list[str] | None = None
    for line in output.splitlines():
        text = line.strip()
        if line[:1].isspace() and body is not None:
            if text:
                body.append(text)
            continue
        body = None
        if m := re.fullmatch(r"interface\s+(\S+(?:\s+\S+)?)", text):
            body = blocks.setdefault(m.group(1), [])
    return blocks


def switchport_mode(lines: Sequence[str]) -> str:
    """The port's ``switchport mode`` (the last one wins; ``access`` when none is set)."""
    modes = [m.group(1) for line in lines if (m := re.fullmatch(r"switchport mode (\S+)", line))]
    return modes[-1] if modes else "access"


def parse_switchport(lines: Sequence[str]) -> PortVlans:
    """Membership from a port's access and trunk ``switchport`` lines, in running-config
    (IOS, NX-OS, EOS, and OS6 outside its general mode). An access port carries its access
    VLAN untagged; a trunk its native VLAN untagged (when allowed) and the rest of its allowed
    list, which is *all* VLANs until an ``allowed vlan`` line narrows it, tagged."""
    access, native = DEFAULT_VLAN, DEFAULT_VLAN
    allowed: frozenset[int] | None = None
    for line in lines:
        if m := re.fullmatch(r"switchport access vlan (\d+)", line):
            access = int(m.group(1))
        elif m := re.fullmatch(r"switchport trunk native vlan (\d+)", line):
            native = int(m.group(1))
        elif m := re.fullmatch(r"switchport trunk allowed vlan (add |remove |except )?(\S+)", line):
            verb, vlans = (m.group(1) or "").strip(), parse_vlan_list(m.group(2))
            if verb == "add":
                allowed = (allowed or frozenset()) | vlans
            elif verb == "remove":
                allowed = (ALL_VLANS if allowed is None else allowed) - vlans
            else:
                allowed = ALL_VLANS - vlans if verb == "except" else vlans
    if switchport_mode(lines) != "trunk":
        return PortVlans(access, frozenset())
    allowed = ALL_VLANS if allowed is None else allowed
    return PortVlans(native if native in allowed else None, allowed - {native})
