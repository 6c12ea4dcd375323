"""The MAAS wire's offline logic: URL and key parsing, MAAS's form conventions, Retry-After,
secrets kept out of reprs and errors, and connection errors retried only where idempotent
(against a real closed port, no mock)."""

import pickle

import pytest

from metalflow.integrations.common import Backoff, Secret
from metalflow.integrations.common.values import parse_mac
from metalflow.integrations.maas import (
    ApiKey,
    MaasClient,
    MaasError,
    MaasUnreachable,
    MaasValidationError,
    format_power_address,
)
from metalflow.integrations.maas.wire import api_root, encode_form, parse_retry_after, resource_path

KEY = "ckCONSUMER123:tkTOKEN456789:tsSECRETabcdefghij"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5240",
        "http://127.0.0.1:5240/",
        "http://127.0.0.1:5240/MAAS",
        "http://127.0.0.1:5240/MAAS/",
        "http://127.0.0.1:5240/MAAS/api/2.0",
        "http://127.0.0.1:5240/MAAS/api/2.0/",
    ],
)
def test_api_root_always_ends_in_api_2_0_slash(url):
    assert api_root(url) == "http://127.0.0.1:5240/MAAS/api/2.0/"


def test_api_root_refuses_non_http():
    with pytest.raises(ValueError, match="url"):
        api_root("127.0.0.1:5240")


def test_resource_path_quotes_and_refuses_traversal():
    assert resource_path("machines", "abc123") == "machines/abc123/"
    assert resource_path("nodes", "x", "interfaces", 7) == "nodes/x/interfaces/7/"
    for bad in ("..", "a/b", ""):
        with pytest.raises(ValueError):
            resource_path("machines", bad)


def test_form_encoding_follows_maas_conventions():
    pairs = encode_form(
        {
            "mac_addresses": ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02"],
            "commission": False,
            "erase": True,
            "comment": None,
            "cpu": 4,
            "power_parameters_power_pass": Secret("pw"),
        }
    )
    assert pairs == [
        ("mac_addresses", "aa:bb:cc:dd:ee:01"),
        ("mac_addresses", "aa:bb:cc:dd:ee:02"),
        ("commission", "false"),
        ("erase", "true"),
        ("cpu", "4"),
        ("power_parameters_power_pass", "pw"),
    ]


def test_retry_after_forms():
    assert parse_retry_after(None) is None
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("garbage") == 0.0  # still "retry", without a minimum
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)


def test_api_key_parse_errors_never_echo_the_key():
    for bad in ("onlyone", "a:b", "a:b:c:d", "a::c", Secret("x:y")):
        with pytest.raises(ValueError) as ei:
            ApiKey.parse(bad)
        shown = bad.reveal() if isinstance(bad, Secret) else bad
        assert shown not in str(ei.value)
        assert "consumer_key:token_key:token_secret" in str(ei.value)


def test_client_repr_and_key_hold_no_secret():
    client = MaasClient("http://127.0.0.1:5240/MAAS/", KEY)
    text = repr(client) + repr(client.wire) + repr(client.wire._key) + str(vars(client.wire))
    for part in KEY.split(":"):
        assert part not in text


def test_scrub_masks_key_parts_and_oauth_values():
    wire = MaasClient("http://127.0.0.1:5240/", KEY).wire
    text = f'echo {KEY} oauth_signature="%26tsSECRETabcdefghij", oauth_token=tkTOKEN456789&x=1'
    out = wire.scrub(text)
    for part in KEY.split(":"):
        assert part not in out
    assert "oauth_signature=***" in out and "oauth_token=***" in out


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("AA-BB-CC-DD-EE-FF", "aa:bb:cc:dd:ee:ff"),
        ("aabb.ccdd.eeff", "aa:bb:cc:dd:ee:ff"),
        ("02:3e:00:11:22:33", "02:3e:00:11:22:33"),
    ],
)
def test_the_client_s_mac_forms(raw, expected):
    """The MAAS client takes MACs by values.parse_mac, the one normaliser."""
    assert parse_mac(raw) == expected


@pytest.mark.parametrize("raw", ["zz:bb:cc:dd:ee:ff", " aa:bb:cc:dd:ee:f0", "aa:bb:cc:dd:ee:f0\n"])
def test_the_client_refuses_what_is_not_a_mac(raw):
    with pytest.raises(ValueError, match="mac"):
        parse_mac(raw)


@pytest.mark.parametrize("port", ["\u0661\u0666\u0662\u0663\u0660", "\uff11\uff16\uff12\uff13\uff10", True, 0, 65536])
def test_power_port_is_ascii_digits_in_range(port):
    with pytest.raises(ValueError, match="power_port"):
        format_power_address("10.0.0.5", port)


def test_power_address_with_port():
    assert format_power_address("10.0.0.5") == "10.0.0.5"
    assert format_power_address("10.0.0.5", 623) == "10.0.0.5"
    assert format_power_address("10.0.0.5", 16230) == "10.0.0.5:16230"
    assert format_power_address("fd00::5", 16230) == "[fd00::5]:16230"
    assert format_power_address("10.0.0.5:16230") == "10.0.0.5:16230"
    with pytest.raises(ValueError, match="already has a port"):
        format_power_address("10.0.0.5:16230", 16231)


def test_maas_errors_pickle_with_their_fields():
    e = MaasValidationError(
        "bad", fields={"distro_series": ["x"]}, status=400, excerpt="{}", system_id="abc", op="deploy"
    )
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), e2.fields, e2.system_id, e2.op, e2.status, str(e2)) == (
        MaasValidationError,
        {"distro_series": ["x"]},
        "abc",
        "deploy",
        400,
        str(e),
    )


# Nothing listens on this address: connection refused, for real.
CLOSED = "http://127.162.250.99:5240/MAAS/"


def test_connection_error_retried_on_get_only():
    calls = []
    client = MaasClient(
        CLOSED, KEY, timeout=2, retries=Backoff(first=0.01, attempts=3, jitter=False), on_call=calls.append
    )
    with pytest.raises(MaasUnreachable) as ei:
        client.machine("abc123")
    assert [c.attempt for c in calls] == [1, 2, 3] and all(c.status is None for c in calls)
    err = ei.value
    assert err.transient and err.system_id == "abc123" and err.__cause__ is None
    assert "ConnectionError" in str(err)
    calls.clear()
    with pytest.raises(MaasUnreachable):
        client.deploy("abc123", "ubuntu/jammy")  # a POST that might have landed: never resent
    assert [c.attempt for c in calls] == [1]
    for part in KEY.split(":"):
        assert part not in str(err) and part not in repr(err) and part not in str(vars(err))


def test_wait_for_status_gives_up_on_time_when_maas_is_unreachable():
    client = MaasClient(CLOSED, KEY, timeout=1, retries=Backoff(first=0.01, attempts=2, jitter=False))
    with pytest.raises(MaasError) as ei:
        client.wait_for_status("abc123", "Deployed", deadline=0.5, interval=0.05)
    assert type(ei.value).__name__ == "MaasTimeout" and isinstance(ei.value, TimeoutError)
    assert "abc123" in str(ei.value) and "last status: unknown" in str(ei.value)
    assert "ConnectionError" in str(ei.value)


def test_from_settings_uses_the_seed_string():
    seed = (
        "MaasIP=172.31.0.75;MaasKey=fGWswZhpUQrrKUxprD;MaasSecret=CUaKSPXngrtRGRACtLLQKCYLqrQxPgTC;"
        "MaasConsumerKey=6sxtWH3XCfKgkspC8J"
    )
    client = MaasClient.from_settings(seed)
    assert client.url == "http://172.31.0.75:5240/MAAS/api/2.0/"
    assert client.wire._key.revealed() == (
        "6sxtWH3XCfKgkspC8J",
        "fGWswZhpUQrrKUxprD",
        "CUaKSPXngrtRGRACtLLQKCYLqrQxPgTC",
    )
    assert "CUaKSPXngrtRGRACtLLQKCYLqrQxPgTC" not in repr(client)
    client = MaasClient.from_settings(Secret(seed + ";MaasPort=5241"))
    assert client.url == "http://172.31.0.75:5241/MAAS/api/2.0/"
