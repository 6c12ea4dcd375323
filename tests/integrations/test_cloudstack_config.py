"""CloudStack configuration parsing: the seed's settings string and rack config, the forms
operators actually type, and errors that name the part and never show a secret."""

from __future__ import annotations

import json
import pickle

import pytest

from metalflow.integrations.common import Secret
from metalflow.integrations.config import (
    ConfigError,
    MaasSettings,
    RackConfig,
    load_rack_config,
    parse_api_key,
    parse_settings,
    settings_from_api_key,
)
from metalflow.lab.spec import generate

# Verbatim from the seed page (CLOUDSTACK-9913).
SEED_SETTINGS_LINE = (
    "external.baremetal.system.url = MaasIP=172.31.0.75;MaasKey=fGWswZhpUQrrKUxprD;"
    "MaasSecret=CUaKSPXngrtRGRACtLLQKCYLqrQxPgTC;MaasConsumerKey=6sxtWH3XCfKgkspC8J"
)
SEED_SETTINGS = SEED_SETTINGS_LINE.split(" = ", 1)[1]
SEED_API_KEY = "6sxtWH3XCfKgkspC8J:fGWswZhpUQrrKUxprD:CUaKSPXngrtRGRACtLLQKCYLqrQxPgTC"
SEED_SECRET = "CUaKSPXngrtRGRACtLLQKCYLqrQxPgTC"
SEED_RACK = (
    '{ "racks": [ { "l2Switch": { "ip": "172.31.0.109", "username": "admin", "password": "password", '
    '"type": "Force10" }, "hosts": [ { "mac": "00:18:8b:52:79:80", "port": "1/1/1" } ] } ] }'
)

SECRET = "S3cretValueXyZ0987654321abcdefgh"  # distinctive, so a leak is unmistakable
KEYS = f"MaasKey=tokenkey123;MaasSecret={SECRET};MaasConsumerKey=consumer456"


def assert_no_secret(exc: BaseException, *secrets: str) -> None:
    for text in (str(exc), repr(exc), repr(getattr(exc, "problems", ""))):
        for s in secrets:
            assert s not in text, f"secret leaked into {text!r}"


# ---------------------------------------------------------------- settings string


@pytest.mark.parametrize("text", [SEED_SETTINGS, SEED_SETTINGS_LINE])
def test_seed_settings_parse(text):
    s = parse_settings(text)
    assert s.url == "http://172.31.0.75:5240/MAAS/"
    assert s.api_url == "http://172.31.0.75:5240/MAAS/api/2.0/"
    assert (s.consumer_key, s.token_key) == ("6sxtWH3XCfKgkspC8J", "fGWswZhpUQrrKUxprD")
    assert s.token_secret.reveal() == SEED_SECRET
    # The seed says the string is derived from the API key consumer:key:secret.
    assert isinstance(s.api_key, Secret) and s.api_key.reveal() == SEED_API_KEY


def test_settings_repr_and_str_show_no_secret():
    s = parse_settings(SEED_SETTINGS)
    assert SEED_SECRET not in repr(s) and SEED_SECRET not in str(s)
    assert SEED_SECRET not in repr(s.api_key)


@pytest.mark.parametrize(
    "maas_ip, extra, url",
    [
        ("10.0.0.5", "", "http://10.0.0.5:5240/MAAS/"),
        ("10.0.0.5", "MaasPort=5241;", "http://10.0.0.5:5241/MAAS/"),
        ("10.0.0.5:5240", "", "http://10.0.0.5:5240/MAAS/"),
        ("10.0.0.5:5240", "MaasPort=5240;", "http://10.0.0.5:5240/MAAS/"),
        ("https://maas.example:5443", "", "https://maas.example:5443/MAAS/"),
        ("https://maas.example", "", "https://maas.example:5443/MAAS/"),
        ("HTTP://maas.example", "", "http://maas.example:5240/MAAS/"),
        ("http://maas.example:5240/MAAS/api/2.0/", "", "http://maas.example:5240/MAAS/"),
        ("http://maas.example/proxy/maas", "", "http://maas.example:5240/proxy/maas/"),
        ("fd00::5", "", "http://[fd00::5]:5240/MAAS/"),
        ("[fd00::5]:5250", "", "http://[fd00::5]:5250/MAAS/"),
    ],
)
def test_settings_address_forms(maas_ip, extra, url):
    assert parse_settings(f"MaasIP={maas_ip};{extra}{KEYS}").url == url


def test_settings_whitespace_case_and_trailing_separator():
    s = parse_settings(
        f"  maasip = 10.0.0.5 ;\n MAASPORT= 5240; maaskey =tokenkey123 ;"
        f"MaasSECRET = {SECRET} ; maasconsumerkey=consumer456 ;; "
    )
    assert s == MaasSettings("http://10.0.0.5:5240/MAAS/", "consumer456", "tokenkey123", Secret(SECRET))


def test_settings_from_the_lab_spec():
    maas = generate(hosts=1, seed_secrets="t", privileged=True).maas
    s = parse_settings(maas.settings)
    assert s.url == maas.url
    assert s.api_key.reveal() == maas.api_key


@pytest.mark.parametrize(
    "text, field",
    [
        (f"MaasKey=tokenkey123;MaasSecret={SECRET};MaasConsumerKey=consumer456", "MaasIP"),
        (f"MaasIP=10.0.0.5;MaasSecret={SECRET};MaasConsumerKey=consumer456", "MaasKey"),
        ("MaasIP=10.0.0.5;MaasKey=tokenkey123;MaasConsumerKey=consumer456", "MaasSecret"),
        (f"MaasIP=10.0.0.5;MaasKey=tokenkey123;MaasSecret={SECRET}", "MaasConsumerKey"),
        (f"MaasIP=;{KEYS}", "MaasIP"),
        (f"MaasIP=10.0.0.5:99999;{KEYS}", "MaasIP"),
        (f"MaasIP=10.0.0.5;MaasPort=http;{KEYS}", "MaasPort"),
        (f"MaasIP=10.0.0.5;MaasPort=0;{KEYS}", "MaasPort"),
        (f"MaasIP=10.0.0.5:5240;MaasPort=5241;{KEYS}", "MaasPort"),
        (f"MaasIP=ftp://10.0.0.5;{KEYS}", "MaasIP"),
        (f"MaasIP=http://user@10.0.0.5;{KEYS}", "MaasIP"),
        (f"MaasIP=not a host;{KEYS}", "MaasIP"),
        (f"MaasIP=300.1.1.1;{KEYS}", "MaasIP"),
        (f"MaasIP=10.0.0.5;MaasUser=admin;{KEYS}", "MaasUser"),
        (f"MaasIP=10.0.0.5;MaasIP=10.0.0.6;{KEYS}", "MaasIP"),
        ("MaasIP=10.0.0.5;MaasKey=;MaasSecret=x;MaasConsumerKey=c", "MaasKey"),
        ("MaasIP=10.0.0.5;MaasKey=a:b;MaasSecret=x;MaasConsumerKey=c", "MaasKey"),
        # The malformed part is the secret itself: it must not be echoed.
        (f"MaasIP=10.0.0.5;MaasKey=k;MaasSecret={SECRET} {SECRET};MaasConsumerKey=c", "MaasSecret"),
        (f"MaasIP=10.0.0.5;MaasKey=k;MaasSecret={SECRET};extra;MaasConsumerKey=c", "part 4"),
        (f"MaasIP=10.0.0.5;MaasKey=k;MaasSecret=;MaasConsumerKey=c;x{SECRET}=1", "MaasSecret"),
        # An API key pasted as is, instead of split into three keys.
        (f"MaasIP=10.0.0.5;consumer456:tokenkey123:{SECRET}", "part 2"),
        (f"MaasIP=10.0.0.5;{SECRET}", "part 2"),
        ("", "MaasIP"),
    ],
)
def test_settings_errors_name_the_part_and_hide_the_secret(text, field):
    with pytest.raises(ConfigError) as info:
        parse_settings(text)
    err = info.value
    assert field in {p.field for p in err.problems}, err
    assert field in str(err)
    assert_no_secret(err, SECRET)


def test_settings_error_lists_every_problem_and_the_fix():
    with pytest.raises(ConfigError) as info:
        parse_settings("MaasIP=10.0.0.5:0")
    err = info.value
    fields = [p.field for p in err.problems]
    assert fields.count("MaasIP") == 1 and {"MaasKey", "MaasSecret", "MaasConsumerKey"} <= set(fields)
    assert "add MaasSecret=" in str(err)
    assert err.field == err.problems[0].field


def test_a_key_without_value_does_not_garble_the_other_messages():
    with pytest.raises(ConfigError) as info:
        parse_settings(f"MaasIP;{KEYS}")
    assert {p.field for p in info.value.problems} == {"part 1", "MaasIP"}
    assert "add MaasIP=<MAAS address>" in str(info.value)


def test_settings_error_survives_pickling():
    with pytest.raises(ConfigError) as info:
        parse_settings(f"MaasIP=10.0.0.5;MaasKey=k;MaasSecret={SECRET} x;MaasConsumerKey=c")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.field == "MaasSecret" and str(copy) == str(info.value)
    assert_no_secret(copy, SECRET)


def test_settings_rejects_non_strings():
    with pytest.raises(ConfigError) as info:
        parse_settings(None)  # type: ignore[arg-type]
    assert info.value.field == "settings"


# ---------------------------------------------------------------- API key


def test_seed_api_key_parses_and_matches_the_settings():
    key = parse_api_key(SEED_API_KEY)
    s = parse_settings(SEED_SETTINGS)
    assert (key.consumer_key, key.token_key, key.token_secret) == (s.consumer_key, s.token_key, s.token_secret)
    assert key.as_secret().reveal() == SEED_API_KEY
    assert SEED_SECRET not in repr(key)


@pytest.mark.parametrize("text", [f"  {SEED_API_KEY}", f"{SEED_API_KEY}\n", f"{SEED_API_KEY} "])
def test_api_key_with_whitespace_around_is_refused_without_echo(text):
    """Nothing is trimmed: the key with a newline from a copied file is refused, saying so."""
    with pytest.raises(ConfigError) as info:
        parse_api_key(text)
    assert info.value.field == "api_key" and "whitespace" in str(info.value)
    assert_no_secret(info.value, SEED_SECRET, "6sxtWH3XCfKgkspC8J", "fGWswZhpUQrrKUxprD")


@pytest.mark.parametrize(
    "text, field",
    [
        (f"consumer:{SECRET}", "api_key"),
        (f"a:b:{SECRET}:d", "api_key"),
        (f"::{SECRET}", "api_key.consumer_key"),
        (f"consumer::{SECRET}", "api_key.token_key"),
        ("consumer:token:", "api_key.token_secret"),
        (f"consumer:token:{SECRET};x", "api_key.token_secret"),
        (f"consumer:token:{SECRET} {SECRET}", "api_key.token_secret"),
        ("", "api_key"),
    ],
)
def test_api_key_errors(text, field):
    with pytest.raises(ConfigError) as info:
        parse_api_key(text)
    assert info.value.field == field
    assert_no_secret(info.value, SECRET)


def test_settings_from_api_key():
    s = settings_from_api_key("https://maas.example", SEED_API_KEY)
    assert s.url == "https://maas.example:5443/MAAS/" and s.api_key.reveal() == SEED_API_KEY
    assert settings_from_api_key("10.0.0.5", Secret(SEED_API_KEY), port=5241).url == "http://10.0.0.5:5241/MAAS/"
    with pytest.raises(ConfigError) as info:
        settings_from_api_key("bad host", SEED_API_KEY)
    assert info.value.field == "address"


# ---------------------------------------------------------------- MAC addresses


def _one_mac(mac: object) -> dict:
    return {"racks": [_rack(hosts=[{"mac": mac, "port": "1/1/1"}])]}


@pytest.mark.parametrize(
    "text",
    [
        "00:18:8b:52:79:80",
        "00:18:8B:52:79:80",
        "00-18-8B-52-79-80",
        "00188b527980",
        "0018.8b52.7980",
    ],
)
def test_mac_normalisation(text):
    """The rack config's MACs are values.parse_mac's: one normaliser for every reader."""
    assert load_rack_config(_one_mac(text)).macs() == ("00:18:8b:52:79:80",)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00:18:8b:52:79",
        "00:18:8b:52:79:80:aa",
        "zz:18:8b:52:79:80",
        "00188b52798",
        "0018.8b52.798g",
        "00:18-8b:52:79:80x",
        "  00188B527980 ",  # nothing is stripped
        "00:18:8b:52:79:80\n",
        "0:18:8b:52:79:80",  # one form per notation, no short groups
        "00:18:8b:52:79:8\u0660",  # an Arabic-Indic zero
        "01:00:5e:00:00:01",  # multicast: no NIC's
        None,
        7,
    ],
)
def test_mac_rejects(text):
    problems = _problems(_one_mac(text))
    assert "MAC" in problems["racks[0].hosts[0].mac"]


# ---------------------------------------------------------------- rack config


def test_seed_rack_config_parses():
    rc = load_rack_config(SEED_RACK)
    assert isinstance(rc, RackConfig) and len(rc.racks) == 1
    sw = rc.racks[0].switch
    assert (sw.ip, sw.port, sw.username, sw.type) == ("172.31.0.109", 22, "admin", "Force10")
    assert sw.password == Secret("password")
    assert [(h.mac, h.port) for h in rc.racks[0].hosts] == [("00:18:8b:52:79:80", "1/1/1")]
    assert "password'" not in repr(rc) and "'password" not in repr(rc)
    assert rc.find("00-18-8B-52-79-80") == (sw, "1/1/1")
    assert rc.find("00:00:00:00:00:01") is None


def test_rack_config_inputs_str_bytes_dict_path(tmp_path):
    want = load_rack_config(SEED_RACK)
    path = tmp_path / "rct.json"
    path.write_text(SEED_RACK)
    assert load_rack_config(SEED_RACK.encode()) == want
    assert load_rack_config(json.loads(SEED_RACK)) == want
    assert load_rack_config(path) == want
    assert load_rack_config(str(path)) == want
    with pytest.raises(ConfigError) as info:
        load_rack_config(tmp_path / "missing.json")
    assert info.value.field == "file"


def test_rack_config_normalises_macs_and_reads_the_switch_port():
    rc = load_rack_config(
        {
            "racks": [
                {
                    "l2Switch": {
                        "ip": "10.1.0.1",
                        "port": "2222",
                        "username": "admin",
                        "password": "pw",
                        "type": "Force10",
                    },
                    "hosts": [
                        {"mac": "00-18-8B-52-79-80", "port": "1/1/1"},
                        {"mac": "00188b527981", "port": "1/1/2"},
                        {"mac": "0018.8b52.7982", "port": "1/1/3"},
                    ],
                }
            ]
        }
    )
    assert rc.racks[0].switch.port == 2222
    assert rc.macs() == ("00:18:8b:52:79:80", "00:18:8b:52:79:81", "00:18:8b:52:79:82")
    assert rc.racks[0].hosts[1].port == "1/1/2"


def test_lab_rack_config_parses():
    spec = generate(hosts=6, switches=2, seed_secrets="t", privileged=True)
    rc = load_rack_config(spec.rack_config())
    assert [r.switch.ip for r in rc.racks] == [s.address for s in spec.switches]
    assert set(rc.macs()) == {m for h in spec.hosts for m in h.macs}
    for h in spec.hosts:
        for nic in h.nics:
            assert rc.find(nic.mac)[1] == nic.port


def _rack(switch: dict | None = None, hosts: list | None = None) -> dict:
    sw = {"ip": "10.1.0.1", "username": "admin", "password": "Sw1tchPassw0rd!", "type": "Force10"}
    sw.update(switch or {})
    return {"l2Switch": sw, "hosts": hosts if hosts is not None else []}


def _problems(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_rack_config(data)
    assert_no_secret(info.value, "Sw1tchPassw0rd!", "0therPassw0rd?")
    return {p.field: p.message for p in info.value.problems}


def test_rack_config_collects_every_error_with_its_path():
    data = {
        "racks": [
            _rack({"type": "NoSuchOS"}, [{"mac": "00:18:8b:52:79:80", "port": "1/1/1"}]),
            _rack(
                {"ip": "10.1.0.2", "port": 70000},
                [
                    {"mac": "zz", "port": "1/1/1"},
                    {"mac": "00:18:8b:52:79:81"},
                    {"port": "1/1/3"},
                    {"mac": "00:18:8b:52:79:82", "port": "1/1/4", "vlan": 5},
                    "not an object",
                ],
            ),
            _rack({"ip": "10.1.0.3", "password": None, "username": ""}),
            {"hosts": []},
        ]
    }
    problems = _problems(data)
    assert "'NoSuchOS'" in problems["racks[0].l2Switch.type"] and "Force10" in problems["racks[0].l2Switch.type"]
    assert "TCP" in problems["racks[1].l2Switch.port"] and "1-65535" in problems["racks[1].l2Switch.port"]
    assert "'zz' is not a MAC address" in problems["racks[1].hosts[0].mac"]
    assert "missing" in problems["racks[1].hosts[1].port"]
    assert "missing" in problems["racks[1].hosts[2].mac"]
    assert "unknown key" in problems["racks[1].hosts[3].vlan"]
    assert "racks[1].hosts[4]" in problems
    assert "missing" in problems["racks[2].l2Switch.password"]
    assert "racks[2].l2Switch.username" in problems
    assert "missing" in problems["racks[3].l2Switch"]


def test_rack_config_duplicates():
    data = {
        "racks": [
            _rack(
                {"ip": "10.1.0.1"},
                [{"mac": "00:18:8b:52:79:80", "port": "1/1/1"}, {"mac": "00:18:8b:52:79:81", "port": "1/1/1"}],
            ),
            _rack({"ip": "10.1.0.2", "password": "0therPassw0rd?"}, [{"mac": "00-18-8B-52-79-80", "port": "1/1/1"}]),
            _rack({"ip": "10.1.0.1"}, [{"mac": "00:18:8b:52:79:99", "port": "1/1/9"}]),
            _rack({"ip": "fd00::1"}),
            _rack({"ip": "fd00:0::1"}),
        ]
    }
    problems = _problems(data)
    assert problems["racks[0].hosts[1].port"] == "'1/1/1' is already used by racks[0].hosts[0] on this switch"
    assert problems["racks[1].hosts[0].mac"] == "00:18:8b:52:79:80 is already listed at racks[0].hosts[0].mac"
    assert "already the switch of racks[0]" in problems["racks[2].l2Switch.ip"]
    assert "already the switch of racks[3]" in problems["racks[4].l2Switch.ip"]
    assert len(problems) == 4  # the same port on two different switches is fine


@pytest.mark.parametrize(
    "port",
    [
        "1/1/1;reload",
        "1/1/1\nreload",
        "1/1/1 | include",
        "",
        "1/1/1\n",  # a trailing newline is not trimmed away
        " 1/1/2 ",  # nor spaces
        "1/1/\u0661",  # Arabic-Indic one
        "1/1/\uff11",  # fullwidth one
    ],
)
def test_rack_config_rejects_ports_that_could_smuggle_commands(port):
    problems = _problems({"racks": [_rack(hosts=[{"mac": "00:18:8b:52:79:80", "port": port}])]})
    assert list(problems) == ["racks[0].hosts[0].port"]


@pytest.mark.parametrize(
    "text, field",
    [
        ("[]", "$"),
        ('{"racks": {}}', "racks"),
        ('{"racks": []}', "racks"),
        ("{}", "racks"),
        ('{"racks": [], "extra": 1}', "extra"),
    ],
)
def test_rack_config_structure_errors(text, field):
    assert field in _problems(text)


def test_invalid_json_names_the_position_not_the_content():
    text = '{"racks": [{"l2Switch": {"password": "Sw1tchPassw0rd!" "ip": "x"}}]}'
    problems = _problems(text)
    assert "line 1 column" in problems["$"]


def test_password_of_the_wrong_type_is_not_echoed():
    problems = _problems({"racks": [_rack({"password": 123456789})]})
    assert "123456789" not in problems["racks[0].l2Switch.password"]


def test_port_grammar_comes_from_the_switch_dialects():
    """The dialects of ``integrations.switches`` decide which port names a type accepts."""
    from metalflow.integrations.switches import dialect_for

    problems = _problems(
        {
            "racks": [
                _rack(
                    hosts=[
                        {"mac": "00:18:8b:52:79:80", "port": "xe-0/0/1"},
                        {"mac": "00:18:8b:52:79:81", "port": "Gi0/1"},
                        {"mac": "00:18:8b:52:79:82", "port": "1/1/1;reload"},
                    ]
                )
            ]
        }
    )
    assert set(problems) == {"racks[0].hosts[0].port", "racks[0].hosts[2].port"}  # Gi0/1 is FTOS too
    assert "'xe-0/0/1' is not a force10 port name" in problems["racks[0].hosts[0].port"]
    # The same port on a Juniper switch is fine, and a Force10 name is not.
    juniper = _rack(
        {"type": "juniper_junos"},
        [{"mac": "00:18:8b:52:79:80", "port": "xe-0/0/1"}, {"mac": "00:18:8b:52:79:81", "port": "1/1/1"}],
    )
    assert list(_problems({"racks": [juniper]})) == ["racks[0].hosts[1].port"]
    # "1/1/1" and its long form name the same port: a duplicate.
    long_form = dialect_for("Force10").validate_port("1/1/1")
    assert long_form != "1/1/1"
    problems = _problems(
        {
            "racks": [
                _rack(
                    hosts=[
                        {"mac": "00:18:8b:52:79:80", "port": "1/1/1"},
                        {"mac": "00:18:8b:52:79:81", "port": long_form},
                    ]
                )
            ]
        }
    )
    assert list(problems) == ["racks[0].hosts[1].port"]


def test_the_seed_password_does_not_garble_messages():
    seed = json.loads(SEED_RACK)["racks"][0]
    with pytest.raises(ConfigError) as info:
        load_rack_config({"racks": [seed, _rack({"ip": "10.1.0.9", "password": ""})]})
    assert str(info.value) == "rack config: racks[1].l2Switch.password: expected a non-empty string"


@pytest.mark.parametrize(
    "switch, field",
    [
        ({"port": "\u0662\u0662"}, "port"),  # Arabic-Indic 22
        ({"port": "\uff12\uff12"}, "port"),  # fullwidth 22
        ({"port": " 22"}, "port"),
        ({"port": True}, "port"),
        ({"port": 0}, "port"),
        ({"ip": "10.1.0.1\n"}, "ip"),
        ({"ip": " 10.1.0.1"}, "ip"),
        ({"ip": "fe80::1%eth0"}, "ip"),
        ({"ip": "tor-\uff11.example"}, "ip"),
        ({"username": "admin\n"}, "username"),
        ({"username": " admin"}, "username"),
        ({"type": "Force10\n"}, "type"),
    ],
)
def test_rack_config_switch_values_are_taken_as_written(switch, field):
    """Nothing is trimmed and only ASCII digits make a port: each is refused at its path."""
    problems = _problems({"racks": [_rack(switch)]})
    assert list(problems) == [f"racks[0].l2Switch.{field}"]


def test_rack_config_ssh_port_as_ascii_digits_is_read():
    rc = load_rack_config({"racks": [_rack({"port": "2222"})]})
    assert rc.racks[0].switch.port == 2222


# ---------------------------------------------------------------- settings: credentials and reprs


@pytest.mark.parametrize(
    "maas_ip",
    [
        "admin:Pw0rdLeak99@10.0.0.5",
        "admin:Pw0rdLeak99@maas.example:5240",
        "http://admin:Pw0rdLeak99@10.0.0.5:5240/MAAS/",
        "admin:Pw0rdLeak99",  # user:password without a host: the "port" is the password
        "10.0.0.5:Pw0rdLeak99",
    ],
)
def test_credentials_in_maas_ip_are_refused_without_echo(maas_ip):
    with pytest.raises(ConfigError) as info:
        parse_settings(f"MaasIP={maas_ip};{KEYS}")
    err = info.value
    assert [p.field for p in err.problems] == ["MaasIP"]
    assert_no_secret(err, "Pw0rdLeak99", SECRET)
    message = err.problems[0].message
    assert "host" in message and ("credentials do not go in the address" in message or "port" in message)


def test_user_password_at_host_says_where_credentials_go():
    with pytest.raises(ConfigError) as info:
        parse_settings(f"MaasIP=admin:pw@host;{KEYS}")
    message = str(info.value)
    assert "pw@host" not in message and "'pw" not in message
    assert "host[:port]" in message and "credentials do not go in the address" in message


@pytest.mark.parametrize(
    "text, field",
    [
        (f"MaasIP=10.0.0.5:\u0665\u0662\u0664\u0660;{KEYS}", "MaasIP"),  # Arabic-Indic 5240
        (f"MaasIP=10.0.0.5;MaasPort=\uff15\uff12\uff14\uff10;{KEYS}", "MaasPort"),  # fullwidth 5240
        (f"MaasIP=10.0.0.5:+5240;{KEYS}", "MaasIP"),
        (f"MaasIP=10.0.0.5;MaasPort=5240.0;{KEYS}", "MaasPort"),
        (f"MaasIP=maas.\uff45xample;{KEYS}", "MaasIP"),
        (f"MaasIP=fe80::1%eth0;{KEYS}", "MaasIP"),
        (f"MaasIP=http://10.0.0.5/MAAS\u00e9/;{KEYS}", "MaasIP"),
        ("MaasIP=10.0.0.5;MaasKey=t\u00f6ken;MaasSecret=x;MaasConsumerKey=c", "MaasKey"),
    ],
)
def test_settings_parts_are_ascii_and_whole(text, field):
    with pytest.raises(ConfigError) as info:
        parse_settings(text)
    assert field in {p.field for p in info.value.problems}
    assert_no_secret(info.value, SECRET)


def test_settings_and_api_key_reprs_show_no_key_material():
    s = parse_settings(SEED_SETTINGS)
    key = parse_api_key(SEED_API_KEY)
    for part in SEED_API_KEY.split(":"):
        assert part not in repr(s) and part not in str(s)
        assert part not in repr(key) and part not in str(key)
    assert repr(key) == "ApiKey(consumer=***, token=***, secret=***)"
    assert "172.31.0.75" in repr(s)  # where MAAS is, which is not a secret, still shows


def test_key_parts_in_settings_errors_are_scrubbed():
    """A consumer key or token key that fails a check next to another bad part is key material:
    no message quotes it."""
    with pytest.raises(ConfigError) as info:
        parse_settings("MaasIP=bad host;MaasKey=TokenKeyMaterial9;MaasSecret=;MaasConsumerKey=ConsumerMaterial7")
    assert_no_secret(info.value, "TokenKeyMaterial9", "ConsumerMaterial7")
