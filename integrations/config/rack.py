"""The rack configuration (RCT) JSON: which host MAC is cabled to which port of which ToR
switch, with the switch's SSH credentials (the seed format), parsed once at the edge."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metalflow.integrations.common import MetalflowError, Secret
from metalflow.integrations.common.values import BadValue, parse_mac, parse_tcp_port, show
from metalflow.integrations.config.addresses import address_key, valid_address
from metalflow.integrations.config.problems import ConfigError, Problem, scrub

DEFAULT_SSH_PORT = 22


@dataclass(frozen=True)
class SwitchConfig:
    """A ToR switch of the rack config. ``type`` is the seed's dialect name, e.g. ``Force10``."""

    ip: str
    username: str
    password: Secret
    type: str
    port: int = DEFAULT_SSH_PORT


@dataclass(frozen=True)
class CabledMac:
    """A host NIC (lower-case colon MAC) and the switch port its cable ends in."""

    mac: str
    port: str


@dataclass(frozen=True)
class Rack:
    switch: SwitchConfig
    hosts: tuple[CabledMac, ...]


@dataclass(frozen=True)
class RackConfig:
    racks: tuple[Rack, ...]

    def find(self, mac: str) -> tuple[SwitchConfig, str] | None:
        """The switch and port a MAC is cabled to, or None when the rack config lacks it.
        ``mac`` in any form :func:`parse_mac` takes (BadValue when it is none)."""
        mac = parse_mac(mac)
        for rack in self.racks:
            for cabled in rack.hosts:
                if cabled.mac == mac:
                    return rack.switch, cabled.port
        return None

    def macs(self) -> tuple[str, ...]:
        return tuple(c.mac for r in self.racks for c in r.hosts)


_SWITCH_KEYS = ("ip", "port", "username", "password", "type")
#: An SSH user name as written: printable ASCII without spaces (it goes on the SSH wire as is).
_USERNAME = re.compile(r"[!-~]{1,64}", re.ASCII)
_HOST_KEYS = ("mac", "port")

PortCheck = Callable[[str], str]  # the canonical port name (for duplicate checks), or raises


def _checker_factory() -> Callable[[str], PortCheck]:
    """Switch types and port grammars come from ``integrations.switches`` (its dialects are
    the single source). Imported here, not at module level: it pulls in netmiko, which
    parsing the settings string does not need."""
    from metalflow.integrations.switches import dialect_for

    def checker(switch_type: str) -> PortCheck:
        dialect = dialect_for(switch_type)  # raises UnknownSwitchType with the known names

        def check(port: str) -> str:
            result = dialect.validate_port(port)
            return result if isinstance(result, str) else port

        return check

    return checker


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MetalflowError):
        return exc.message
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def load_rack_config(data: str | bytes | Mapping[str, Any] | os.PathLike[str]) -> RackConfig:
    """Parse the rack config (seed format) from JSON text, bytes, a parsed dict or a file path.

    Checks: structure and types, MACs (``values.parse_mac``, normalised to
    ``00:18:8b:52:79:80``), the SSH port (``values.parse_tcp_port``), known switch types, port
    names against the dialect's grammar (ASCII, whole string), no MAC twice anywhere, no port
    twice on one switch, no switch address twice. Values are taken as written: a port, address,
    user or type with surrounding whitespace is refused, not trimmed. Every problem is collected
    with its JSON path and one ``ConfigError`` lists them all; passwords never appear in it.
    """
    what = "rack config"
    checker = _checker_factory()
    doc = _read_rack_document(data, what)
    problems: list[Problem] = []
    passwords: list[str] = []
    if not isinstance(doc, Mapping):
        raise ConfigError.from_problems(what, [Problem("$", 'expected a JSON object like {"racks": [...]}')])
    for key in doc:
        if key != "racks":
            problems.append(Problem(str(key)[:40], 'unknown key (the rack config has only "racks")'))
    racks_raw = doc.get("racks")
    if racks_raw is None:
        problems.append(Problem("racks", 'missing; add "racks": [{"l2Switch": {...}, "hosts": [...]}]'))
        racks_raw = []
    elif not isinstance(racks_raw, list):
        problems.append(Problem("racks", "expected a list of racks"))
        racks_raw = []
    elif not racks_raw:
        problems.append(Problem("racks", "is empty; add at least one rack"))

    racks: list[Rack] = []
    seen_macs: dict[str, str] = {}
    seen_ips: dict[str, str] = {}
    for i, rack_raw in enumerate(racks_raw):
        path = f"racks[{i}]"
        if not isinstance(rack_raw, Mapping):
            problems.append(Problem(path, 'expected an object with "l2Switch" and "hosts"'))
            continue
        for key in rack_raw:
            if key not in ("l2Switch", "hosts"):
                problems.append(Problem(f"{path}.{str(key)[:40]}", 'unknown key (expected "l2Switch" and "hosts")'))
        switch_raw = rack_raw.get("l2Switch")
        switch, check = _parse_switch(switch_raw, f"{path}.l2Switch", checker, problems, passwords)
        ip = switch_raw.get("ip") if isinstance(switch_raw, Mapping) else None
        if isinstance(ip, str) and valid_address(ip):
            ip_key = address_key(ip)
            if ip_key in seen_ips:
                problems.append(
                    Problem(
                        f"{path}.l2Switch.ip",
                        f"{ip} is already the switch of {seen_ips[ip_key]}; "
                        "list each switch once and put all its hosts under it",
                    )
                )
            else:
                seen_ips[ip_key] = path
        hosts = _parse_hosts(rack_raw.get("hosts"), path, check, seen_macs, problems)
        if switch is not None and hosts is not None:
            racks.append(Rack(switch, hosts))

    if problems:
        raise ConfigError.from_problems(what, scrub(problems, passwords))
    return RackConfig(tuple(racks))


def _read_rack_document(data: Any, what: str) -> Any:
    if isinstance(data, Mapping):
        return data
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith(("{", "["))):
        try:
            data = Path(data).read_bytes()
        except OSError as exc:
            raise ConfigError.from_problems(
                what, [Problem("file", f"cannot read {str(data)!r}: {exc.strerror or exc}")]
            ) from None
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigError.from_problems(what, [Problem("$", "is not UTF-8 text")]) from None
    if not isinstance(data, str):
        raise ConfigError.from_problems(
            what, [Problem("$", f"expected JSON text, bytes, a dict or a path, got {type(data).__name__}")]
        )
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        # The message names only the position: the text itself may hold passwords.
        raise ConfigError.from_problems(
            what, [Problem("$", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]
        ) from None


def _parse_switch(
    raw: Any, path: str, checker: Callable[[str], PortCheck], problems: list[Problem], passwords: list[str]
) -> tuple[SwitchConfig | None, PortCheck | None]:
    if raw is None:
        problems.append(Problem(path, 'missing; add "l2Switch": {"ip", "username", "password", "type"}'))
        return None, None
    if not isinstance(raw, Mapping):
        problems.append(Problem(path, 'expected an object with "ip", "username", "password" and "type"'))
        return None, None
    before = len(problems)
    for key in raw:
        if key not in _SWITCH_KEYS:
            problems.append(Problem(f"{path}.{str(key)[:40]}", f"unknown key (expected {', '.join(_SWITCH_KEYS)})"))

    password = raw.get("password")
    if isinstance(password, str):
        passwords.append(password)
    if password is None:
        problems.append(Problem(f"{path}.password", "missing; add the switch's SSH password"))
    elif not isinstance(password, str) or not password:
        problems.append(Problem(f"{path}.password", "expected a non-empty string"))

    ip = raw.get("ip")
    if ip is None:
        problems.append(Problem(f"{path}.ip", "missing; add the switch's management address"))
    elif not valid_address(ip):
        problems.append(
            Problem(
                f"{path}.ip",
                f"{show(ip)} is not an IP address or host name: write the bare address "
                "(no spaces, port, scheme or IPv6 zone), e.g. 10.0.0.2 or tor-1.example",
            )
        )

    username = raw.get("username")
    if username is None:
        problems.append(Problem(f"{path}.username", "missing; add the switch's SSH user"))
    elif not isinstance(username, str) or not _USERNAME.fullmatch(username):
        problems.append(Problem(f"{path}.username", f"{show(username)} is not a user name: printable ASCII, no spaces"))

    port: int | None = None
    try:
        port = parse_tcp_port(raw.get("port", DEFAULT_SSH_PORT), f"{path}.port")
    except BadValue as exc:
        problems.append(Problem(exc.field, f"{exc.reason} (SSH is 22)"))

    check: PortCheck | None = None
    stype = raw.get("type")
    if stype is None:
        problems.append(Problem(f"{path}.type", 'missing; add the switch type, e.g. "Force10"'))
    elif not isinstance(stype, str) or not stype:
        problems.append(Problem(f"{path}.type", f"{show(stype)} is not a switch type name"))
    else:
        try:
            check = checker(stype)
        except Exception as exc:  # noqa: BLE001 - the dialect registry's "unknown type" error
            problems.append(Problem(f"{path}.type", _error_text(exc)))

    if len(problems) > before:
        return None, check
    # Every field passed its check above (each failure added a problem).
    assert isinstance(ip, str) and isinstance(username, str) and isinstance(password, str) and isinstance(stype, str)
    assert port is not None
    return SwitchConfig(ip=ip, username=username, password=Secret(password), type=stype, port=port), check


def _parse_hosts(
    raw: Any,
    rack_path: str,
    check: PortCheck | None,
    seen_macs: dict[str, str],
    problems: list[Problem],
) -> tuple[CabledMac, ...] | None:
    path = f"{rack_path}.hosts"
    if raw is None:
        problems.append(Problem(path, 'missing; add "hosts": [{"mac": ..., "port": ...}] (may be empty)'))
        return None
    if not isinstance(raw, list):
        problems.append(Problem(path, 'expected a list of {"mac": ..., "port": ...}'))
        return None
    before = len(problems)
    seen_ports: dict[str, str] = {}
    hosts: list[CabledMac] = []
    for j, h in enumerate(raw):
        hp = f"{path}[{j}]"
        if not isinstance(h, Mapping):
            problems.append(Problem(hp, 'expected an object with "mac" and "port"'))
            continue
        for key in h:
            if key not in _HOST_KEYS:
                problems.append(Problem(f"{hp}.{str(key)[:40]}", 'unknown key (expected "mac" and "port")'))
        mac = None
        if "mac" not in h:
            problems.append(Problem(f"{hp}.mac", "missing; add the NIC's MAC address"))
        else:
            try:
                mac = parse_mac(h["mac"], f"{hp}.mac")
            except BadValue as exc:
                problems.append(Problem(exc.field, exc.reason))
        if mac is not None:
            if mac in seen_macs:
                problems.append(Problem(f"{hp}.mac", f"{mac} is already listed at {seen_macs[mac]}"))
            else:
                seen_macs[mac] = f"{hp}.mac"
        port = h.get("port")
        canonical = None
        if port is None:
            problems.append(Problem(f"{hp}.port", "missing; add the switch port the NIC is cabled to"))
        elif not isinstance(port, str) or not port:
            problems.append(Problem(f"{hp}.port", f"{show(port)} is not a port name"))
        elif check is not None:
            try:
                canonical = check(port)
            except Exception as exc:  # noqa: BLE001 - the dialect's port-grammar error
                problems.append(Problem(f"{hp}.port", _error_text(exc)))
        if canonical is not None:
            assert isinstance(port, str)  # checked above: a port name was given
            # Duplicates by the dialect's canonical name ("1/1/1" is "TenGigabitEthernet 1/1/1");
            # the port is kept as written, which is what the switch and the lab call it.
            key = canonical.lower()
            if key in seen_ports:
                problems.append(
                    Problem(f"{hp}.port", f"{show(port)} is already used by {seen_ports[key]} on this switch")
                )
            else:
                seen_ports[key] = hp
        if mac is not None and canonical is not None:
            assert isinstance(port, str)
            hosts.append(CabledMac(mac, port))
    return tuple(hosts) if len(problems) == before else None
