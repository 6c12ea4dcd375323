"""``metalflow trigger --param``: parsed and checked against the flow's own parameter types
without any API call (the end-to-end tests in tests/e2e/test_cli.py run the command itself)."""

from __future__ import annotations

import pytest

from metalflow.deployments.params import looks_like_json, parse_params, parse_value, validate_params
from metalflow.flows.nics import plug_nic
from metalflow.flows.power import status
from metalflow.flows.provision import provision
from metalflow.integrations.common.values import BadValue

VM = '{"name": "web-01", "uuid": "vm-1", "image": "ubuntu/jammy", "nics": [{"vlan": 100, "default": true}]}'


@pytest.mark.parametrize(
    "text, want",
    [("{", True), ("[1]", True), ('"x"', True), ("12", True), ("-1", True), ("true", True), ("null", True)]
    + [("host-001", False), ("", False), ("web", False), ("١٢", False)],
)
def test_what_looks_like_json(text, want):
    assert looks_like_json(text) is want


def test_values_are_json_when_they_look_like_it():
    assert parse_params(["vlan=200", "flag=true", "vm=" + VM])["vm"]["nics"] == [{"vlan": 100, "default": True}]
    assert parse_params(["host=host-001"]) == {"host": "host-001"}
    # a parameter the flow takes as text keeps what was written (a CloudStack id stays a string)
    assert parse_params(["host=1004"], status) == {"host": "1004"}
    assert parse_params(['host="1004"'], status) == {"host": "1004"}


@pytest.mark.parametrize(
    "pairs, field",
    [
        (["vm={bad json"], "--param vm"),
        (["vlan=[1,"], "--param vlan"),
        (["vlan=-Infinity"], "--param vlan"),
        (["vlan=5\n"], "--param vlan"),
        ([" vlan=5"], "--param"),
        (["[/red]"], "--param #1"),
        (["vlan=5", "vlan=6"], "--param vlan"),
        (["vm={}", 'x={"$ref": {"block_document_id": "1"}}'], "--param x"),
    ],
)
def test_bad_pairs_are_refused_naming_the_parameter(pairs, field):
    with pytest.raises(BadValue) as err:
        parse_params(pairs)
    assert err.value.field == field


def test_the_flows_own_types_refuse_bad_values_naming_the_field():
    validate_params(plug_nic, parse_params(["host=host-001", "vlan=200"], plug_nic))
    cases = [
        (plug_nic, ["host=host-001", "vlan=NaN1"], "vlan"),
        (plug_nic, ["host=host-001"], "vlan: missing"),
        (status, ["host=host-001", "colour=red"], "no parameter colour"),
        (provision, ["host=host-001", "vm=" + VM.replace("web-01", "Web_01")], "vm.name"),
        (provision, ["host=host-001", "vm=" + VM.replace("100", "4095")], "vm.nics.0.vlan"),
    ]
    for flow, pairs, says in cases:
        with pytest.raises(BadValue) as err:
            validate_params(flow, parse_params(pairs, flow))
        assert says in str(err.value)


def test_a_secret_in_the_wrong_parameter_is_not_echoed():
    vm = VM.replace('"nics"', '"root_password_ref": "hunter2-CANARY", "nics"')
    with pytest.raises(BadValue) as err:
        validate_params(provision, parse_params(["host=host-001", "vm=" + vm], provision))
    assert "vm.root_password_ref" in str(err.value) and "CANARY" not in str(err.value)
    with pytest.raises(BadValue) as err:
        parse_params(["host=host-001", "hunter2-CANARY"])
    assert "CANARY" not in str(err.value)
    with pytest.raises(BadValue) as err:
        parse_value("vm", '{"pw": "hunter2-CANARY"')
    assert "CANARY" not in str(err.value)
