"""The vocabulary (integrations/common/values.py) and its pydantic types (fields.py): every
parser's good forms and canonical output, every class of bad value it refuses, and that an
error names the field and never quotes a value that may be a secret."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

from metalflow.integrations.common import MetalflowError
from metalflow.integrations.common import fields as f
from metalflow.integrations.common import values as v
from metalflow.integrations.common.values import BadValue


def key_line(ktype: str = "ssh-ed25519", inner: str | None = None, comment: str = "ops@example") -> str:
    """An authorized_keys line whose base64 body holds a key blob of ``inner`` (default: ``ktype``)."""
    name = (inner or ktype).encode()
    blob = struct.pack(">I", len(name)) + name + struct.pack(">I", 32) + bytes(range(32))
    return f"{ktype} {base64.b64encode(blob).decode()}" + (f" {comment}" if comment else "")


KEY = key_line()
SHA512 = "$6$saltsalt$" + "A" * 86
YESCRYPT = "$y$j9T$abcdefgh$" + "B" * 43
BCRYPT = "$2b$12$" + "C" * 53


def refused(parse, value, field="the_field"):
    with pytest.raises(BadValue) as exc:
        parse(value, field)
    assert exc.value.field == field and str(exc.value).startswith(f"{field}: ")
    return exc.value


# ------------------------------------------------------------------------------ BadValue


def test_bad_value_is_a_metalflow_error_and_a_value_error():
    err = BadValue("vlan", "no")
    assert isinstance(err, MetalflowError) and isinstance(err, ValueError)
    assert (err.field, err.reason, str(err)) == ("vlan", "no", "vlan: no")


def test_show_quotes_with_repr_and_cuts_long_values():
    assert v.show("a\n") == "'a\\n'"
    assert len(v.show("x" * 500)) == 60 and v.show("x" * 500).endswith("...")


# ------------------------------------------------------------------------------ numbers

# Bad-value classes shared by every number: each must be refused by parse_vlan, parse_int, parse_tcp_port.
BAD_NUMBERS = {
    "trailing newline": "100\n",
    "leading space": " 100",
    "trailing space": "100 ",
    "Arabic-Indic digits": "١٠٠",
    "fullwidth digits": "１００",
    "sign": "+100",
    "negative": "-100",
    "float string": "100.0",
    "float": 100.0,
    "bool True": True,
    "bool False": False,
    "hex": "0x64",
    "empty": "",
    "None": None,
    "underscore": "1_00",
    "ten digits": "0000000100",
}


@pytest.mark.parametrize("value, want", [(2, 2), ("2", 2), (4094, 4094), ("4094", 4094), ("0100", 100), (100, 100)])
def test_vlan_good(value, want):
    assert v.parse_vlan(value, "vlan") == want
    assert type(v.parse_vlan(value, "vlan")) is int


@pytest.mark.parametrize("value", [0, 1, "1", 4095, "4095", 5000, -1])
def test_vlan_out_of_range_or_default_vlan(value):
    err = refused(v.parse_vlan, value)
    assert "2" in err.reason and "4094" in err.reason


def test_vlan_1_says_why():
    assert "default VLAN" in refused(v.parse_vlan, 1).reason


@pytest.mark.parametrize("case", sorted(BAD_NUMBERS))
def test_every_number_parser_refuses(case):
    value = BAD_NUMBERS[case]
    refused(v.parse_vlan, value)
    refused(v.parse_tcp_port, value)
    refused(lambda x, fld: v.parse_int(x, fld, low=0, high=10**6), value)


def test_bools_are_never_numbers():
    assert "boolean" in refused(v.parse_vlan, True).reason
    assert "boolean" in refused(v.parse_tcp_port, False).reason


@pytest.mark.parametrize("value, want", [(1, 1), ("22", 22), (65535, 65535)])
def test_tcp_port_good(value, want):
    assert v.parse_tcp_port(value, "port") == want


@pytest.mark.parametrize("value", [0, 65536, "65536", "pw@host", "admin:pw@host"])
def test_tcp_port_bad(value):
    refused(v.parse_tcp_port, value)


def test_parse_int_names_what_and_the_range():
    err = refused(lambda x, fld: v.parse_int(x, fld, low=1, high=5, what="a count"), 9)
    assert "a count" in err.reason and "1-5" in err.reason


# ------------------------------------------------------------------------------ names


@pytest.mark.parametrize("value", ["web-01", "a", "0", "a" * 63, "host-001", "9host"])
def test_hostname_good(value):
    assert v.parse_hostname(value, "hostname") == value


@pytest.mark.parametrize(
    "value, hint",
    [
        ("web-01\n", "whitespace"),
        (" web-01", "whitespace"),
        ("web-01 ", "whitespace"),
        ("host_3", "'_'"),
        ("web-01.example.com", "FQDN"),
        ("Web-01", "upper-case"),
        ("a" * 64, ""),
        ("-web", ""),
        ("web-", ""),
        ("", ""),
        ("wéb", "ASCII"),
        ("web١", "ASCII"),
        ("ｗｅｂ", "ASCII"),
        ("web/01", ""),
    ],
)
def test_hostname_bad(value, hint):
    err = refused(v.parse_hostname, value)
    assert hint in err.reason
    assert "lower-case letters" in err.reason or "ASCII" in err.reason


def test_hostname_refuses_non_strings():
    assert "string" in refused(v.parse_hostname, 42).reason


def test_vm_name_lower_cases_then_is_a_hostname():
    assert v.parse_vm_name("Web-01", "vm_name") == "web-01"
    refused(v.parse_vm_name, "Web-01\n")
    refused(v.parse_vm_name, "O'Neil")
    # str.lower maps the Kelvin sign to ASCII "k": the ASCII check comes first.
    refused(v.parse_vm_name, "\u212aube")


@pytest.mark.parametrize("value", ["ubuntu/jammy", "centos7", "custom/my-image", "rhel/9.4", "ubuntu/jammy_hwe"])
def test_image_good(value):
    assert v.parse_image(value, "image") == value


@pytest.mark.parametrize(
    "value",
    ["ubuntu/jammy\n", " ubuntu/jammy", "http://x/y.img", "a/b/c", "/jammy", "ubuntu/", "", "ubuntu/jámmy", "../etc"],
)
def test_image_bad(value):
    assert "image" in refused(v.parse_image, value).reason


@pytest.mark.parametrize("value", ["7f0c2a3e-1b2c-4d5e-8f90-0123456789ab", "host_3", "tor-1.rack", "A" * 64])
def test_ident_good(value):
    assert v.parse_ident(value, "id") == value


@pytest.mark.parametrize("value", ["uuid\n", " uuid", "", "-x", "A" * 65, "a b", "a/b", "١", "a;reboot"])
def test_ident_bad(value):
    assert "a VM uuid" in refused(lambda x, fld: v.parse_ident(x, fld, "a VM uuid"), value).reason


# ------------------------------------------------------------------------------ MAC addresses


@pytest.mark.parametrize(
    "value",
    ["00:18:8b:52:79:80", "00-18-8B-52-79-80", "0018.8b52.7980", "00188B527980", "00:18:8B:52:79:80"],
)
def test_mac_forms_give_one_canonical_form(value):
    assert v.parse_mac(value, "mac") == "00:18:8b:52:79:80"


@pytest.mark.parametrize(
    "value, why",
    [
        ("01:00:5e:00:00:01", "multicast"),  # IPv4 multicast
        ("ff:ff:ff:ff:ff:ff", "multicast"),  # broadcast
        ("00:00:00:00:00:00", "empty"),
        ("00:18:8b:52:79:80\n", "MAC address"),
        (" 00:18:8b:52:79:80", "MAC address"),
        ("00:18:8b:52:79", "MAC address"),
        ("00:18-8b:52:79:80", "MAC address"),  # mixed separators
        ("0:18:8b:52:79:80", "MAC address"),
        ("00:18:8b:52:79:8g", "MAC address"),
        ("００:18:8b:52:79:80", "ASCII"),
    ],
)
def test_mac_bad(value, why):
    assert why in refused(v.parse_mac, value).reason


# ------------------------------------------------------------------------------ modes


@pytest.mark.parametrize("value", ["none", "quick", "secure"])
def test_erase_mode_good(value):
    mode = v.parse_erase_mode(value, "erase")
    assert mode is v.EraseMode(value) and mode == value


@pytest.mark.parametrize("value", ["Quick", "quick\n", " quick", "full", "", "ｑuick", 1, None])
def test_erase_mode_bad(value):
    refused(v.parse_erase_mode, value)


@pytest.mark.parametrize(
    "value, want",
    [
        (True, True),
        (False, False),
        ("true", True),
        ("YES", True),
        ("1", True),
        ("On", True),
        ("no", False),
        ("0", False),
    ],
)
def test_flag_good(value, want):
    assert v.parse_flag(value, "flag") is want


@pytest.mark.parametrize("value", ["true\n", " yes", "y", "2", "", "ｙｅｓ", 1, None])
def test_flag_bad(value):
    refused(v.parse_flag, value)


# ------------------------------------------------------------------------------ secrets

SECRET = "Canary-Pa55w0rd-7f3a"


@pytest.mark.parametrize(
    "value, want",
    [
        ("env:METALFLOW_IPMI_PASSWORD", ("env", "METALFLOW_IPMI_PASSWORD", "")),
        ("block:ipmi-host-001", ("block", "ipmi-host-001", "")),
        ("block:rack-1#host-001", ("block", "rack-1", "host-001")),
    ],
)
def test_secret_ref_good(value, want):
    ref = v.parse_secret_ref(value, "ref")
    assert (ref.kind, ref.name, ref.key) == want and str(ref) == value
    assert v.parse_secret_ref(ref, "ref") is ref


@pytest.mark.parametrize(
    "value",
    [
        SECRET,
        f"env:{SECRET}-x",
        f"block:{SECRET}",  # upper case: not a block name
        f"block:x#{SECRET} ",
        f"env:METALFLOW_PW\n{SECRET}",
        f"{SECRET}\n",
        f" env:{SECRET}",
        f"file:/{SECRET}",
        f"env:{SECRET}١",
        "env:",
        "block:",
        "block:x#",
    ],
)
def test_secret_ref_errors_never_contain_the_input(value):
    err = refused(v.parse_secret_ref, value, "credential_ref")
    assert SECRET not in str(err) and repr(value) not in str(err)
    assert err.reason == v.SECRET_REF_FIX  # the same words whatever was given
    assert "env:" in err.reason and "block:" in err.reason  # says what a reference looks like


def test_secret_ref_refuses_non_strings():
    refused(v.parse_secret_ref, 42)


def test_secret_ref_scope():
    ref = v.parse_secret_ref("block:tenant-a-root", "ref")
    assert ref.within(("block:tenant-a-",)) and not ref.within(("block:tenant-b-", ""))


@pytest.mark.parametrize("value", [SHA512, "$6$rounds=5000$salt$" + "A" * 86, "$5$salt$" + "D" * 43, YESCRYPT, BCRYPT])
def test_crypt_hash_good(value):
    assert v.parse_crypt_hash(value, "root_password_hash") == value and v.is_crypt_hash(value)


@pytest.mark.parametrize(
    "value",
    [
        SECRET,
        SHA512 + "\n",
        " " + SHA512,
        SHA512[:-1],
        "$1$salt$abcdefghijklmnopqrstuv",  # md5crypt: too weak, refused
        "$6$salt$" + "A" * 85 + "é",
        "$6$" + SECRET + "$" + "A" * 86,
        "",
        None,
    ],
)
def test_crypt_hash_errors_never_contain_the_input(value):
    err = refused(v.parse_crypt_hash, value)
    if value:
        assert value not in str(err) and value.strip() not in str(err)
    assert SECRET not in str(err) and "openssl passwd -6" in err.reason


# ------------------------------------------------------------------------------ SSH keys


@pytest.mark.parametrize(
    "value",
    [
        KEY,
        key_line(comment=""),
        key_line("ssh-rsa"),
        key_line("ecdsa-sha2-nistp256"),
        key_line(comment="ops@example two words"),
    ],
)
def test_ssh_key_good(value):
    assert v.parse_ssh_key(value, "ssh_keys") == value


@pytest.mark.parametrize(
    "value, why",
    [
        (f'command="/bin/sh" {KEY}', "no options"),
        (f"from=10.0.0.1 {KEY}", "no options"),
        (f"{KEY}\n{KEY}", "one key per line"),
        (KEY + "\n", "one key per line"),
        (KEY + "\r", "one key per line"),
        ("ssh-ed25519 !!!notbase64!!! x", "does not decode"),
        ("ssh-ed25519 AAAA", "does not decode"),
        (key_line("ssh-ed25519", inner="ssh-rsa"), "holds a"),
        ("ssh-ed25519", "type base64"),
        ("ssh-ed25519  " + KEY.split()[1], "type base64"),
        (" " + KEY, "type base64"),
        (key_line(comment="x;rm -rf /"), "comment"),
        (key_line(comment="ops "), "comment"),
        (key_line(comment="é"), "ASCII"),
        ("ssh-dss AAAAB3NzaC1kc3M=", "not accepted"),
    ],
)
def test_ssh_key_bad(value, why):
    assert why in refused(v.parse_ssh_key, value).reason


# ------------------------------------------------------------------------------ fields.py (pydantic)


class Form(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)
    vlan: f.VlanId | None = None
    host: f.Hostname | None = None
    image: f.ImageName | None = None
    ident: f.Ident | None = None
    ref: f.SecretRefText | None = None
    key: f.SshKey | None = None
    erase: f.EraseModeField | None = None


def test_fields_parse_like_the_parsers():
    form = Form(vlan="100", host="web-01", image="ubuntu/jammy", ident="u-1", ref="block:x#y", key=KEY, erase="quick")
    assert form.vlan == 100 and form.erase is v.EraseMode.QUICK and form.ref == "block:x#y"
    assert form.model_dump(mode="json")["erase"] == "quick"


@pytest.mark.parametrize(
    "field, value",
    [
        ("vlan", 1),
        ("vlan", True),
        ("vlan", "5\n"),
        ("vlan", "١٠٠"),
        ("vlan", 4095),
        ("host", "web-01\n"),
        ("host", "host_3"),
        ("host", "a" * 64),
        ("image", "http://x"),
        ("ident", "x\n"),
        ("key", KEY + "\n"),
        ("erase", "Quick"),
    ],
)
def test_fields_refuse_what_the_parsers_refuse(field, value):
    with pytest.raises(ValidationError) as exc:
        Form(**{field: value})
    (error,) = exc.value.errors()
    assert error["loc"] == (field,) and error["type"] == "value_error"


def test_a_secret_in_a_ref_field_stays_out_of_the_validation_error():
    with pytest.raises(ValidationError) as exc:
        Form(ref=SECRET)
    assert SECRET not in str(exc.value)


def test_fields_publish_the_rule_in_their_json_schema():
    props = Form.model_json_schema()["properties"]
    vlan = next(s for s in props["vlan"]["anyOf"] if s.get("type") == "integer")
    assert (vlan["minimum"], vlan["maximum"]) == (2, 4094)
    erase = next(s for s in props["erase"]["anyOf"] if s.get("type") == "string")
    assert erase["enum"] == ["none", "quick", "secure"]


# ------------------------------------------------------------------------------ properties

STRING_PARSERS = {
    "vlan": v.parse_vlan,
    "tcp_port": v.parse_tcp_port,
    "hostname": v.parse_hostname,
    "vm_name": v.parse_vm_name,
    "image": v.parse_image,
    "ident": lambda x, fld: v.parse_ident(x, fld, "an id"),
    "mac": v.parse_mac,
    "erase_mode": v.parse_erase_mode,
    "flag": v.parse_flag,
    "secret_ref": v.parse_secret_ref,
    "crypt_hash": v.parse_crypt_hash,
    "ssh_key": v.parse_ssh_key,
}

#: Values each parser accepts, to build variants of (a hostname, a MAC, ...).
GOOD = {
    "vlan": "100",
    "tcp_port": "443",
    "hostname": "web-01",
    "vm_name": "Web-01",
    "image": "ubuntu/jammy",
    "ident": "host-001",
    "mac": "00:18:8b:52:79:80",
    "erase_mode": "quick",
    "flag": "true",
    "secret_ref": "env:METALFLOW_X",
    "crypt_hash": SHA512,
    "ssh_key": KEY,
}

non_ascii = st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=("Cs",))


@pytest.mark.parametrize("kind", sorted(STRING_PARSERS))
def test_good_values_parse(kind):
    STRING_PARSERS[kind](GOOD[kind], kind)


@pytest.mark.parametrize("kind", sorted(STRING_PARSERS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_string_with_a_non_ascii_char_is_refused(kind, data):
    good = GOOD[kind]
    at = data.draw(st.integers(0, len(good)))
    text = good[:at] + data.draw(non_ascii) + good[at:]
    with pytest.raises(BadValue):
        STRING_PARSERS[kind](text, kind)


@pytest.mark.parametrize("kind", sorted(STRING_PARSERS))
@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_any_string_with_a_trailing_newline_is_refused(kind, text):
    with pytest.raises(BadValue):
        STRING_PARSERS[kind](text + "\n", kind)
    with pytest.raises(BadValue):
        STRING_PARSERS[kind](GOOD[kind] + "\n", kind)


def _canonical(kind, value):
    out = STRING_PARSERS[kind](value, kind)
    return str(out) if kind in ("secret_ref",) else out


@pytest.mark.parametrize("kind", sorted(STRING_PARSERS))
@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_parse_is_idempotent_on_its_output(kind, text):
    for candidate in (text, GOOD[kind]):
        try:
            once = _canonical(kind, candidate)
        except BadValue:
            continue
        again = once if isinstance(once, bool) else str(once)
        assert _canonical(kind, again) == once


@settings(max_examples=200, deadline=None)
@given(st.integers())
def test_vlan_accepts_exactly_2_to_4094(n):
    if 2 <= n <= 4094:
        assert v.parse_vlan(n, "vlan") == n == v.parse_vlan(str(n), "vlan")
    else:
        with pytest.raises(BadValue):
            v.parse_vlan(n, "vlan")


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=6, max_size=6), st.sampled_from(["{}:{}:{}:{}:{}:{}", "{}-{}-{}-{}-{}-{}"]))
def test_mac_is_canonical_whatever_the_form(raw, form):
    text = form.format(*(f"{b:02X}" for b in raw))
    canonical = ":".join(f"{b:02x}" for b in raw)
    if raw[0] & 1 or raw == bytes(6):
        with pytest.raises(BadValue):
            v.parse_mac(text, "mac")
    else:
        assert v.parse_mac(text, "mac") == canonical == v.parse_mac(canonical.replace(":", ""), "mac")


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=40).filter(lambda s: not s.startswith(("env:", "block:"))))
def test_a_non_reference_is_refused_without_echo(text):
    with pytest.raises(BadValue) as exc:
        v.parse_secret_ref(text, "ref")
    assert exc.value.reason == v.SECRET_REF_FIX


# ---------------------------------------------------------------------------- addresses


@pytest.mark.parametrize("value", ["10.0.0.5", "fd00::5", "tor-1.example", "tor-1.example.", "maas", "TOR.Example"])
def test_address_good(value):
    assert v.parse_address(value, "ip") == value


@pytest.mark.parametrize(
    "value, words",
    [
        ("", "missing"),
        ("tor-1\n", "white space"),
        (" 10.0.0.5", "white space"),
        ("tor-１", "ASCII"),
        ("fe80::1%eth0", "IPv6 zone"),
        ("[fd00::5]", "without brackets"),
        ("http://10.0.0.5", "scheme"),
        ("10.0.0.5:22", "host:port"),
        ("10.0.0.300", "IPv4"),
        ("-tor.example", "host name"),
        ("tor_1", "host name"),
        (True, "string"),
    ],
)
def test_address_bad_names_the_field_and_why(value, words):
    with pytest.raises(BadValue) as err:
        v.parse_address(value, "l2Switch.ip")
    assert err.value.field == "l2Switch.ip" and words in str(err.value)


# ---------------------------------------------------------------------------- the schema agrees


SAMPLES = [
    "web-01",
    "web-01\n",
    " web-01",
    "Web-01",
    "web_01",
    "a" * 63,
    "a" * 64,
    "ubuntu/jammy",
    "ubuntu/jammy\n",
    "custom/my-image.v2",
    "http://x/y",
    "a/b/c",
    "0f6c1a8e-7b1d-4c1e",
    "x\r",
    "block:ipmi-host-001",
    "block:rack-1#host-001",
    "env:METALFLOW_X",
    "env:X\n",
    "pw",
    "١٠٠",
]


@pytest.mark.parametrize("name", ["Hostname", "ImageName", "Ident", "SecretRefText"])
def test_the_json_schema_pattern_agrees_with_the_parser(name):
    """The UI's form and the API check a parameter with the schema's pattern (the API with
    Python's ``re.search``); the run checks it with the parser. They must agree on every
    value, so nothing the API accepts fails when the run starts, and the reverse."""
    import re

    class M(BaseModel):
        x: getattr(f, name)  # type: ignore[valid-type]

    pattern = M.model_json_schema()["properties"]["x"]["pattern"]
    for sample in SAMPLES:
        try:
            M(x=sample)
            parsed = True
        except ValidationError:
            parsed = False
        assert (re.search(pattern, sample) is not None) == parsed, f"{name}: {sample!r}"
