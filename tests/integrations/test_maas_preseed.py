"""The curtin preseed: golden rendering, MAAS's Tempita left intact, validation of what goes in
(hash not password, real SSH keys) and what comes out (YAML, expected keys), masking, and
delivery (local atomic write; SFTP against an in-test paramiko SFTP server)."""

import os
import socket
import stat
import threading
from pathlib import Path

import paramiko
import pytest
import yaml

from metalflow.integrations.common import Secret
from metalflow.integrations.maas import (
    LocalPreseedStore,
    PreseedError,
    PreseedStore,
    PreseedStoreError,
    RenderedPreseed,
    SftpPreseedStore,
    preseed_filename,
    render_preseed,
)
from metalflow.integrations.maas.preseed import (
    OURS_MARK,
    check_password_hash,
    check_ssh_key,
    hostname_of,
    is_ours,
    mark_ours,
    substitute_tempita,
    tempita_placeholders,
    validate_preseed,
)

DATA = Path(__file__).with_name("data")
GOLDEN = DATA / "maas_preseed_golden.yaml"

# sha512crypt of a throwaway test password, and two freshly generated public keys.
HASH = "$6$mfgoldensalt$gTFB5ASXZKXJHZ7x2I.Vf8necUInQcfX4WHOeJ82nzbkXZ3mlPvpZM7AfL763l9/TEDV6B/nSNb7EKG8S6wb10"
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFt7AmGEnzdog0y+zCwJLtTQ8qU6JpXHzZlI/IEA/KQK ops@metalflow"
RSA = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDLX1P+26MzP8GaKYVYqTpLFa72Q7dWR5teNr+TrLeLna3OF2Y7ksILXH9x"
    "KPRXNtesmjXZpuZKyy819wO1ZHQcSp/6HETYw5rsO3mWk+0s4khbCwn5wCkAxlNWMenC7t/o0scL3l7cPkD/RxQzuDDK5rH"
    "wK+sR7SMfyew0D6nncQ=="
)
INPUTS = dict(
    hostname="vm-42",
    osystem="centos",
    release="centos70",
    architecture="amd64/generic",
    root_password_hash=HASH,
    ssh_keys=[ED25519, RSA],
)


def test_golden_rendering():
    r = render_preseed(**INPUTS)
    assert r.filename == "curtin_userdata_centos_amd64_generic_centos70_vm-42"
    # To update after a deliberate template change: write r.text to GOLDEN and review the diff.
    assert r.text == GOLDEN.read_text()


def test_tempita_placeholders_pass_through_untouched():
    text = render_preseed(**INPUTS).text
    for tag in (
        "{{for line in str(curtin_preseed).splitlines()}}",
        "{{line}}",
        "{{endfor}}",
        "'{{node_disable_pxe_url}}'",
        "'{{node_disable_pxe_data}}'",
    ):
        assert tag in text
    assert tempita_placeholders(text) == {
        "for line in str(curtin_preseed).splitlines()",
        "line",
        "endfor",
        "node_disable_pxe_url",
        "node_disable_pxe_data",
        "# written by metalflow; removed once its deployment no longer needs it",  # the mark, a comment
    }


def test_every_file_metalflow_writes_carries_its_mark_and_only_those_are_its_own(tmp_path):
    """The mark (a Tempita comment, dropped by MAAS when it renders) is what lets cleaning up
    tell metalflow's files from an operator's, whatever template rendered them."""
    r = render_preseed(**INPUTS)
    assert r.text.endswith(OURS_MARK + "\n") and is_ours(r.text) and r.text.count(OURS_MARK) == 1
    assert mark_ours(r.text) == r.text  # once
    assert "#cloud-config" in mark_ours("#cloud-config\na: 1\n").splitlines()[0]  # never before the first line
    assert not is_ours("#cloud-config\n# an operator's preseed\n")
    assert hostname_of("curtin_userdata_ubuntu_amd64_generic_jammy_vm-42") == "vm-42"
    assert hostname_of("curtin_userdata_custom_amd64_generic_my_image_vm-42") == "vm-42"
    assert hostname_of("curtin_userdata_ubuntu_amd64") is None and hostname_of("other_file") is None
    store = LocalPreseedStore(tmp_path)
    store.write(r.filename, r.text)
    store.write("curtin_userdata_ubuntu", "an operator's")
    (tmp_path / "README").write_text("not a preseed")
    assert store.names() == ["curtin_userdata_centos_amd64_generic_centos70_vm-42", "curtin_userdata_ubuntu"]


def test_rendered_yaml_has_the_seed_structure():
    text = render_preseed(**INPUTS).text
    data = yaml.safe_load(substitute_tempita(text))
    assert set(data) == {"debconf_selections", "metalflow_node_setup", "late_commands", "power_state"}
    assert data["power_state"] == {"mode": "reboot"}
    assert data["late_commands"]["maas"] == [
        "wget",
        "--no-proxy",
        "tempita-value",
        "--post-data",
        "tempita-value",
        "-O",
        "/dev/null",
    ]
    script = data["late_commands"]["metalflow_node_setup"]
    assert script[:5] == ["curtin", "in-target", "--", "sh", "-c"]
    body = script[5]  # the YAML alias resolved to the script itself
    assert f"usermod -p '{HASH}' root" in body
    assert ED25519 in body.splitlines() and RSA in body.splitlines()
    assert "yum remove -y cloud-init" in body  # the seed's cloud-init removal
    assert "passwd root --stdin" not in body and "chpasswd" not in body  # no plain text route


def test_minimal_rendering_omits_optional_parts():
    r = render_preseed(hostname="h1", osystem="ubuntu", release="jammy", remove_cloud_init=False)
    assert (
        "usermod" not in r.text
        and "authorized_keys" not in r.text
        and "cloud-init" not in r.text.split("late_commands")[1]
    )
    assert "metalflow-first-boot" not in r.text
    validate_preseed(r.text)


@pytest.mark.parametrize(
    "bad",
    [
        "hunter2-plain",
        "correct horse",
        "$6$short$abc",  # the shape, not a real hash
        "$1$saltsalt$abcdefghijklmnopqrstuv",  # md5crypt: too weak, refused
        HASH + "x",
    ],
)
def test_plain_password_or_bad_hash_is_refused_without_echo(bad):
    with pytest.raises(PreseedError) as ei:
        render_preseed(**{**INPUTS, "root_password_hash": bad})
    assert bad not in str(ei.value) and "root_password_hash" in str(ei.value)


@pytest.mark.parametrize(
    "good",
    [
        HASH,
        "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
        "$5$rounds=5000$saltsalt$" + "a" * 43,
        "$2b$12$" + "a" * 53,
    ],
)
def test_crypt_hashes_are_accepted(good):
    assert check_password_hash(Secret(good)) == good


@pytest.mark.parametrize(
    "line,why",
    [
        ("ssh-ed25519", "type base64"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP comment", "not accepted"),
        ('from="10.0.0.1" ' + ED25519, "not accepted"),
        ("ssh-ed25519 not-base64!! x", "does not decode"),
        ("ssh-rsa " + ED25519.split()[1], "holds a 'ssh-ed25519' key"),
        (ED25519.rsplit(" ", 1)[0] + " {{evil}}", "comment"),
        (ED25519 + "\nssh-rsa AAAA", "one key per line"),
    ],
)
def test_bad_ssh_keys_are_refused(line, why):
    with pytest.raises(PreseedError, match=why):
        check_ssh_key(line)


@pytest.mark.parametrize(
    "line",
    [
        "  " + ED25519,
        ED25519 + " ",
        ED25519 + "\n",
        ED25519.replace(" ", "   "),
        "   ",
    ],
)
def test_ssh_key_is_taken_as_written(line):
    """values.parse_ssh_key: nothing trimmed or re-spaced; a padded key is refused, saying so."""
    with pytest.raises(PreseedError, match="ssh_keys"):
        check_ssh_key(line)
    assert check_ssh_key(ED25519) == ED25519


def test_too_many_ssh_keys_are_refused():
    from metalflow.integrations.common.values import MAX_SSH_KEYS

    with pytest.raises(PreseedError, match=f"at most {MAX_SSH_KEYS}"):
        render_preseed(**{**INPUTS, "ssh_keys": [ED25519] * (MAX_SSH_KEYS + 1)})


def test_a_hash_with_a_trailing_newline_is_refused_without_echo():
    good = "$6$saltsalt$" + "a" * 86
    for bad in (good + "\n", " " + good, Secret(good + "\n")):
        with pytest.raises(PreseedError) as ei:
            check_password_hash(bad)
        assert "saltsalt" not in str(ei.value) and "root_password_hash" in str(ei.value)


def test_custom_template_that_breaks_yaml_is_refused(tmp_path):
    tmpl = tmp_path / "broken.j2"
    tmpl.write_text(
        "debconf_selections: [[ hostname ]]\n"
        "late_commands:\n  maas: [wget, '{{node_disable_pxe_url}}', '{{node_disable_pxe_data}}'\n"
        "  bad: : :\n"
    )
    with pytest.raises(PreseedError, match="not valid YAML: line"):
        render_preseed(tmpl, hostname="h1", osystem="ubuntu", release="jammy")


def test_template_without_expected_keys_or_callback_is_refused():
    ok_tail = "late_commands:\n  maas: ['{{node_disable_pxe_url}}', '{{node_disable_pxe_data}}']\n"
    with pytest.raises(PreseedError, match="lacks the top-level key"):
        render_preseed(ok_tail, hostname="h1", osystem="ubuntu", release="jammy")
    with pytest.raises(PreseedError, match="node_disable_pxe_url"):
        render_preseed("debconf_selections: {}\nlate_commands: {}\n", hostname="h1", osystem="ubuntu", release="jammy")
    with pytest.raises(PreseedError, match="not a mapping"):
        validate_preseed("- '{{node_disable_pxe_url}} {{node_disable_pxe_data}}'\n")


def test_jinja_with_default_delimiters_would_eat_tempita_so_we_check():
    # A template whose Jinja expression produces the Tempita tag text is fine; one that drops a
    # tag from the source (here: inside a false [% if %]) is reported.
    src = (
        "debconf_selections: {}\n[% if false %]x: '{{gone}}'\n[% endif %]"
        "late_commands: {m: ['{{node_disable_pxe_url}}', '{{node_disable_pxe_data}}']}\n"
    )
    with pytest.raises(PreseedError, match="lost MAAS's Tempita placeholders.*gone"):
        render_preseed(src, hostname="h1", osystem="ubuntu", release="jammy")


def test_template_errors_name_the_problem_not_secrets():
    with pytest.raises(PreseedError, match="did not render.*undefined"):
        render_preseed("x: [[ no_such_var ]]\n", **INPUTS)
    with pytest.raises(PreseedError, match="line 1"):
        render_preseed("x: [% if %]\n", **INPUTS)


def test_extra_variables_reach_custom_templates():
    src = (
        "debconf_selections: {}\nlate_commands:\n  maas: ['{{node_disable_pxe_url}}', '{{node_disable_pxe_data}}']\n"
        "  pkg: [yum, install, -y, '[[ extra.package ]]']\n"
    )
    r = render_preseed(src, hostname="h1", osystem="centos", release="centos70", extra={"package": "lldpad"})
    assert "'lldpad'" in r.text


def test_masked_copy_and_repr_hide_hash_and_keys():
    r = render_preseed(**INPUTS)
    m = r.masked()
    for secret in (HASH, ED25519.split()[1], RSA.split()[1]):
        assert secret in r.text
        assert secret not in m.text and secret not in repr(r) and secret not in repr(m)
    assert "usermod -p '***' root" in m.text and "ssh-ed25519 *** ops@metalflow" in m.text
    assert m.filename == r.filename and isinstance(m, RenderedPreseed)
    assert "{{node_disable_pxe_url}}" in m.text  # the Tempita stays readable


@pytest.mark.parametrize(
    "args,expected",
    [
        (("centos", "amd64", "generic", "centos70", "vm-42"), "curtin_userdata_centos_amd64_generic_centos70_vm-42"),
        (
            ("custom", "amd64", "generic", "centos7", "host-001"),
            "curtin_userdata_custom_amd64_generic_centos7_host-001",
        ),
        (("ubuntu", "arm64", "ga-22.04", "jammy", "n1"), "curtin_userdata_ubuntu_arm64_ga-22.04_jammy_n1"),
    ],
)
def test_preseed_filename(args, expected):
    assert preseed_filename(*args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ("centos", "amd64/generic", "generic", "centos70", "vm"),
        ("../etc", "amd64", "generic", "x", "vm"),
        ("centos", "amd64", "generic", "centos70", "bad_host"),
        ("centos", "amd64", "generic", "", "vm"),
        ("centos", "amd64", "generic", "centos70", "vm-42\n"),  # a file name ending in a newline
        ("centos", "amd64", "generic", "centos70\n", "vm-42"),
        ("centos", "amd64", "generic", "centos70", "VM-42"),  # MAAS answers lower case
        ("centos", "amd64", "generic", "centos70", "v" * 64),
        ("centos", "amd64", "generic", "centos\u0667\u0660", "vm-42"),
        ("cent\u00f6s", "amd64", "generic", "centos70", "vm-42"),
    ],
)
def test_preseed_filename_refuses_path_like_parts(args):
    with pytest.raises(PreseedError):
        preseed_filename(*args)


# -- delivery -------------------------------------------------------------------------------


def test_local_store_atomic_write_mode_read_remove(tmp_path):
    store = LocalPreseedStore(tmp_path)
    assert isinstance(store, PreseedStore)
    r = render_preseed(**INPUTS)
    where = store.write(r.filename, r.text)
    assert where == str(tmp_path / r.filename)
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o644
    assert store.read(r.filename) == r.text and store.exists(r.filename)
    store.write(r.filename, "replaced\n")
    assert store.read(r.filename) == "replaced\n"
    assert sorted(os.listdir(tmp_path)) == [r.filename]  # no temporary file left behind
    store.remove(r.filename)
    store.remove(r.filename)  # idempotent
    assert not store.exists(r.filename)


def test_local_store_refuses_path_names_and_missing_directory(tmp_path):
    store = LocalPreseedStore(tmp_path)
    for name in ("../x", "a/b", ".hidden", "", "curtin_userdata_x\n", "curtin_userdata_\u0661", "x" * 256):
        with pytest.raises(PreseedError):
            store.write(name, "x")
    with pytest.raises(PreseedStoreError, match="does not exist"):
        LocalPreseedStore(tmp_path / "nope").write("curtin_userdata", "x")


def test_sftp_store_path_handling_and_no_secret_in_repr():
    store = SftpPreseedStore("maas.example", 22, "maas", Secret("s3cret-pw"), directory="/etc/maas/preseeds/")
    assert store.remote_path("curtin_userdata_x") == "/etc/maas/preseeds/curtin_userdata_x"
    assert "s3cret-pw" not in repr(store)
    with pytest.raises(PreseedError):
        store.remote_path("../../etc/passwd")
    with pytest.raises(PreseedError, match="absolute"):
        SftpPreseedStore("h", 22, "u", "p", directory="preseeds")
    with pytest.raises(PreseedError, match="password or key"):
        SftpPreseedStore("h", 22, "u", directory="/x")


# A small SFTP server rooted in a temporary directory: paramiko ships the protocol server
# (SFTPServer) but no filesystem behind it, so this test supplies one. It stands in for the
# MAAS region controller's sshd, which no simulator in the lab provides.


class _Handle(paramiko.SFTPHandle):
    def stat(self):
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr):
        return paramiko.SFTP_OK


class _FsSftp(paramiko.SFTPServerInterface):
    root = ""

    def _real(self, path):
        return os.path.join(self.root, self.canonicalize(path).lstrip("/"))

    def open(self, path, flags, attr):
        real = self._real(path)
        try:
            fd = os.open(real, flags, 0o600)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        mode = "rb" if flags & (os.O_WRONLY | os.O_RDWR) == 0 else ("r+b" if flags & os.O_RDWR else "wb")
        f = os.fdopen(fd, mode)
        h = _Handle(flags)
        h.readfile = h.writefile = f
        return h

    def stat(self, path):
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._real(path)))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    lstat = stat

    def list_folder(self, path):
        try:
            real = self._real(path)
            return [paramiko.SFTPAttributes.from_stat(os.stat(os.path.join(real, n)), n) for n in os.listdir(real)]
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def remove(self, path):
        try:
            os.remove(self._real(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return paramiko.SFTP_OK

    def posix_rename(self, old, new):
        os.replace(self._real(old), self._real(new))
        return paramiko.SFTP_OK

    def rename(self, old, new):
        if os.path.exists(self._real(new)):
            return paramiko.SFTP_FAILURE
        return self.posix_rename(old, new)

    def chattr(self, path, attr):
        if attr.st_mode is not None:
            os.chmod(self._real(path), stat.S_IMODE(attr.st_mode))
        return paramiko.SFTP_OK


class _Auth(paramiko.ServerInterface):
    def check_auth_password(self, username, password):
        ok = (username, password) == ("maas", "pw-for-test")
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "password"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


@pytest.fixture
def sftp_server(tmp_path):
    root = tmp_path / "region"
    (root / "etc/maas/preseeds").mkdir(parents=True)
    host_key = paramiko.RSAKey.generate(1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.162.9.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()
    transports = []

    fs = type("Fs", (_FsSftp,), {"root": str(root)})

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, fs)
            t.start_server(server=_Auth())
            transports.append(t)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    known = tmp_path / "known_hosts"
    port = sock.getsockname()[1]
    known.write_text(f"[127.162.9.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    yield root, port, known
    stop.set()
    thread.join(5)
    sock.close()
    for t in transports:
        t.close()


def test_sftp_store_round_trip(sftp_server):
    root, port, known = sftp_server
    store = SftpPreseedStore(
        "127.162.9.1",
        port,
        "maas",
        Secret("pw-for-test"),
        directory="/etc/maas/preseeds",
        known_hosts=str(known),
        timeout=10,
    )
    r = render_preseed(**INPUTS)
    where = store.write(r.filename, r.text)
    assert where == f"sftp://127.162.9.1:{port}/etc/maas/preseeds/{r.filename}"
    on_disk = root / "etc/maas/preseeds" / r.filename
    assert on_disk.read_text() == r.text and stat.S_IMODE(on_disk.stat().st_mode) == 0o644
    store.write(r.filename, "second\n")  # replaces atomically over the old file
    assert store.read(r.filename) == "second\n" and store.exists(r.filename)
    assert os.listdir(on_disk.parent) == [r.filename]
    (on_disk.parent / "README").write_text("not a preseed")
    assert store.names() == [r.filename]
    store.remove(r.filename)
    store.remove(r.filename)
    assert not store.exists(r.filename)


def test_sftp_store_errors_name_the_host_not_the_password(sftp_server):
    _, port, known = sftp_server
    bad = SftpPreseedStore(
        "127.162.9.1",
        port,
        "maas",
        Secret("wrong-pw-123"),
        directory="/etc/maas/preseeds",
        known_hosts=str(known),
        timeout=10,
    )
    with pytest.raises(PreseedStoreError) as ei:
        bad.write("curtin_userdata", "x")
    assert "127.162.9.1" in str(ei.value) and "Authentication" in str(ei.value)
    assert "wrong-pw-123" not in str(ei.value) and ei.value.__cause__ is None
    unknown_host = SftpPreseedStore(
        "127.162.9.1", port, "maas", "pw-for-test", directory="/x", known_hosts=os.devnull, timeout=10
    )
    with pytest.raises(PreseedStoreError, match="SSHException"):
        unknown_host.exists("curtin_userdata")  # RejectPolicy: an unknown host key is refused
