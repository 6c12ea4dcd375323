"""CloudStack's MAAS settings string and the MAAS API key, parsed once at the edge.

The global setting ``external.baremetal.system.url`` (CLOUDSTACK-9913, the seed page), e.g.
``MaasIP=172.31.0.75;MaasKey=<token key>;MaasSecret=<token secret>;MaasConsumerKey=<consumer>``,
is derived from the MAAS API key ``<consumer>:<token key>:<token secret>``.

Every part goes through the one vocabulary (``integrations.common.values``: ports by
``parse_tcp_port``, ASCII only, matched whole) or the one address check
(``config.addresses.valid_address``). Whitespace around ``;`` and ``=`` is the list's syntax
(the seed writes ``external.baremetal.system.url = MaasIP=...``); a value itself is never
trimmed. No error quotes the address, the port text or a key part: an operator who writes
``MaasIP=admin:pw@host`` must not find ``pw`` in a log, and the key parts are key material.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

from metalflow.integrations.common import Secret
from metalflow.integrations.common.values import BadValue, parse_tcp_port, show
from metalflow.integrations.config.addresses import valid_address
from metalflow.integrations.config.problems import ConfigError, Problem, scrub

DEFAULT_HTTP_PORT = 5240  # MAAS's region API listens here
DEFAULT_HTTPS_PORT = 5443  # MAAS's TLS listener (MAAS 3.2+) when https:// is given without a port
SETTINGS_NAME = "external.baremetal.system.url"


# MAAS generates its keys from letters and digits; we accept a little more (".", "_", "~", "-")
# but never whitespace or the separators of the settings string and the API key.
_KEY_PART = re.compile(r"[A-Za-z0-9._~-]{1,256}", re.ASCII)
_API_KEY_PARTS = ("consumer_key", "token_key", "token_secret")


@dataclass(frozen=True, repr=False)
class ApiKey:
    """A MAAS API key, ``<consumer_key>:<token_key>:<token_secret>`` (OAuth1 PLAINTEXT).
    All three parts are key material: the repr shows none of them."""

    consumer_key: str
    token_key: str
    token_secret: Secret

    def __repr__(self) -> str:
        return "ApiKey(consumer=***, token=***, secret=***)"

    def as_secret(self) -> Secret:
        return Secret(f"{self.consumer_key}:{self.token_key}:{self.token_secret.reveal()}")


def parse_api_key(s: str | Secret, *, field: str = "api_key") -> ApiKey:
    """Parse ``consumer:token:secret``; exactly three non-empty parts."""
    if isinstance(s, Secret):
        s = s.reveal()
    if not isinstance(s, str):
        raise ConfigError.from_problems(
            "MAAS API key", [Problem(field, "expected a string consumer_key:token_key:token_secret")]
        )
    if s != s.strip():
        raise ConfigError.from_problems(
            "MAAS API key",
            [
                Problem(
                    field,
                    "has whitespace or a newline around it (copied with the end of a line?); "
                    "remove it and give the key alone",
                )
            ],
        )
    parts = s.split(":")
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
        problems.extend(_check_key_part(f"{field}.{name}", part))
    if problems:
        raise ConfigError.from_problems("MAAS API key", scrub(problems, parts))
    return ApiKey(parts[0], parts[1], Secret(parts[2]))


def _check_key_part(field: str, value: str) -> list[Problem]:
    if not value:
        return [Problem(field, "is empty; copy the whole MAAS API key again")]
    if not _KEY_PART.fullmatch(value):
        return [
            Problem(
                field,
                "contains characters a MAAS key never has (whitespace, ':', ';', '=' or other "
                "punctuation); copy the MAAS API key again",
            )
        ]
    return []


@dataclass(frozen=True, repr=False)
class MaasSettings:
    """Where MAAS is and how to authenticate. ``url`` is the MAAS root, e.g.
    ``http://10.0.0.5:5240/MAAS/``; the API lives under ``api_url``. The repr shows the URL
    only: the consumer key, token key and secret are the API key's parts."""

    url: str
    consumer_key: str
    token_key: str
    token_secret: Secret

    def __repr__(self) -> str:
        return f"MaasSettings(url={self.url!r}, api_key=ApiKey(consumer=***, token=***, secret=***))"

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
_BLANKS = " \t"
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,31}", re.ASCII)
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


def parse_settings(s: str | Secret) -> MaasSettings:
    """Parse CloudStack's ``external.baremetal.system.url``.

    Accepts ``Key=value`` pairs separated by ``;``, keys in any case, parts on lines of
    their own, blanks (spaces and tabs) around keys and values, an optional ``MaasPort``, and
    a scheme, port or path inside ``MaasIP`` (``https://maas.example:5443``,
    ``10.0.0.5:5240``, ``[fd00::5]``). The whole line pasted from the seed
    (``external.baremetal.system.url = MaasIP=...``) is accepted too. Defaults: http, port
    5240 (5443 for https), path ``/MAAS/``.
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
        # Layout: a part may start on a new line, and blanks (spaces, tabs) may surround keys
        # and values, as the seed writes them. A newline or other control character inside or
        # at the end of a value is not layout: it is refused with its field.
        part = raw.lstrip().rstrip(_BLANKS)
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(_BLANKS), value.strip(_BLANKS)
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
            name = key if _IDENT.fullmatch(key) else f"part {n}"
            problems.append(Problem(name, f"unknown key (expected {', '.join(_SETTINGS_KEYS.values())})"))
            continue
        if canon in ("MaasSecret", "MaasKey", "MaasConsumerKey"):
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
        raise ConfigError.from_problems(what, scrub(problems, secrets))
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


def _port(value: str, field: str, problems: list[Problem], *, within: str = "") -> int | None:
    """``parse_tcp_port``; the problem never quotes ``value``: in ``MaasIP=admin:pw`` the text
    after the colon is a password, not a port."""
    try:
        return parse_tcp_port(value, field)
    except BadValue:
        problems.append(
            Problem(
                field,
                f"{within}is not a TCP port: use a whole number from 1 to 65535 in ASCII digits (MAAS uses 5240)",
            )
        )
        return None


def _maas_url(value: str, port_value: str | None, problems: list[Problem], *, field: str = "MaasIP") -> str | None:
    """``http(s)://host:port/path/`` from MaasIP (and MaasPort), or None with problems added."""
    before = len(problems)
    v = value
    if not v:
        problems.append(Problem(field, "is empty; give the MAAS address, e.g. 10.0.0.5"))
        return None
    if "@" in v:
        # user:password@host: the part before '@' is a credential; never quoted, not parsed.
        problems.append(
            Problem(
                field,
                "is not [scheme://]host[:port][/path]: it has an '@', and credentials do not go in the "
                "address (MAAS authenticates with MaasConsumerKey, MaasKey and MaasSecret); remove the "
                "user and password",
            )
        )
        return None
    scheme = None
    if "://" in v:
        parts = urlsplit(v)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            problems.append(Problem(field, f"scheme {show(parts.scheme)} is not supported; use http:// or https://"))
        if parts.query or parts.fragment:
            problems.append(Problem(field, "give only scheme, host, port and path (no query or fragment)"))
        netloc, path = parts.netloc, parts.path
    else:
        netloc, slash, rest = v.partition("/")
        path = slash + rest
    host, port_text = _split_host_port(netloc)
    if not valid_address(host):
        problems.append(
            Problem(
                field,
                "is not [scheme://]host[:port][/path]: the host is not an IP address or host name "
                "(e.g. 10.0.0.5, maas.example or [fd00::5]; ASCII, no spaces)",
            )
        )
    port = None
    if port_text is not None:
        port = _port(port_text, field, problems, within="the part after the host's ':' ")
    if not re.fullmatch(r"[A-Za-z0-9._~/-]*", path, re.ASCII):
        problems.append(Problem(field, "the path may hold only letters, digits and ._~/- (e.g. /MAAS/)"))
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
