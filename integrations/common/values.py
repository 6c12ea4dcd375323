"""The vocabulary every edge speaks: one parser per kind of value, parsed once where it enters.

Each parser takes the raw value and the name of the field it came from, and returns the value
in its one canonical form, or raises :class:`BadValue` naming the field and the fix. The rules,
for every kind:

- the **whole** string must match (``fullmatch``: ``"web-01\\n"`` is not ``"web-01"``);
- **ASCII only** (``"1/1/١"`` is not a port; ``str.isdigit`` and ``\\d`` accept Arabic-Indic
  digits, so neither is used here);
- nothing is stripped or guessed: a value with a stray space or newline is refused, so a paste
  error is seen where it was made instead of becoming a different name downstream;
- the error never quotes a value that may be a secret (:func:`parse_secret_ref`).

The edges (CloudStack payloads, the rack config, the inventory import, the MAAS settings
string, the CLI, flow parameters through :mod:`metalflow.integrations.common.fields`) call these
and wrap :class:`BadValue` in their own error type where they have one.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import NoReturn

from metalflow.integrations.common.errors import MetalflowError
from metalflow.integrations.common.secrets import learn

#: 802.1Q VLAN ids metalflow may put on a port. VLAN 1 is every switch's default VLAN, whose
#: membership metalflow never changes (every dialect refuses it), so it is refused at the edge.
VLAN_MIN, VLAN_MAX, DEFAULT_VLAN = 2, 4094, 1
#: NICs (networks) one VM may have: each is a VLAN on every cabled port of its machine, so the
#: limit is per VM, not per port; it is checked at create (payload, flow parameters) and by
#: plug-nic, so plugging one at a time cannot pass it.
MAX_NICS = 16
MAX_SSH_KEYS = 32


class BadValue(MetalflowError, ValueError):
    """A value at an edge is not what it must be. ``field`` names where it came from,
    ``reason`` says what is wrong and how to fix it, without the value when it may be secret.

    A ``ValueError`` too, so pydantic validators turn it into a field error by themselves."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def show(value: object, limit: int = 60) -> str:
    """A value quoted for an error message: ``repr`` (so a newline shows as ``\\n``), cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(field: str, reason: str) -> NoReturn:
    raise BadValue(field, reason)


def _text(value: object, field: str, what: str) -> str:
    if not isinstance(value, str):
        _fail(field, f"expected {what} as a string, got {type(value).__name__}")
    if not value.isascii():
        _fail(field, f"{show(value)} has characters outside ASCII; write {what} in plain ASCII")
    return value


# ------------------------------------------------------------------------------ numbers

_DECIMAL = re.compile(r"[0-9]{1,9}", re.ASCII)


def _whole(value: object, field: str, what: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        _fail(field, f"expected {what} ({low}-{high}), got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    _fail(field, f"{show(value)} is not {what}: use a whole number from {low} to {high}")


def parse_int(value: object, field: str, *, low: int, high: int, what: str = "a number") -> int:
    """An integer in ``low..high``: an int (never a bool) or a string of ASCII digits."""
    number = _whole(value, field, what, low, high)
    if not low <= number <= high:
        _fail(field, f"{number} is out of range for {what}: use {low}-{high}")
    return number


def parse_vlan(value: object, field: str = "vlan") -> int:
    """An 802.1Q VLAN id metalflow may configure: 2-4094 (VLAN 1 is the switches' default)."""
    if _whole(value, field, "a VLAN id", VLAN_MIN, VLAN_MAX) == DEFAULT_VLAN:
        _fail(
            field,
            "VLAN 1 is the switches' default VLAN, whose membership metalflow never changes; "
            f"use a VLAN id from {VLAN_MIN} to {VLAN_MAX}",
        )
    return parse_int(value, field, low=VLAN_MIN, high=VLAN_MAX, what="a VLAN id")


def parse_tcp_port(value: object, field: str = "port") -> int:
    return parse_int(value, field, low=1, high=65535, what="a TCP/UDP port")


def _matching(value: object, field: str, what: str, pattern: re.Pattern[str], fix: str) -> str:
    """``value`` if it is text matching ``pattern`` whole; else BadValue: not ``what``, then ``fix``."""
    text = _text(value, field, what)
    if not pattern.fullmatch(text):
        _fail(field, f"{show(text)} is not {what}: {fix}")
    return text


# ------------------------------------------------------------------------------ names

#: One DNS label as MAAS accepts it for a machine's hostname (maascommon.utils.dns): letters,
#: digits and dashes, 1-63, no dash at either end. metalflow also asks for lower case: MAAS
#: answers with lower-case FQDNs, and two names differing only in case would be one machine.
HOSTNAME_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # also the JSON schema's (fields.py)
_HOSTNAME = re.compile(HOSTNAME_PATTERN, re.ASCII)
_HOSTNAME_FIX = "use lower-case letters, digits and dashes, 1 to 63 characters, not starting or ending with a dash"


def parse_hostname(value: object, field: str = "hostname") -> str:
    """A machine's hostname in MAAS: one DNS label, lower case (see ``_HOSTNAME``)."""
    text = _text(value, field, "a hostname")
    if not _HOSTNAME.fullmatch(text):
        hint = ""
        if text != text.strip():
            hint = " (it has leading or trailing whitespace)"
        elif "_" in text:
            hint = " (MAAS refuses '_' in hostnames)"
        elif "." in text:
            hint = " (a hostname, not an FQDN: MAAS adds the domain)"
        elif _HOSTNAME.fullmatch(text.lower()):
            hint = " (it has upper-case letters)"
        _fail(field, f"{show(text)} is not a valid hostname{hint}: {_HOSTNAME_FIX}")
    return text


#: MAAS's own rule for a machine's hostname (one label; upper case allowed). metalflow's names
#: are ``parse_hostname``'s; this is only for what the MAAS client may send, which includes the
#: original plugin's idle name ``HOST-<cloudstack id>``.
_MAAS_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def parse_maas_hostname(value: object, field: str = "hostname") -> str:
    """A hostname MAAS accepts for a machine: letters of either case, digits and dashes, 1-63."""
    fix = "use letters, digits and dashes, 1 to 63 characters, not starting or ending with a dash"
    return _matching(value, field, "a valid MAAS hostname", _MAAS_HOSTNAME, fix)


def parse_vm_name(value: object, field: str = "vm_name") -> str:
    """A VM's name as CloudStack gives it (display names may be mixed case): lower-cased, then
    a hostname, because it names the machine in MAAS."""
    text = _text(value, field, "a VM name")
    return parse_hostname(text.lower(), field)


#: A MAAS image name: ``ubuntu/jammy``, ``centos7``, ``custom/my-image``; never a URL.
IMAGE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,63})?"
_IMAGE = re.compile(IMAGE_PATTERN, re.ASCII)


def parse_image(value: object, field: str = "image") -> str:
    fix = "use os/series like ubuntu/jammy, or a custom image's name (letters, digits, '.', '_' and '-')"
    return _matching(value, field, "a MAAS image name", _IMAGE, fix)


#: A MAAS architecture: ``amd64`` or ``amd64/generic`` (MAAS's names, as the 4.22 MaaS
#: extension's templates carry them in the detail ``architecture``).
ARCHITECTURE_PATTERN = r"[a-z0-9]{1,16}(?:/[a-z0-9][a-z0-9._-]{0,31})?"
_ARCHITECTURE = re.compile(ARCHITECTURE_PATTERN, re.ASCII)
#: What other systems call MAAS's architectures (CloudStack's template ``arch``, uname -m).
_ARCH_ALIASES = MappingProxyType({"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el"})


def parse_architecture(value: object, field: str = "architecture") -> str:
    """``amd64`` or ``amd64/generic`` as MAAS names them; ``x86_64`` is refused with MAAS's name
    for it (the same machine, spelt the way the MAAS API never answers)."""
    text = _text(value, field, "a MAAS architecture")
    base = text.split("/", 1)[0]
    if base in _ARCH_ALIASES:
        _fail(
            field,
            f"{show(text)}: MAAS calls this architecture {_ARCH_ALIASES[base]!r} (e.g. {_ARCH_ALIASES[base]}/generic)",
        )
    return _matching(text, field, "a MAAS architecture", _ARCHITECTURE, "use MAAS's name, e.g. amd64 or amd64/generic")


#: CloudStack ids (uuids) and the inventory's other identifiers.
IDENT_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_IDENT = re.compile(IDENT_PATTERN, re.ASCII)


def parse_ident(value: object, field: str, what: str = "an id") -> str:
    """An identifier (a CloudStack uuid, a switch name): letters, digits, '.', '_' and '-',
    1-64 characters, starting with a letter or digit."""
    fix = "use letters, digits, '.', '_' and '-' (1 to 64 characters, starting with a letter or digit)"
    return _matching(value, field, what, _IDENT, fix)


# ------------------------------------------------------------------------------ addresses

#: A DNS host name: labels of letters, digits and dashes (no dash at either end), 253
#: characters in all, an optional root dot.
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?",
    re.ASCII,
)
_DOTTED_DIGITS = re.compile(r"[0-9.]+", re.ASCII)


def parse_address(value: object, field: str = "address") -> str:
    """An IPv4/IPv6 address or a DNS host name, exactly as written (a switch's ``ip``, a
    BMC's address, the host in ``MaasIP``). An IPv6 zone (``fe80::1%eth0``) is refused:
    ``ipaddress`` takes any text after ``%``, a newline included, and a zone means nothing to
    a remote switch, BMC or MAAS."""
    text = _text(value, field, "an IP address or host name")
    if not text or text.isspace():
        _fail(field, "missing: give an IP address or host name")
    if any(c.isspace() for c in text):
        _fail(field, "contains white space: give a bare IP address or host name")
    if text.startswith("[") or "://" in text or "%" in text:
        _fail(field, "give a bare IP address or host name, without brackets, a scheme or an IPv6 zone")
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if text.count(":") == 1:
        _fail(field, "looks like host:port: give the port in its own field")
    if _DOTTED_DIGITS.fullmatch(text):
        _fail(field, "not a valid IPv4 address")  # "10.0.0.300" is no host name made of digits
    if not _DNS_NAME.fullmatch(text):
        _fail(field, "not a valid IP address or host name")
    return text


# ------------------------------------------------------------------------------ MAC addresses

_MAC_FORMS = (
    re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.ASCII),  # 00:18:8b:52:79:80
    re.compile(r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}", re.ASCII),  # 00-18-8b-52-79-80
    re.compile(r"[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}", re.ASCII),  # 0018.8b52.7980 (Cisco)
    re.compile(r"[0-9a-f]{12}", re.ASCII),  # 00188b527980
)


def parse_mac(value: object, field: str = "mac") -> str:
    """``00:18:8b:52:79:80`` from that form, ``00-18-8B-52-79-80``, ``0018.8b52.7980`` or
    ``00188b527980``. A multicast or all-zero address is no NIC's and is refused."""
    text = _text(value, field, "a MAC address")
    lowered = text.lower()
    if not any(form.fullmatch(lowered) for form in _MAC_FORMS):
        _fail(field, f"{show(text)} is not a MAC address: write it like 00:18:8b:52:79:80")
    digits = re.sub(r"[:.-]", "", lowered)
    if int(digits[:2], 16) & 1 or digits == "0" * 12:
        _fail(field, f"{show(text)} is a multicast or empty address, not a NIC's: check the MAC")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


# ------------------------------------------------------------------------------ modes


class EraseMode(enum.StrEnum):
    """What MAAS does to the disks on release."""

    NONE = "none"
    QUICK = "quick"
    SECURE = "secure"


def parse_erase_mode(value: object, field: str = "erase") -> EraseMode:
    text = _text(value, field, "an erase mode")
    try:
        return EraseMode(text)
    except ValueError:
        _fail(field, f"{show(text)} is not an erase mode: use one of {', '.join(m.value for m in EraseMode)}")


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_flag(value: object, field: str) -> bool:
    """A yes/no detail: a bool, or true/false, yes/no, 1/0, on/off in any case."""
    if isinstance(value, bool):
        return value
    text = _text(value, field, "true or false")
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    _fail(field, f"{show(text)} is not true or false: use true or false")


# ------------------------------------------------------------------------------ secrets


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives, never what it is: ``env:NAME`` (the worker's environment),
    ``block:name`` (a Prefect Secret block) or ``block:name#key`` (one entry of a Secret block
    holding a JSON object: one block for a rack's BMCs)."""

    kind: str  # "env" | "block"
    name: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" + (f"#{self.key}" if self.key else "")

    def within(self, scope: tuple[str, ...]) -> bool:
        """Whether this reference starts with one of ``scope``'s prefixes (``block:tenant-``,
        ``env:METALFLOW_ROOT_``): how far a reference a tenant wrote may reach."""
        text = str(self)
        return any(text.startswith(prefix) for prefix in scope if prefix)


#: The reference grammar, also a JSON-schema pattern (no named groups there).
SECRET_REF_PATTERN = r"(env:[A-Za-z_][A-Za-z0-9_]{0,127}|block:[a-z0-9][a-z0-9-]{0,127}(#[A-Za-z0-9._-]{1,128})?)"
_SECRET_REF = re.compile(SECRET_REF_PATTERN, re.ASCII)
SECRET_REF_FIX = (
    "expected a reference to where the secret lives, like env:METALFLOW_IPMI_PASSWORD, "
    "block:ipmi-host-001 or block:rack-1#host-001; the secret itself never goes here"
)


def parse_secret_ref(value: object, field: str = "credential_ref") -> SecretRef:
    """A :class:`SecretRef`. The error never contains the value: a password pasted here by
    mistake must not reach a log, the journal or CloudStack's answer."""
    if isinstance(value, SecretRef):
        return value
    m = _SECRET_REF.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        # A password pasted here by mistake is a secret from now on: the process's scrubber
        # masks it wherever else it turns up (the caller's log line, a journal detail).
        _learn_refused(value)
        _fail(field, SECRET_REF_FIX)
    kind, _, rest = m.string.partition(":")
    name, _, key = rest.partition("#")
    return SecretRef(kind, name, key)


# ------------------------------------------------------------------------------ crypt hashes and keys

_B64 = r"[./A-Za-z0-9]"
_CRYPT_HASHES = (
    re.compile(rf"\$6\$(?:rounds=[0-9]{{1,9}}\$)?{_B64}{{1,16}}\${_B64}{{86}}", re.ASCII),  # sha512crypt
    re.compile(rf"\$5\$(?:rounds=[0-9]{{1,9}}\$)?{_B64}{{1,16}}\${_B64}{{43}}", re.ASCII),  # sha256crypt
    re.compile(rf"\$y\${_B64}+\${_B64}+\${_B64}{{43}}", re.ASCII),  # yescrypt
    re.compile(rf"\$gy\${_B64}+\${_B64}+\${_B64}{{43}}", re.ASCII),  # gost-yescrypt
    re.compile(rf"\$2[aby]\$[0-9]{{2}}\${_B64}{{53}}", re.ASCII),  # bcrypt
)
CRYPT_HASH_FIX = (
    "expected a crypt hash ($6$..., $y$..., $5$... or $2b$...); a plain-text password is never "
    "accepted (make a hash with `openssl passwd -6` or `mkpasswd -m yescrypt`)"
)


def _learn_refused(value: object) -> None:
    """Teach the process's scrubber a value refused where only a secret's reference or hash
    belongs (it may well be the secret itself)."""
    if isinstance(value, (str, bytes)):
        learn(value)


def is_crypt_hash(text: str) -> bool:
    return any(p.fullmatch(text) for p in _CRYPT_HASHES)


def parse_crypt_hash(value: object, field: str = "root_password_hash") -> str:
    """A crypt(3) hash. The error never contains the value: it may be a plain password."""
    if not isinstance(value, str) or not is_crypt_hash(value):
        _learn_refused(value)  # likely a plain-text password: never shown from now on
        _fail(field, CRYPT_HASH_FIX)
    return value


SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
_KEY_COMMENT = re.compile(r"[A-Za-z0-9_@.:+=/,-]+(?: [A-Za-z0-9_@.:+=/,-]+)*", re.ASCII)


def parse_ssh_key(value: object, field: str = "ssh_keys") -> str:
    """One ``authorized_keys`` line, ``type base64 [comment]``: a known key type, base64 that
    decodes to a key blob of that same type, a plain comment. Options (``from=...,command=...``)
    are refused: they would change what the key may do."""
    text = _text(value, field, "an SSH public key")
    if "\n" in text or "\r" in text:
        _fail(field, "one key per line: split the keys into separate entries")
    parts = text.split(" ", 2)
    if len(parts) < 2 or not all(parts[:2]):
        _fail(field, f"{show(text, 40)} is not 'type base64 [comment]' (one space between the parts)")
    ktype, body = parts[0], parts[1]
    if ktype not in SSH_KEY_TYPES:
        _fail(
            field,
            f"key type {show(ktype, 40)} is not accepted: use one of {', '.join(SSH_KEY_TYPES)}, "
            "with no options before the type",
        )
    try:
        blob = base64.b64decode(body, validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        inner = blob[4 : 4 + n].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        _fail(field, f"the {ktype} key's base64 body does not decode to a key: copy the whole .pub line")
    if inner != ktype:
        _fail(field, f"the key says {ktype} but its body holds a {show(inner, 40)} key")
    if len(parts) == 3 and not _KEY_COMMENT.fullmatch(parts[2]):
        _fail(field, "the key comment may hold only letters, digits, single spaces and @.:+=/,_-")
    return text
