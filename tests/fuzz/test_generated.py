"""Generated inputs at every entry point: valid inputs mutated the ways paste errors and
hostile users mutate them (control characters, non-ASCII digits, stray whitespace, overlong
strings, wrong JSON types). Each must be either accepted in its canonical form (exactly what
the one vocabulary in ``integrations/common/values.py`` accepts, nothing stripped) or refused
with the field named, no traceback, and nothing written."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metalflow.integrations.cloudstack.payload import PayloadError
from metalflow.integrations.cloudstack.payload import parse_vlan as payload_vlan
from metalflow.integrations.common import values as v
from tests.fuzz import drivers
from tests.fuzz.catalogue import CANARY_MAAS_SECRET, CANARY_PASSWORD
from tests.fuzz.drivers import World

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CONTROL = ["\n", "\r", "\t", "\x00", "\x0b", "\x1b", "\u2028", "\u00a0"]
FOREIGN_DIGITS = {"0": "٠", "1": "١", "2": "۲", "3": "३", "4": "４", "5": "৫", "6": "๖", "7": "٧", "8": "８", "9": "९"}


@st.composite
def mutated(draw: st.DrawFn, text: str) -> Any:
    """``text`` changed one way an edge must cope with."""
    how = draw(st.sampled_from(["control", "space", "digit", "unicode", "overlong", "type", "case", "cut"]))
    if how == "control":
        ch, at = draw(st.sampled_from(CONTROL)), draw(st.integers(0, len(text)))
        return text[:at] + ch + text[at:]
    if how == "space":
        return draw(st.sampled_from([" " + text, text + " ", text + "\n", "\t" + text]))
    if how == "digit":
        at = [i for i, c in enumerate(text) if c.isdigit()]
        if not at:
            return text + "١"
        i = draw(st.sampled_from(at))
        return text[:i] + FOREIGN_DIGITS[text[i]] + text[i + 1 :]
    if how == "unicode":
        ch, at = draw(st.characters(min_codepoint=0x80, max_codepoint=0x2FFF)), draw(st.integers(0, len(text)))
        return text[:at] + ch + text[at:]
    if how == "overlong":
        return (text * (300 // max(1, len(text)) + 1))[: draw(st.integers(64, 300))]
    if how == "type":
        return draw(st.sampled_from([True, False, None, 3.5, -1, 0, [], {}, [text], {"value": text}]))
    if how == "case":
        return text.upper()
    return text[: draw(st.integers(0, max(0, len(text) - 1)))]


def accepts(parse: Any, value: Any, *args: Any) -> Any:
    """What the one vocabulary makes of ``value``, or None when it refuses it."""
    try:
        return parse(value, *args)
    except v.BadValue:
        return None


def assert_refused(out: drivers.Outcome, failure: str | int, field: str, before: Any, after: Any) -> None:
    assert "Traceback" not in out.text, out.text[-2000:]
    assert failure in out.failure, f"expected {failure}, got {out.failure}: {out.text[:500]}"
    assert field in out.text, f"the error does not name {field!r}: {out.text[:500]}"
    assert after == before, "a refused input changed the inventory or reached Prefect"


# ---------------------------------------------------------------------------- extension


EXT_FIELDS = {
    "vm_name": ("web-01", lambda x: accepts(v.parse_vm_name, x)),
    "image": ("ubuntu/jammy", lambda x: accepts(v.parse_image, x)),
    # CloudStack details may say Secure or QUICK (older templates): ASCII case is folded there.
    "erase": ("quick", lambda x: accepts(v.parse_erase_mode, x.lower() if isinstance(x, str) and x.isascii() else x)),
    "root_password_ref": ("block:tenant-a-root", lambda x: accepts(v.parse_secret_ref, x)),
}


@FUZZ
@given(data=st.data(), key=st.sampled_from(sorted(EXT_FIELDS)))
def test_extension_details(world: World, data: st.DataObject, key: str) -> None:
    good, parse = EXT_FIELDS[key]
    value = data.draw(mutated(good if key != "root_password_ref" else CANARY_PASSWORD[:3] + good))
    if value is None or value == "":
        return  # an absent or empty detail is not given (the default applies), not a bad one
    if parse(value) is not None:
        return  # the vocabulary accepts it: the create it leads to is the e2e suite's business
    before = world.snapshot()
    out = drivers.run_extension(world, {"vm_ext": {key: value}})
    assert_refused(out, 1, key, before, world.snapshot())
    for secret in drivers.EXTENSION_SECRETS:
        assert secret not in out.text + out.log


@FUZZ
@given(uri=mutated("vlan://100"))
def test_extension_vlan(world: World, uri: Any) -> None:
    try:
        vlan = payload_vlan(uri, "broadcastUri")
    except PayloadError:
        vlan = -1
    if vlan is None or vlan >= 0:
        return  # accepted, or untagged / absent: the default NIC takes cloudstack.vlan
    before = world.snapshot()
    out = drivers.run_extension(world, {"nics": [(uri, True)]})
    assert_refused(out, 1, "broadcastUri", before, world.snapshot())


@FUZZ
@given(vlan=mutated("200"))
def test_extension_plug_vlan(world: World, vlan: Any) -> None:
    if accepts(v.parse_vlan, vlan) is not None:
        return
    before = world.snapshot()
    out = drivers.run_extension(world, {"action": "PlugNetwork", "parameters": {"vlan": vlan}})
    assert_refused(out, 1, "vlan", before, world.snapshot())


# ---------------------------------------------------------------------------- rack config


@FUZZ
@given(data=st.data(), key=st.sampled_from(["mac", "port"]))
def test_rack_host_fields(data: st.DataObject, key: str) -> None:
    good = drivers.rack_doc({})["racks"][0]["hosts"][0][key]
    value = data.draw(mutated(good))
    out = drivers.run_rack({"host": {key: value}})
    if "accepted" in out.failure:
        cabled = out.accepted.racks[0].hosts[0]
        if key == "mac":
            assert cabled.mac == v.parse_mac(value), f"{value!r} accepted as {cabled.mac!r}"
        else:
            assert cabled.port == value and value.isascii() and value.strip() == value, f"{value!r} accepted"
        return
    assert_refused(out, "ConfigError", f"hosts[0].{key}", 0, 0)
    assert drivers.SWITCH_PASSWORD not in out.text


@FUZZ
@given(data=st.data(), key=st.sampled_from(["ip", "port", "username"]))
def test_rack_switch_fields(data: st.DataObject, key: str) -> None:
    good = {"ip": "10.0.0.1", "port": "22", "username": "admin"}[key]
    value = data.draw(mutated(good))
    out = drivers.run_rack({"switch": {key: value}})
    if "accepted" in out.failure:
        switch = out.accepted.racks[0].switch
        if key == "port":
            assert switch.port == v.parse_tcp_port(value), f"{value!r} accepted as {switch.port!r}"
        else:
            assert getattr(switch, key) == value and value.isascii(), f"{value!r} accepted"
        return
    assert_refused(out, "ConfigError", f"l2Switch.{key}", 0, 0)
    assert drivers.SWITCH_PASSWORD not in out.text


# ---------------------------------------------------------------------------- inventory import


IMPORT_FIELDS = {
    "name": ("host-009", lambda x: accepts(v.parse_hostname, x)),
    "ipmi_credential_ref": ("block:ipmi-host-009", lambda x: accepts(v.parse_secret_ref, x)),
    "ipmi_port": ("623", lambda x: accepts(v.parse_tcp_port, x)),
}


@FUZZ
@given(data=st.data(), key=st.sampled_from(sorted(IMPORT_FIELDS)))
def test_import_fields(world: World, data: st.DataObject, key: str) -> None:
    good, parse = IMPORT_FIELDS[key]
    value = data.draw(mutated(good))
    if parse(value) is not None:
        return  # the vocabulary accepts it (a port as 623 or "623"): importing it is the inventory tests' business
    before = world.snapshot()
    out = drivers.run_import(world, {"host": {key: value}})
    assert_refused(out, "InventoryError", key, before, world.snapshot())
    if key == "ipmi_credential_ref" and isinstance(value, str) and len(value) > 3:
        # The fix text names example references ("block:..."): a cut value may be a piece of it.
        assert value not in out.text.replace(v.SECRET_REF_FIX, ""), "a credential reference field echoed its value"


@FUZZ
@given(pxe=mutated("100"))
def test_import_pxe_vlan(world: World, pxe: Any) -> None:
    if pxe is None:
        return  # not given: the import keeps the stored PXE VLAN
    if isinstance(pxe, int) and not isinstance(pxe, bool) and accepts(v.parse_vlan, pxe) is not None:
        return
    before = world.snapshot()
    out = drivers.run_import(world, {"pxe_vlan": pxe})
    assert_refused(out, "InventoryError", "pxe_vlan", before, world.snapshot())


# ---------------------------------------------------------------------------- MAAS settings


@FUZZ
@given(data=st.data(), key=st.sampled_from(["MaasIP", "MaasPort", "MaasKey", "MaasConsumerKey"]))
def test_maas_settings(data: st.DataObject, key: str) -> None:
    parts = {"MaasIP": "10.0.0.5", "MaasPort": "5240", "MaasKey": "tokenkey", "MaasConsumerKey": "consumer"}
    value = data.draw(mutated(parts[key]))
    if not isinstance(value, str) or ";" in value:
        return  # the settings string is text; a ';' starts another part
    parts[key] = value
    text = ";".join(f"{k}={val}" for k, val in parts.items()) + f";MaasSecret={CANARY_MAAS_SECRET}"
    out = drivers.run_maas(text)
    assert CANARY_MAAS_SECRET not in out.text
    if "accepted" in out.failure:
        s = out.accepted
        assert s.url.isascii() and s.consumer_key.isascii() and s.token_key.isascii(), repr(s.url)
        if key == "MaasPort":
            # The settings string allows blanks (spaces, tabs) around a value (documented); nothing else.
            assert s.port == accepts(v.parse_tcp_port, value.strip(" \t")), f"{value!r} accepted as port {s.port}"
        return
    assert_refused(out, "ConfigError", key, 0, 0)


# ---------------------------------------------------------------------------- CLI


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vlan=mutated("200"))
def test_cli_trigger_vlan(world: World, vlan: Any) -> None:
    import json

    text = vlan if isinstance(vlan, str) else json.dumps(vlan)
    if "\x00" in text:
        return  # argv cannot carry NUL
    before = world.snapshot()
    out = drivers.run_cli(world, ["trigger", "plug-nic", "--param", "host=host-001", "--param", f"vlan={text}"])
    after = world.snapshot()
    assert "Traceback" not in out.text and "raised" not in out.failure, out.text[-2000:]
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if accepts(v.parse_vlan, parsed) is not None and not isinstance(parsed, str):
        return  # a good VLAN goes on to the API (answered 404 by the recorder)
    assert 2 in out.failure, f"expected exit 2, got {out.failure}: {out.text[:500]}"
    assert "vlan" in out.text, out.text[:500]
    assert after == before, "a refused --param reached the Prefect API"


# ---------------------------------------------------------------------------- flow parameters


VM_FIELDS = {
    "name": ("web-01", lambda x: accepts(v.parse_hostname, x)),
    "image": ("ubuntu/jammy", lambda x: accepts(v.parse_image, x)),
    "uuid": (drivers.VM_UUID, lambda x: accepts(v.parse_ident, x, "uuid")),
    "root_password_ref": ("block:tenant-a-root", lambda x: accepts(v.parse_secret_ref, x)),
    # Not a parameter any more (the hash travels as a reference): every value is refused.
    "root_password_hash": ("$6$saltsalt$" + "a" * 86, lambda x: None),
}


@FUZZ
@given(data=st.data(), key=st.sampled_from(sorted(VM_FIELDS)))
def test_flow_vm_fields(data: st.DataObject, key: str) -> None:
    good, parse = VM_FIELDS[key]
    value = data.draw(mutated(good))
    out = drivers.run_flow({"vm": {key: value}})
    canonical = parse(value)
    if key == "root_password_ref" and value is None:
        assert "accepted" in out.failure, "root_password_ref=None (optional: no root password) was refused"
        return
    if "accepted" in out.failure:
        got = getattr(out.accepted["vm"], key)
        assert canonical is not None and str(got) == str(canonical), f"{value!r} accepted as {got!r}"
        return
    assert_refused(out, "ParameterTypeError", key, 0, 0)
    if key in ("root_password_ref", "root_password_hash") and isinstance(value, str) and len(value) > 3:
        # The fix text names example references ("block:..."): a cut value may be a piece of it.
        shown = out.text.replace(v.SECRET_REF_FIX, "")
        assert value not in shown, "a secret field's input came back in the validation error"


@FUZZ
@given(vlan=mutated("200"), flow=st.sampled_from(["plug-nic", "unplug-nic", "provision"]))
def test_flow_vlans(vlan: Any, flow: str) -> None:
    if flow == "provision":
        out = drivers.run_flow({"vm": {"nics": [{"vlan": vlan, "default": True}]}})
    else:
        out = drivers.run_flow({"flow": flow, "params": {"host": "host-001", "vlan": vlan}})
    canonical = accepts(v.parse_vlan, vlan)
    if "accepted" in out.failure:
        got = out.accepted["vm"].nics[0].vlan if flow == "provision" else out.accepted["vlan"]
        assert canonical is not None and got == canonical, f"{vlan!r} accepted as {got!r}"
        return
    assert_refused(out, "ParameterTypeError", "vlan", 0, 0)
