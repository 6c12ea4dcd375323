"""Parsing the payloads CloudStack 4.21 and 4.22 write, and mapping them to flow parameters."""

from __future__ import annotations

import json

import pytest

from metalflow.integrations.cloudstack.payload import PayloadError, load_payload, parse_payload, parse_vlan
from tests.cloudstack.payloads import (
    CALLER,
    GIB,
    NETWORK_EXTRA,
    NETWORK_GUEST,
    gson,
    nic,
    payload,
    write,
)

UUID = "7f0c2a3e-1b2c-4d5e-8f90-0123456789ab"


def parse(doc, action="create"):
    return parse_payload(json.loads(gson(doc)), action)


def two_nics(extra_vlan="vlan://200", default_vlan="vlan://100"):
    return [
        nic(0, default_vlan, default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01"),
        nic(1, extra_vlan, default=False, network=NETWORK_EXTRA, mac="02:00:5a:00:00:02"),
    ]


def test_a_422_prepare_payload(tmp_path):
    doc = payload(
        "prepare",
        UUID,
        cpus=4,
        ram=3 * GIB + 1,
        host_ext={"endpoint": "10.0.0.5"},
        extension_ext={"endpoint": "10.0.0.5"},
        resourcemap={"site": "dc1"},
    )
    p = load_payload(write(tmp_path, doc), "prepare")
    assert p.vm_uuid == UUID and p.vm_internal_name == "i-2-100-VM" and p.state == "Starting"
    assert p.cpus == 4 and p.min_memory_mb == 3 * 1024 + 1  # bytes rounded up to whole MB
    assert p.caller == CALLER and p.host == {"endpoint": "10.0.0.5"} and p.resourcemap == {"site": "dc1"}
    (n,) = p.nics
    # A NIC's "uuid" is its network; "nicUuid" is the NIC.
    assert n.default and n.network_uuid == NETWORK_GUEST and n.nic_uuid.startswith("5b1c9a40")
    assert n.vlan() == 100
    assert p.vm_details["deployvm"] == "true"


def test_a_421_create_payload_has_no_caller_and_leaves_empty_maps_out():
    doc = payload(
        "create", UUID, version="4.21", nics=two_nics(), vm_ext={"image": "ubuntu/jammy", "metalflow_host": "host-003"}
    )
    assert "caller" not in doc and set(doc["externaldetails"]) == {"virtualmachine"}
    p = parse(doc)
    assert p.caller is None and p.host == {} and p.extension == {}
    assert p.virtualmachine["cloudstack.vlan"] == "100"
    assert p.flow_nics() == [{"vlan": 100, "default": True}, {"vlan": 200, "default": False}]
    assert p.owner() == {"vm": UUID}  # no owner details: the VM uuid names it


def test_gson_escapes_are_read_as_the_characters():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE+x== ops@example <ops>"
    doc = payload("create", UUID, vm_ext={"image": "ubuntu/jammy", "ssh_key": key, "vm_name": "O'Neil-01"})
    text = gson(doc)
    assert "\\u003d\\u003d" in text and "\\u003c" in text and "\\u0027" in text and "==" not in text
    p = parse(doc)
    assert p.detail("ssh_key") == key
    with pytest.raises(PayloadError, match=r"ssh_key\[0\]"):
        p.ssh_keys()  # read as the characters, then parsed: a 3-byte body is no ed25519 key
    with pytest.raises(PayloadError, match="vm_name"):
        p.vm_name()  # an apostrophe is no hostname


def test_the_default_nics_vlan_falls_back_to_cloudstack_vlan():
    doc = payload("create", UUID, nics=two_nics(default_vlan="vlan://untagged"), vm_ext={"cloudstack.vlan": "300"})
    assert parse(doc).flow_nics() == [{"vlan": 300, "default": True}, {"vlan": 200, "default": False}]


@pytest.mark.parametrize(
    "default_vlan, extra_vlan, where",
    [
        ("vlan://untagged", "vlan://200", "nics[0].broadcastUri"),
        (None, "vlan://200", "nics[0].broadcastUri"),
        ("vlan://100", "vlan://untagged", "nics[1].broadcastUri"),
        ("vlan://100", None, "nics[1].broadcastUri"),
    ],
)
def test_a_nic_without_a_vlan_is_refused_for_create(default_vlan, extra_vlan, where):
    doc = payload("create", UUID, nics=two_nics(extra_vlan, default_vlan))
    with pytest.raises(PayloadError) as err:
        parse(doc).flow_nics()
    assert where in err.value.field and "VLAN" in str(err.value)


def test_prepare_needs_no_vlan_yet():
    """On a brand-new isolated network prepare runs before the network exists (no broadcastUri)."""
    doc = payload("prepare", UUID, nics=[nic(0, None, default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")])
    p = parse(doc, "prepare")
    assert p.default_nic is not None and p.default_nic.vlan() is None and p.vm_name() == "i-2-100-vm"


def test_later_payloads_carry_no_nics():
    for action in ("stop", "delete", "status", "reboot"):
        p = parse(payload(action, UUID), action)
        assert p.nics == ()
        with pytest.raises(PayloadError, match="NICs only with prepare, create and start"):
            p.flow_nics()


@pytest.mark.parametrize(
    "value, want",
    [
        ("vlan://100", 100),
        ("100", 100),
        (100, 100),
        ("VLAN://4094", 4094),
        (200.0, 200),  # a NUMBER parameter with DECIMAL validation arrives as a float
        ("vlan://untagged", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_vlan(value, want):
    assert parse_vlan(value, "f") == want


@pytest.mark.parametrize(
    "value, match",
    [
        ("vxlan://5000", "only vlan://"),
        ("vlan://0", "2-4094"),
        ("vlan://4095", "2-4094"),
        ("vlan://abc", "not a VLAN"),
        (5000, "2-4094"),
        # VLAN 1 is every switch's default VLAN: refused here, no longer by the switch later.
        ("vlan://1", "default VLAN"),
        (1, "default VLAN"),
        ("vlan://١٠٠", "outside ASCII|not a VLAN"),  # Arabic-Indic digits
        ("vlan://１００", "outside ASCII|not a VLAN"),  # fullwidth digits
        ("100\n", "not a VLAN"),
        ("vlan:// 100", "not a VLAN"),
        ("vlan://100 ", "not a VLAN"),
        (True, "boolean"),
        (200.5, "not a VLAN"),
        (1.0, "default VLAN"),
        ("vlan://untagged\n", "not a VLAN"),
    ],
)
def test_parse_vlan_refuses(value, match):
    with pytest.raises(PayloadError, match=match) as refused:
        parse_vlan(value, "f")
    assert refused.value.field == "f"


@pytest.mark.parametrize(
    "vm_ext, want",
    [
        ({"image": "ubuntu/jammy"}, "ubuntu/jammy"),
        ({"os": "ubuntu", "distro_series": "noble"}, "ubuntu/noble"),  # the 4.22 MaaS extension's template details
        ({"distro_series": "centos/centos7"}, "centos/centos7"),
        ({"image": "centos7"}, "centos7"),
    ],
)
def test_image_from_template_details(vm_ext, want):
    assert parse(payload("create", UUID, vm_ext=vm_ext)).image() == want


def test_image_from_the_seeds_template_url_when_cloudstack_sends_one():
    doc = payload("create", UUID)
    doc["cloudstack.vm.details"]["disks"] = [
        {"data": {"origUrl": "http://dummy/x.iso"}},
        {"data": {"origUrl": "centos7"}},
    ]
    assert parse(doc).image() == "centos7"


@pytest.mark.parametrize(
    "vm_ext, match",
    [
        ({}, "externaldetails\\[0\\].image"),
        ({"image": "http://images/ubuntu.img"}, "not a MAAS image name"),
        ({"distro_series": "jammy"}, "needs the template detail os"),
    ],
)
def test_image_missing_or_wrong(vm_ext, match):
    with pytest.raises(PayloadError, match=match):
        parse(payload("create", UUID, vm_ext=vm_ext)).image()


def test_vm_name_from_details_else_the_internal_name():
    assert parse(payload("create", UUID, vm_ext={"vm_name": "Web-01"})).vm_name() == "web-01"
    assert parse(payload("create", UUID, details={"hostname": "db-7"})).vm_name() == "db-7"
    assert parse(payload("create", UUID)).vm_name() == "i-2-100-vm"
    with pytest.raises(PayloadError, match="externaldetails.virtualmachine.vm_name"):
        parse(payload("create", UUID, vm_ext={"vm_name": "web_01"})).vm_name()


def test_erase_mode():
    assert parse(payload("delete", UUID)).erase_mode("quick") == "quick"
    assert parse(payload("delete", UUID, vm_ext={"erase": "Secure"})).erase_mode("quick") == "secure"
    p = parse(payload("Reinstall", UUID, vm_ext={"erase": "secure"}, custom=True, parameters={"erase": "none"}))
    assert p.erase_mode("quick") == "none"
    with pytest.raises(PayloadError, match="erase"):
        parse(payload("delete", UUID, vm_ext={"erase": "shred"})).erase_mode("quick")


def test_owner_from_details_else_the_vm_never_the_422_caller():
    p = parse(payload("create", UUID, vm_ext={"account_id": "acc-1", "domain_id": "dom-1"}))
    assert p.owner() == {"account": "acc-1", "domain": "dom-1"}
    # never the 4.22 caller: whoever made the API call is not the VM's owner (reference section 7)
    assert parse(payload("create", UUID)).owner() == {"vm": UUID}


def test_421_custom_action_has_no_vm_details_and_typed_parameters():
    doc = payload("PlugNetwork", UUID, version="4.21", custom=True, parameters={"vlan": 200})
    assert "virtualmachine" not in doc["externaldetails"]
    p = parse(doc, "PlugNetwork")
    assert p.virtualmachine == {} and p.parameters == {"vlan": 200} and p.nics == ()
    assert parse_vlan(p.parameters["vlan"], "parameters.vlan") == 200


def test_an_unrouted_agent_command_payload():
    p = parse_payload({"action": "com.cloud.agent.api.CheckHealthCommand"}, "x")
    assert p.vm_uuid is None and p.nics == ()
    with pytest.raises(PayloadError, match="virtualmachineid"):
        p.require_vm()


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.__setitem__("externaldetails", []), "externaldetails"),
        (lambda d: d["cloudstack.vm.details"].__setitem__("nics", {}), "cloudstack.vm.details.nics"),
        (lambda d: d["cloudstack.vm.details"].__setitem__("cpus", -1), "cloudstack.vm.details.cpus"),
        (lambda d: d.__setitem__("virtualmachineid", "../../etc/passwd"), "virtualmachineid"),
        (lambda d: d["cloudstack.vm.details"]["nics"].__setitem__(0, "eth0"), "cloudstack.vm.details.nics[0]"),
    ],
)
def test_malformed_payloads_name_the_field(mutate, field):
    doc = payload("create", UUID)
    mutate(doc)
    with pytest.raises(PayloadError) as err:
        parse_payload(doc, "create")
    assert err.value.field == field


def test_a_file_that_is_not_json_names_the_position_only(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"externaldetails": {"host": {"apikey": "c:t:SECRET"}}, oops')
    with pytest.raises(PayloadError) as err:
        load_payload(path, "create")
    assert "not valid JSON" in str(err.value) and "line 1" in str(err.value) and "SECRET" not in str(err.value)
    with pytest.raises(PayloadError, match="cannot read"):
        load_payload(tmp_path / "missing.json", "create")


# --- hostile details: parsed with the one vocabulary, nothing stripped, the path named -----------

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f ops@example"


@pytest.mark.parametrize(
    "vm_ext, call, field",
    [
        ({"vm_name": "web-01\n"}, "vm_name", "externaldetails.virtualmachine.vm_name"),
        ({"vm_name": " web-01"}, "vm_name", "externaldetails.virtualmachine.vm_name"),
        ({"hostname": "web_01"}, "vm_name", "externaldetails.virtualmachine.hostname"),
        ({"vm_name": "w" * 64}, "vm_name", "externaldetails.virtualmachine.vm_name"),
        ({"vm_name": "web-01.example.com"}, "vm_name", "externaldetails.virtualmachine.vm_name"),
        ({"vm_name": "wéb-01"}, "vm_name", "externaldetails.virtualmachine.vm_name"),
        ({"image": "ubuntu/jammy\n"}, "image", "externaldetails.virtualmachine.image"),
        ({"image": "http://x/y.img"}, "image", "externaldetails.virtualmachine.image"),
        ({"os": "ubuntu\n", "distro_series": "jammy"}, "image", "externaldetails.virtualmachine.os"),
        ({"os": "ubuntu", "distro_series": "jammy "}, "image", "externaldetails.virtualmachine.distro_series"),
        ({"erase": "quick\n"}, "erase", "externaldetails.virtualmachine.erase"),
        ({"ssh_keys": KEY + "\n"}, "ssh_keys", "externaldetails.virtualmachine.ssh_keys[1]"),
        ({"ssh_keys": 'command="sh" ' + KEY}, "ssh_keys", "externaldetails.virtualmachine.ssh_keys[0]"),
        ({"ssh_keys": KEY + "\r\n" + KEY}, "ssh_keys", "externaldetails.virtualmachine.ssh_keys[0]"),
        ({"ssh_keys": "ssh-ed25519 not-base64!"}, "ssh_keys", "externaldetails.virtualmachine.ssh_keys[0]"),
        ({"ssh_keys": "\n".join([KEY] * 33)}, "ssh_keys", "externaldetails.virtualmachine.ssh_keys"),
        ({"cloudstack.vlan": "1"}, "nics", "externaldetails.virtualmachine.cloudstack.vlan"),
        ({"cloudstack.vlan": "300\n"}, "nics", "externaldetails.virtualmachine.cloudstack.vlan"),
    ],
)
def test_a_bad_detail_is_refused_naming_its_path(vm_ext, call, field):
    nics = two_nics(default_vlan="vlan://untagged") if call == "nics" else two_nics()
    base = {} if "os" in vm_ext else {"image": "ubuntu/jammy"}
    p = parse(payload("create", UUID, nics=nics, vm_ext={**base, **vm_ext}))
    calls = {
        "vm_name": p.vm_name,
        "image": p.image,
        "erase": lambda: p.erase_mode("quick"),
        "ssh_keys": p.ssh_keys,
        "nics": p.flow_nics,
    }
    with pytest.raises(PayloadError) as refused:
        calls[call]()
    assert refused.value.field == field, str(refused.value)
    assert str(refused.value).startswith(field + ": ")


def test_details_are_not_stripped_and_good_ones_parse():
    p = parse(payload("create", UUID, nics=two_nics(), vm_ext={"vm_name": "Web-01", "ssh_keys": f"{KEY}\n{KEY}"}))
    assert p.vm_name() == "web-01"  # a display name is lower-cased, never trimmed
    assert p.ssh_keys() == [KEY, KEY]
    p = parse(payload("create", UUID, vm_ext={"vm_name": "web-01 "}))
    assert p.detail("vm_name") == "web-01 "


@pytest.mark.parametrize("value, want", [("true", True), ("No", False), ("1", True), ("off", False)])
def test_flags(value, want):
    assert parse(payload("create", UUID, vm_ext={"power_on": value})).flag("power_on", not want) is want


@pytest.mark.parametrize("value", ["true\n", " yes", "maybe", "２"])
def test_a_bad_flag_is_refused(value):
    p = parse(payload("create", UUID, vm_ext={"power_on": value}))
    with pytest.raises(PayloadError) as refused:
        p.flag("power_on", False)
    assert refused.value.field == "externaldetails.virtualmachine.power_on"


def test_more_nics_than_the_limit_are_refused_while_parsing():
    from metalflow.integrations.common.values import MAX_NICS

    many = [
        nic(i, f"vlan://{100 + i}", default=i == 0, network=NETWORK_GUEST, mac=f"02:00:5a:00:01:{i:02x}")
        for i in range(MAX_NICS + 1)
    ]
    with pytest.raises(PayloadError, match=f"at most {MAX_NICS}") as refused:
        parse(payload("create", UUID, nics=many))
    assert refused.value.field == "cloudstack.vm.details.nics"
    assert len(parse(payload("create", UUID, nics=many[:MAX_NICS])).flow_nics()) == MAX_NICS


def test_two_nics_on_one_vlan_are_refused_in_the_payload():
    p = parse(payload("create", UUID, nics=two_nics(extra_vlan="vlan://100")))
    with pytest.raises(PayloadError, match="VLAN 100 is also nics") as refused:
        p.flow_nics()
    assert refused.value.field == "cloudstack.vm.details.nics[1].broadcastUri"


def test_a_secret_pasted_as_root_password_ref_is_refused_without_it():
    secret = "Hunter2-Canary-7f3a"
    p = parse(payload("create", UUID, vm_ext={"root_password_ref": secret}))
    with pytest.raises(PayloadError) as refused:
        p.root_password_ref()
    assert secret not in str(refused.value) and refused.value.field.endswith("root_password_ref")
    ok = parse(payload("create", UUID, vm_ext={"root_password_ref": "block:root-hash"}))
    assert ok.root_password_ref() == "block:root-hash"
    assert parse(payload("create", UUID)).root_password_ref() is None


def test_a_bad_vm_uuid_is_refused():
    with pytest.raises(PayloadError) as refused:
        parse(payload("create", UUID + "\n"))
    assert refused.value.field == "virtualmachineid"
