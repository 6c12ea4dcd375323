"""CloudStack's MAAS configuration, parsed once at the edge.

Two inputs come from CloudStack (CLOUDSTACK-9913, the seed page):

- the global setting ``external.baremetal.system.url``, e.g.
  ``MaasIP=172.31.0.75;MaasKey=<token key>;MaasSecret=<token secret>;MaasConsumerKey=<consumer>``,
  derived from the MAAS API key ``<consumer>:<token key>:<token secret>``;
- the rack configuration (RCT) JSON, which says which host MAC is cabled to which port of
  which ToR switch, with the switch's SSH credentials.

Both become frozen dataclasses here; nothing downstream re-parses strings or passes raw dicts.
Errors name the offending part (a key, or a JSON path such as ``racks[0].hosts[3].port``) and
the fix, list every problem at once, and never contain a secret: values of secret fields are
never echoed, and the messages are scrubbed of them as a second line of defence.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from metalflow.integrations.common import MetalflowError, Secret

DEFAULT_HTTP_PORT = 5240  # MAAS's region API listens here
DEFAULT_HTTPS_PORT = 5443  # MAAS's TLS listener (MAAS 3.2+) when https:// is given without a port
DEFAULT_SSH_PORT = 22
SETTINGS_NAME = "external.baremetal.system.url"


# ---------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where (a key or a JSON path) and what, with the fix."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ConfigError(MetalflowError):
    """Bad configuration. ``field`` names the first offending part; ``problems`` lists them all."""

    def __init__(self, message: str, *, field: str = "", problems: Sequence[Problem] = ()):
        self.field = field
        self.problems = tuple(problems)
        super().__init__(message)

    @classmethod
    def from_problems(cls, what: str, problems: Sequence[Problem]) -> ConfigError:
        if len(problems) == 1:
            message = f"{what}: {problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            message = f"{what} has {len(problems)} problems:\n{lines}"
        return cls(message, field=problems[0].field, problems=problems)

    def __reduce__(self):
        return (_rebuild_config_error, (type(self), self.message, self.field, self.problems))


def _rebuild_config_error(cls, message, field, problems):
    return cls(message, field=field, problems=problems)


# Words of our own messages: never treated as secret text to scrub (the seed's switch
# password is literally "password").
_OWN_WORDS = frozenset(
    {
        w.lower()
        for w in (
            "MaasIP",
            "MaasPort",
            "MaasKey",
            "MaasSecret",
            "MaasConsumerKey",
            "password",
            "username",
            "l2Switch",
            "racks",
            "hosts",
            "missing",
            "expected",
        )
    }
)


def _scrub(problems: list[Problem], secrets: Iterable[str]) -> list[Problem]:
    """Replace any secret text that slipped into a message (a second line of defence: the
    messages are written never to echo a secret value in the first place)."""
    secrets = [s for s in secrets if isinstance(s, str) and len(s) >= 6 and s.lower() not in _OWN_WORDS]
    if not secrets:
        return problems
    out = []
    for p in problems:
        field, message = p.field, p.message
        for s in secrets:
            field = field.replace(s, "***")
            message = message.replace(s, "***")
        out.append(Problem(field, message))
    return out


def _show(value: Any, limit: int = 60) -> str:
    """A short repr of a non-secret value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# ---------------------------------------------------------------------------- MAAS key and settings

# MAAS generates its keys from letters and digits; we accept a little more (".", "_", "~", "-")
# but never whitespace or the separators of the settings string and the API key.
_KEY_PART = re.compile(r"^[A-Za-z0-9._~-]+$")
_API_KEY_PARTS = ("consumer_key", "token_key", "token_secret")


@dataclass(frozen=True)
class ApiKey:
    """A MAAS API key, ``<consumer_key>:<token_key>:<token_secret>`` (OAuth1 PLAINTEXT)."""

    consumer_key: str
    token_key: str
    token_secret: Secret

    def as_secret(self) -> Secret:
        return Secret(f"{self.consumer_key}:{self.token_key}:{self.token_secret.reveal()}")


def parse_api_key(s: str, *, field: str = "api_key") -> ApiKey:
    """Parse ``consumer:token:secret``; exactly three non-empty parts."""
    if isinstance(s, Secret):
        s = s.reveal()
    if not isinstance(s, str):
        raise ConfigError.from_problems(
            "MAAS API key", [Problem(field, "expected a string consumer_key:token_key:token_secret")]
        )
    parts = s.strip().split(":")
    if len(parts) != 3:
        raise ConfigError.from_problems(
            "MAAS API key",
            [
                Problem(
                    field,
                    f"expected 3 parts separated by ':' (consumer_key:token_key:token_secret), "
                    f"found {len(parts)}; copy the whole key from the MAAS UI (user preferences, "
                    "API keys) or `maas apikey --username <user>`",
                )
            ],
        )
    problems = []
    for name, part in zip(_API_KEY_PARTS, parts):
        problems.extend(_check_key_part(f"{field}.{name}", part.strip()))
    if problems:
        raise ConfigError.from_problems("MAAS API key", _scrub(problems, [parts[2].strip()]))
    return ApiKey(parts[0].strip(), parts[1].strip(), Secret(parts[2].strip()))


def _check_key_part(field: str, value: str) -> list[Problem]:
    if not value:
        return [Problem(field, "is empty; copy the whole MAAS API key again")]
    if not _KEY_PART.match(value):
        return [
            Problem(
                field,
                "contains characters a MAAS key never has (whitespace, ':', ';', '=' or other "
                "punctuation); copy the MAAS API key again",
            )
        ]
    return []


@dataclass(frozen=True)
class MaasSettings:
    """Where MAAS is and how to authenticate. ``url`` is the MAAS root, e.g.
    ``http://10.0.0.5:5240/MAAS/``; the API lives under ``api_url``."""

    url: str
    consumer_key: str
    token_key: str
    token_secret: Secret

    @property
    def api_key(self) -> Secret:
        return Secret(f"{self.consumer_key}:{self.token_key}:{self.token_secret.reveal()}")

    @property
    def api_url(self) -> str:
        return self.url + "api/2.0/"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or DEFAULT_HTTP_PORT


# Canonical key names of the settings string, looked up case-insensitively.
_SETTINGS_KEYS = MappingProxyType(
    {k.lower(): k for k in ("MaasIP", "MaasPort", "MaasKey", "MaasSecret", "MaasConsumerKey")}
)
_SETTINGS_PREFIX = re.compile(r"^\s*external\.baremetal\.system\.url\s*[=:]\s*", re.IGNORECASE)
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")
_MISSING_HINT = MappingProxyType(
    {
        "MaasIP": "add MaasIP=<MAAS address>, e.g. MaasIP=10.0.0.5 or MaasIP=https://maas.example:5443",
        "MaasKey": "add MaasKey=<token key>, the second part of the MAAS API key consumer:token:secret",
        "MaasSecret": "add MaasSecret=<token secret>, the third part of the MAAS API key consumer:token:secret",
        "MaasConsumerKey": (
            "add MaasConsumerKey=<consumer key>, the first part of the MAAS API key consumer:token:secret"
        ),
    }
)


def parse_settings(s: str) -> MaasSettings:
    """Parse CloudStack's ``external.baremetal.system.url``.

    Accepts ``Key=value`` pairs separated by ``;``, keys in any case, whitespace around either,
    an optional ``MaasPort``, and a scheme, port or path inside ``MaasIP``
    (``https://maas.example:5443``, ``10.0.0.5:5240``, ``[fd00::5]``). The whole line pasted
    from the seed (``external.baremetal.system.url = MaasIP=...``) is accepted too. Defaults:
    http, port 5240 (5443 for https), path ``/MAAS/``.
    """
    what = f"MAAS settings ({SETTINGS_NAME})"
    if isinstance(s, Secret):
        s = s.reveal()
    if not isinstance(s, str):
        raise ConfigError.from_problems(
            what,
            [Problem("settings", "expected a string like MaasIP=...;MaasKey=...;MaasSecret=...;MaasConsumerKey=...")],
        )
    text = _SETTINGS_PREFIX.sub("", s, count=1)
    values: dict[str, str] = {}
    problems: list[Problem] = []
    secrets: list[str] = []
    for n, raw in enumerate(text.split(";"), 1):
        part = raw.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            # Never echo the part: it may be a pasted secret or API key.
            secrets.extend(p for p in re.split(r"[:\s]+", part) if p)
            problems.append(
                Problem(
                    f"part {n}",
                    "has no '=' (expected Key=value, e.g. MaasIP=10.0.0.5); "
                    "to use a MAAS API key consumer:token:secret, split it into "
                    "MaasConsumerKey, MaasKey and MaasSecret",
                )
            )
            continue
        canon = _SETTINGS_KEYS.get(key.lower())
        if canon is None:
            secrets.append(value)
            name = key if _IDENT.match(key) else f"part {n}"
            problems.append(Problem(name, f"unknown key (expected {', '.join(_SETTINGS_KEYS.values())})"))
            continue
        if canon == "MaasSecret":
            secrets.append(value)
        if canon in values:
            problems.append(Problem(canon, "given twice; keep one"))
            continue
        values[canon] = value

    for name in ("MaasIP", "MaasConsumerKey", "MaasKey", "MaasSecret"):
        if name not in values:
            problems.append(Problem(name, f"missing; {_MISSING_HINT[name]}"))

    url = None
    if "MaasIP" in values:
        url = _maas_url(values["MaasIP"], values.get("MaasPort"), problems)
    elif "MaasPort" in values:
        _port(values["MaasPort"], "MaasPort", problems)
    for name in ("MaasConsumerKey", "MaasKey", "MaasSecret"):
        if name in values:
            problems.extend(_check_key_part(name, values[name]))

    if problems:
        raise ConfigError.from_problems(what, _scrub(problems, secrets))
    assert url is not None
    return MaasSettings(
        url=url,
        consumer_key=values["MaasConsumerKey"],
        token_key=values["MaasKey"],
        token_secret=Secret(values["MaasSecret"]),
    )


def settings_from_api_key(address: str, api_key: str | Secret, *, port: int | None = None) -> MaasSettings:
    """MaasSettings from a MAAS address (same forms as ``MaasIP``) and an API key."""
    key = parse_api_key(api_key)
    problems: list[Problem] = []
    url = _maas_url(address, None if port is None else str(port), problems, field="address")
    if problems:
        raise ConfigError.from_problems("MAAS address", problems)
    assert url is not None
    return MaasSettings(url, key.consumer_key, key.token_key, key.token_secret)


def _port(value: str, field: str, problems: list[Problem]) -> int | None:
    v = value.strip()
    if v.isdigit() and 1 <= int(v) <= 65535:
        return int(v)
    problems.append(Problem(field, f"{_show(v)} is not a TCP port (expected 1-65535, MAAS uses 5240)"))
    return None


def _maas_url(value: str, port_value: str | None, problems: list[Problem], *, field: str = "MaasIP") -> str | None:
    """``http(s)://host:port/path/`` from MaasIP (and MaasPort), or None with problems added."""
    before = len(problems)
    v = value.strip()
    if not v:
        problems.append(Problem(field, "is empty; give the MAAS address, e.g. 10.0.0.5"))
        return None
    scheme = None
    if "://" in v:
        parts = urlsplit(v)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            problems.append(Problem(field, f"scheme {_show(parts.scheme)} is not supported; use http:// or https://"))
        if parts.query or parts.fragment or "@" in parts.netloc:
            problems.append(Problem(field, "give only scheme, host, port and path (no user, query or fragment)"))
        netloc, path = parts.netloc, parts.path
    else:
        netloc, slash, rest = v.partition("/")
        path = slash + rest
    host, port_text = _split_host_port(netloc)
    if not _valid_host(host):
        problems.append(
            Problem(field, f"{_show(host)} is not an IP address or host name (e.g. 10.0.0.5 or maas.example)")
        )
    port = None
    if port_text is not None:
        port = _port(port_text, field, problems)
    if port_value is not None:
        extra = _port(port_value, "MaasPort", problems)
        if port is not None and extra is not None and extra != port:
            problems.append(Problem("MaasPort", f"{extra} contradicts the port {port} in MaasIP; give one"))
        port = port if port is not None else extra
    if len(problems) > before:
        return None
    scheme = scheme or "http"
    if port is None:
        port = DEFAULT_HTTPS_PORT if scheme == "https" else DEFAULT_HTTP_PORT
    path = re.sub(r"api/2\.0/?$", "", path)  # a pasted API URL still means the MAAS root
    if path in ("", "/"):
        path = "/MAAS/"
    if not path.endswith("/"):
        path += "/"
    shown_host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown_host}:{port}{path}"


def _split_host_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else (None if not rest else rest)
    if netloc.count(":") >= 2:  # a bare IPv6 address
        return netloc, None
    host, sep, port = netloc.partition(":")
    return host, port if sep else None


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def valid_address(host: str) -> bool:
    """Whether ``host`` is an IPv4/IPv6 address or a DNS host name."""
    return isinstance(host, str) and _valid_host(host)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host)) and not re.fullmatch(r"[\d.]+", host)


# ---------------------------------------------------------------------------- MAC addresses

_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def normalize_mac(value: str) -> str:
    """``00:18:8b:52:79:80`` from ``00-18-8B-52-79-80``, ``00188b527980`` or ``0018.8b52.7980``.
    Raises ValueError for anything else (callers add the field name)."""
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a MAC address (expected like 00:18:8b:52:79:80)")
    v = value.strip().lower()
    if re.fullmatch(r"[0-9a-f]{1,2}([:-][0-9a-f]{1,2}){5}", v):
        digits = "".join(p.zfill(2) for p in re.split(r"[:-]", v))
    elif re.fullmatch(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}", v):
        digits = v.replace(".", "")
    else:
        digits = v
    if not _HEX12.match(digits):
        raise ValueError(f"{_show(value)} is not a MAC address (expected like 00:18:8b:52:79:80)")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


# ---------------------------------------------------------------------------- rack config


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
        """The switch and port a MAC is cabled to, or None when the rack config lacks it."""
        mac = normalize_mac(mac)
        for rack in self.racks:
            for cabled in rack.hosts:
                if cabled.mac == mac:
                    return rack.switch, cabled.port
        return None

    def macs(self) -> tuple[str, ...]:
        return tuple(c.mac for r in self.racks for c in r.hosts)


_SWITCH_KEYS = ("ip", "port", "username", "password", "type")
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


def load_rack_config(data: str | bytes | Mapping[str, Any] | os.PathLike) -> RackConfig:
    """Parse the rack config (seed format) from JSON text, bytes, a parsed dict or a file path.

    Checks: structure and types, MACs (normalised to ``00:18:8b:52:79:80``), known switch
    types, port names against the dialect's grammar, no MAC twice anywhere, no port twice on
    one switch, no switch address twice. Every problem is collected with its JSON path and
    one ``ConfigError`` lists them all; passwords never appear in it.
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
        if isinstance(ip, str) and _valid_host(ip.strip()):
            ip_key = _address_key(ip.strip())
            if ip_key in seen_ips:
                problems.append(
                    Problem(
                        f"{path}.l2Switch.ip",
                        f"{ip.strip()} is already the switch of {seen_ips[ip_key]}; "
                        "list each switch once and put all its hosts under it",
                    )
                )
            else:
                seen_ips[ip_key] = path
        hosts = _parse_hosts(rack_raw.get("hosts"), path, check, seen_macs, problems)
        if switch is not None and hosts is not None:
            racks.append(Rack(switch, hosts))

    if problems:
        raise ConfigError.from_problems(what, _scrub(problems, passwords))
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


def _address_key(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip.lower().rstrip(".")


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
    elif not isinstance(ip, str) or not _valid_host(ip.strip()):
        problems.append(Problem(f"{path}.ip", f"{_show(ip)} is not an IP address or host name"))

    username = raw.get("username")
    if username is None:
        problems.append(Problem(f"{path}.username", "missing; add the switch's SSH user"))
    elif not isinstance(username, str) or not username.strip() or any(c.isspace() for c in username.strip()):
        problems.append(Problem(f"{path}.username", f"{_show(username)} is not a user name"))

    port = raw.get("port", DEFAULT_SSH_PORT)
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port.strip())
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(Problem(f"{path}.port", f"{_show(port)} is not a TCP port (expected 1-65535, SSH is 22)"))

    check: PortCheck | None = None
    stype = raw.get("type")
    if stype is None:
        problems.append(Problem(f"{path}.type", 'missing; add the switch type, e.g. "Force10"'))
    elif not isinstance(stype, str) or not stype.strip():
        problems.append(Problem(f"{path}.type", f"{_show(stype)} is not a switch type name"))
    else:
        try:
            check = checker(stype.strip())
        except Exception as exc:  # noqa: BLE001 - the dialect registry's "unknown type" error
            problems.append(Problem(f"{path}.type", _error_text(exc)))

    if len(problems) > before:
        return None, check
    return (
        SwitchConfig(
            ip=ip.strip(), username=username.strip(), password=Secret(password), type=stype.strip(), port=port
        ),
        check,
    )


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
                mac = normalize_mac(h["mac"])
            except ValueError as exc:
                problems.append(Problem(f"{hp}.mac", str(exc)))
        if mac is not None:
            if mac in seen_macs:
                problems.append(Problem(f"{hp}.mac", f"{mac} is already listed at {seen_macs[mac]}"))
            else:
                seen_macs[mac] = f"{hp}.mac"
        port = h.get("port")
        canonical = None
        if port is None:
            problems.append(Problem(f"{hp}.port", "missing; add the switch port the NIC is cabled to"))
        elif not isinstance(port, str) or not port.strip():
            problems.append(Problem(f"{hp}.port", f"{_show(port)} is not a port name"))
        elif check is not None:
            try:
                canonical = check(port.strip())
            except Exception as exc:  # noqa: BLE001 - the dialect's port-grammar error
                problems.append(Problem(f"{hp}.port", _error_text(exc)))
        if canonical is not None:
            # Duplicates by the dialect's canonical name ("1/1/1" is "TenGigabitEthernet 1/1/1");
            # the port is kept as written, which is what the switch and the lab call it.
            key = canonical.lower()
            if key in seen_ports:
                problems.append(
                    Problem(f"{hp}.port", f"{_show(port.strip())} is already used by {seen_ports[key]} on this switch")
                )
            else:
                seen_ports[key] = hp
        if mac is not None and canonical is not None:
            hosts.append(CabledMac(mac, port.strip()))
    return tuple(hosts) if len(problems) == before else None
