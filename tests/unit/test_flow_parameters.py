"""Flow parameters are the vocabulary's types: a bad VLAN or host is refused before any run
starts, both by the flow's own validation (the worker, a direct call) and by the JSON schema
Prefect publishes to the UI's form and validates API calls against."""

from __future__ import annotations

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.schema_tools.validation import is_valid

from metalflow.flows.bulk import bulk_provision
from metalflow.flows.destroy import destroy
from metalflow.flows.nics import plug_nic, unplug_nic
from metalflow.flows.power import reboot, start, status, stop
from metalflow.flows.provision import provision
from metalflow.flows.register import register_host

VM = {"name": "web-01", "uuid": "vm-0001", "image": "ubuntu/jammy", "nics": [{"vlan": 100, "default": True}]}
SECRET = "Canary-Root-Pa55-9d1e"
BAD_VLANS = [1, True, "5\n", 0, 4095, "١٠٠", "１００", 100.5]
BAD_HOSTS = ["host-001\n", " host-001", "", "../host", "host 001", "h" * 65, "hôst"]
HOST_FLOWS = [destroy, register_host, stop, start, reboot, status]


def schema_of(fl) -> dict:
    return fl.parameters.model_dump()


@pytest.mark.parametrize("fl", [plug_nic, unplug_nic])
@pytest.mark.parametrize("vlan", BAD_VLANS)
def test_a_bad_vlan_is_refused_before_the_run(fl, vlan):
    with pytest.raises(ParameterTypeError, match="vlan"):
        fl.validate_parameters({"host": "host-001", "vlan": vlan})


@pytest.mark.parametrize("fl", [plug_nic, unplug_nic])
def test_the_schema_refuses_vlan_1_and_booleans(fl):
    schema = schema_of(fl)
    assert is_valid({"host": "host-001", "vlan": 100}, schema)
    for vlan in (1, 0, 4095, True):
        assert not is_valid({"host": "host-001", "vlan": vlan}, schema), vlan


@pytest.mark.parametrize("fl", [plug_nic, unplug_nic])
def test_a_good_vlan_is_parsed(fl):
    assert fl.validate_parameters({"host": "host-001", "vlan": "200"}) == {"host": "host-001", "vlan": 200}


@pytest.mark.parametrize("fl", [*HOST_FLOWS, plug_nic])
@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_bad_host_is_refused_before_the_run(fl, host):
    params = {"host": host, **({"vlan": 100} if fl in (plug_nic, unplug_nic) else {})}
    with pytest.raises(ParameterTypeError, match="host"):
        fl.validate_parameters(params)


@pytest.mark.parametrize("fl", HOST_FLOWS)
def test_a_host_is_an_inventory_name_or_a_cloudstack_id(fl):
    for host in ("host-001", "7f0c2a3e-1b2c-4d5e-8f90-0123456789ab"):
        assert fl.validate_parameters({"host": host})["host"] == host
        assert is_valid({"host": host}, schema_of(fl))
    assert not is_valid({"host": "host-001\n"}, schema_of(fl))


@pytest.mark.parametrize(
    "vm, field",
    [
        ({**VM, "name": "web_01"}, "vm.name"),
        ({**VM, "name": "web-01\n"}, "vm.name"),
        ({**VM, "image": "ubuntu/jammy\n"}, "vm.image"),
        ({**VM, "uuid": "vm 1"}, "vm.uuid"),
        ({**VM, "nics": [{"vlan": 1, "default": True}]}, "vm.nics.0.vlan"),
        ({**VM, "nics": [{"vlan": True, "default": True}]}, "vm.nics.0.vlan"),
        ({**VM, "nics": [{"vlan": v, "default": v == 2} for v in range(2, 19)]}, "vm.nics"),
        ({**VM, "ssh_keys": ["ssh-ed25519 AAAA"]}, "vm.ssh_keys.0"),
        ({**VM, "root_password_hash": "$6$x$" + "A" * 86}, "vm.root_password_hash"),
    ],
)
def test_a_bad_vm_is_refused_before_the_run(vm, field):
    with pytest.raises(ParameterTypeError) as refused:
        provision.validate_parameters({"host": "host-001", "vm": vm})
    assert f"{field}:" in str(refused.value)


def test_the_root_password_travels_as_a_reference():
    params = provision.validate_parameters({"host": "host-001", "vm": {**VM, "root_password_ref": "block:root-hash"}})
    assert params["vm"].root_password_ref == "block:root-hash"
    assert "root_password_hash" not in schema_of(provision)["definitions"]["Vm"]["properties"]


def test_a_secret_pasted_as_the_root_password_ref_is_not_in_the_error():
    with pytest.raises(ParameterTypeError) as refused:
        provision.validate_parameters({"host": "host-001", "vm": {**VM, "root_password_ref": SECRET}})
    assert "vm.root_password_ref" in str(refused.value) and SECRET not in str(refused.value)


def test_erase_modes():
    assert destroy.validate_parameters({"host": "host-001", "erase": "secure"})["erase"] == "secure"
    for bad in ("Secure", "secure\n", "shred"):
        with pytest.raises(ParameterTypeError, match="erase"):
            destroy.validate_parameters({"host": "host-001", "erase": bad})
    assert not is_valid({"host": "host-001", "erase": "shred"}, schema_of(destroy))


def test_bulk_items_are_checked_the_same_way():
    good = {"requests": [{"host": "host-001", "vm": VM}]}
    assert bulk_provision.validate_parameters(good)["requests"][0].host == "host-001"
    for item in ({"host": "host-001\n", "vm": VM}, {"host": "host-001", "vm": {**VM, "name": "Web_01"}}):
        with pytest.raises(ParameterTypeError, match="requests"):
            bulk_provision.validate_parameters({"requests": [item]})


def test_the_hash_the_reference_names_is_checked_without_echo(monkeypatch):
    from metalflow.integrations.common.values import BadValue
    from metalflow.tasks.maas import _root_password_hash

    good = "$6$saltsalt$" + "A" * 86
    monkeypatch.setenv("METALFLOW_TEST_ROOT_HASH", good)
    assert _root_password_hash("env:METALFLOW_TEST_ROOT_HASH").reveal() == good
    for stored in (SECRET, good + "\n", " " + good):
        monkeypatch.setenv("METALFLOW_TEST_ROOT_HASH", stored)
        with pytest.raises(BadValue) as refused:
            _root_password_hash("env:METALFLOW_TEST_ROOT_HASH")
        assert refused.value.field == "vm.root_password_ref" and "env:METALFLOW_TEST_ROOT_HASH" in str(refused.value)
        assert SECRET not in str(refused.value) and "saltsalt" not in str(refused.value)


@pytest.mark.parametrize("raw", ["1", "0", "4095", "true", "10\n", "١٠"])
def test_the_pxe_vlan_setting_is_a_vlan_metalflow_may_configure(tmp_path, raw):
    from metalflow.tasks.settings import load_settings

    env = {"METALFLOW_CONFIG": str(tmp_path / "none.json")}
    assert load_settings({**env, "METALFLOW_PXE_VLAN": "12"}).pxe_vlan == 12
    with pytest.raises(ValueError, match="METALFLOW_PXE_VLAN"):
        load_settings({**env, "METALFLOW_PXE_VLAN": raw})


@pytest.mark.parametrize("value", [1, True, "x"])
def test_the_pxe_vlan_in_the_config_file_is_checked_too(tmp_path, value):
    import json

    from metalflow.tasks.settings import load_settings

    (tmp_path / "config.json").write_text(json.dumps({"pxe_vlan": value}))
    with pytest.raises(ValueError, match="PXE_VLAN"):
        load_settings({"METALFLOW_CONFIG": str(tmp_path / "config.json")})
