"""The process's one scrubber: what it learns, what it masks, and the edges that pass it (log
handlers, the journal, MAAS error bodies, credential references, the extension's ``check``).

Each test starts with a scrubber that knows nothing (tests/conftest.py)."""

from __future__ import annotations

import io
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from metalflow.integrations.common import Secret, scrub, scrubber
from metalflow.integrations.common.secrets import MASK, ScrubFilter
from metalflow.integrations.common.values import BadValue, parse_crypt_hash, parse_secret_ref
from metalflow.integrations.inventory.journal import clean_detail
from metalflow.integrations.runtime import Runtime

PW = "Bmc-Canary-7f3a9c"


def test_a_secret_made_is_masked_in_every_form_it_travels_in():
    Secret(PW)
    text = f"a {PW} b {PW.encode()!r} c {PW.encode().hex()} d {json.dumps({'x': PW})} e Bmc%2DCanary"
    out = scrub(text)
    assert PW not in out and PW.encode().hex() not in out
    assert out.startswith(f"a {MASK} b {MASK} c {MASK}")


def test_a_longer_secret_containing_a_shorter_one_is_masked_whole():
    Secret("abcdef123")
    Secret("abcdef123-and-more")
    assert scrub("x abcdef123-and-more y") == f"x {MASK} y"


def test_short_values_and_our_own_words_are_not_learned():
    for v in ("abc", "extra", "password", "admin"):
        scrubber().learn(v)
    assert scrub("extra password admin abc") == "extra password admin abc"


@pytest.mark.parametrize(
    "text, leaked",
    [
        (
            'Authorization: OAuth oauth_signature="%26ts-secret", oauth_token=tk-token-1&x=1',
            ("ts-secret", "tk-token-1"),
        ),
        ("ipmitool -I lanplus -U admin -P hunter2hunter -H 10.0.0.1", ("hunter2hunter",)),
        ("could not connect to postgresql://metalflow:s3cr3t-db@db:5432/inv", ("s3cr3t-db",)),
        ("MaasSecret=tokensecret99;MaasKey=tokenkey77", ("tokensecret99", "tokenkey77")),
        ('{"api_key": "k-12345678"}', ("k-12345678",)),
        ("root hash $6$saltsalt$" + "Q" * 86, ("saltsalt", "Q" * 86)),
    ],
)
def test_secret_shapes_are_masked_whoever_loaded_them(text, leaked):
    out = scrub(text)
    assert not any(s in out for s in leaked), out


def test_url_passwords_and_auth_strings_are_learned():
    s = scrubber()
    s.learn_url("postgresql://u:p%40ss-word1@h/db")
    s.learn_auth_string("admin:Auth-Canary-55")
    out = scrub("p@ss-word1 p%40ss-word1 Auth-Canary-55 YWRtaW46QXV0aC1DYW5hcnktNTU=")
    assert out == " ".join([MASK] * 4)


def test_scrubber_is_a_part_of_the_runtime_and_goes_with_it():
    rt = Runtime.install(Runtime("test"))
    try:
        Secret("Runtime-Canary-1")
        assert scrubber().knows("Runtime-Canary-1")
    finally:
        Runtime.uninstall(rt)
    assert not scrubber().knows("Runtime-Canary-1")  # a new runtime, a new scrubber


def test_log_filter_scrubs_message_arguments_and_traceback():
    Secret(PW)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubFilter())
    log = logging.getLogger("metalflow.test-scrubber")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("login with %s failed", PW)
        try:
            raise RuntimeError(f"BMC said {PW}")
        except RuntimeError:
            log.exception("boom %s", "x")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert PW not in text
    assert f"login with {MASK} failed" in text and f"RuntimeError: BMC said {MASK}" in text


def test_a_value_refused_as_a_reference_is_never_quoted_and_learned():
    pasted = "MyRootPassw0rd!"
    with pytest.raises(BadValue) as ei:
        parse_secret_ref(pasted, "root_password_ref")
    assert pasted not in str(ei.value) and "root_password_ref" in str(ei.value)
    assert scrub(f"journal: {pasted}") == f"journal: {MASK}"
    with pytest.raises(BadValue) as ei:
        parse_crypt_hash("Plain-Passw0rd-9", "root_password_hash")
    assert "Plain-Passw0rd-9" not in str(ei.value) and scrubber().knows("Plain-Passw0rd-9")


def test_credentials_refuse_a_non_reference_without_quoting_it():
    from metalflow.tasks.credentials import CredentialError, resolve

    pasted = "hunter2-pasted-here"
    with pytest.raises(CredentialError) as ei:
        resolve(pasted)
    assert pasted not in str(ei.value) and "credential_ref" in str(ei.value)
    with pytest.raises(CredentialError) as ei:
        resolve("env:METALFLOW_TEST_NOT_SET_ANYWHERE")
    assert "METALFLOW_TEST_NOT_SET_ANYWHERE is not set" in str(ei.value)


def test_journal_details_are_scrubbed_of_every_loaded_secret():
    Secret(PW)
    detail = clean_detail({"error": f"switch said {PW}", "password": "x"})
    assert PW not in detail and "password=***" in detail
    assert clean_detail(f"ipmitool -P {PW}") == f"ipmitool -P {MASK}"


class _Echo400(BaseHTTPRequestHandler):
    """A MAAS that refuses with a 400 quoting what it was sent (MAAS does, for power parameters)."""

    body = b""

    def do_GET(self) -> None:
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_maas_400_bodies_are_scrubbed_of_every_loaded_secret_not_only_the_key():
    from metalflow.integrations.maas import MaasClient
    from metalflow.integrations.maas.errors import MaasValidationError

    Secret(PW)  # a BMC password this process loaded
    _Echo400.body = json.dumps({"power_parameters": [f"power_pass {PW} is refused"]}).encode()
    server = HTTPServer(("127.0.0.1", 0), _Echo400)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = "ck-aaaaaaaaaaaa:tk-bbbbbbbbbbbb:ts-cccccccccccccccc"
        client = MaasClient(f"http://127.0.0.1:{server.server_address[1]}/MAAS/", key)
        with pytest.raises(MaasValidationError) as ei:
            client.machine("abc123")
        err = ei.value
        shown = str(err) + repr(err) + str(vars(err))
        assert PW not in shown and "power_parameters" in shown
        assert all(part not in repr(client.wire._key) for part in key.split(":"))
    finally:
        server.shutdown()
        server.server_close()


class _NoDeployments(BaseHTTPRequestHandler):
    """A Prefect API that knows no deployment (answers at once: no retrying into a deadline)."""

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "Deployment not found"}')

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_check_masks_every_url_password(tmp_path, capsys):
    from metalflow.integrations.cloudstack.extension import main

    server = HTTPServer(("127.0.0.1", 0), _NoDeployments)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "cloudstack.json"
    config.write_text(
        json.dumps(
            {
                "prefect_api_url": f"http://ops:Prefect-Url-Pw1@127.0.0.1:{server.server_address[1]}/api",
                "inventory_url": "postgresql://metalflow:Inventory-Db-Pw2@127.0.0.1:9/inventory",
                "prefect_auth_string": "ops:Auth-String-Pw3",
                "log_file": str(tmp_path / "ext.log"),
                "request_timeout": 1,
            }
        )
    )
    try:
        assert main(["check", "--config", str(config)]) == 1
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "ok   configuration" in text and "FAIL inventory" in text, text
    for pw in ("Prefect-Url-Pw1", "Inventory-Db-Pw2", "Auth-String-Pw3"):
        assert pw not in text, text


def test_a_thousand_loaded_passwords_cost_a_log_line_little():
    """A rack's Secret block (every BMC's password) is learned at load; each log line of the
    process is then scrubbed against all of them (one trie-shaped regex, built once)."""
    import secrets as rnd
    import time

    s = scrubber()
    values = [rnd.token_hex(8) for _ in range(2000)]
    s.learn_all(values)
    assert scrub(f"a {values[7]} b {values[-1]} c {values[3][:10]}") == f"a {MASK} b {MASK} c {values[3][:10]}"
    line = "host-0123: power poll answered on in 0.02 s (BMC 127.100.1.23:623), reading stored " * 3
    started = time.perf_counter()
    for _ in range(1000):
        s.scrub(line)
    assert time.perf_counter() - started < 5.0  # measured: about 0.07 s
