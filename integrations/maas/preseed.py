"""The curtin preseed: render a per-node Tempita template with Jinja, check it, deliver it.

How a custom preseed reaches MAAS (reference/maas-api.md §7): MAAS renders curtin config from
Tempita templates in its preseeds directory (``/etc/maas/preseeds/`` for deb installs,
``/var/snap/maas/current/preseeds/`` for the snap) and picks the most specific file name
first, ``curtin_userdata_{osystem}_{arch}_{subarch}_{release}_{hostname}``. A per-node file
written there before ``deploy`` customises that one deployment (the hostname is the one MAAS
has at deploy time, i.e. after the flow's rename).

Two template languages meet. Our templates are Jinja with the delimiters ``[[ ]]`` (values),
``[% %]`` (statements) and ``[# #]`` (comments), so that MAAS's Tempita ``{{...}}`` placeholders
(``{{node_disable_pxe_url}}``, ``{{for line in ...}}``) pass through untouched: no raw blocks
to forget. After rendering, the result is checked: every Tempita placeholder of the template
survived, MAAS's netboot-off callback is there, and with the Tempita parts replaced by dummies
the text is YAML with the expected top-level keys.

Secrets: the root password arrives as a crypt hash (``$6$``, ``$y$``...), never plain text;
a value that does not look like one is refused without being echoed. A hash is still
sensitive (it can be attacked offline), so ``RenderedPreseed`` hides its text from ``repr``
and ``masked()`` gives the copy for run artifacts, hashes and keys replaced by ``***``.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets as _secrets
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import jinja2
import yaml

from metalflow.integrations.common import MetalflowError, Secret
from metalflow.integrations.common.values import (
    MAX_SSH_KEYS,
    SSH_KEY_TYPES,
    BadValue,
    parse_crypt_hash,
    parse_hostname,
    parse_ssh_key,
    show,
)

TEMPLATE_DIR = Path(__file__).with_name("templates")
DEFAULT_TEMPLATE = "curtin_userdata.j2"
PRESEED_PREFIX = "curtin_userdata"
REQUIRED_KEYS = ("debconf_selections", "late_commands")
_T = TypeVar("_T")
REQUIRED_PLACEHOLDERS = ("node_disable_pxe_url", "node_disable_pxe_data")


class PreseedError(MetalflowError, ValueError):
    """A template that does not render, a result that is not valid, or bad input. Never
    carries a password hash or key material."""


class PreseedStoreError(MetalflowError):
    """Writing, reading or removing a preseed file failed (target: host and path)."""

    transient = True


# -- input checks -------------------------------------------------------------------------

# Anything crypt-like, for masking: $id$...$... up to whitespace or a quote.
_CRYPT_LIKE = re.compile(r"\$(?:[0-9a-z]{1,3})\$[^\s'\"]+")
# Parts of a preseed file name: ASCII, matched whole (a name ending in a newline is no name).
_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", re.ASCII)
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,254}", re.ASCII)
_TEMPITA = re.compile(r"\{\{(.*?)\}\}", re.S)
_JINJA_COMMENT = re.compile(r"\[#.*?#\]", re.S)
_TEMPITA_DIRECTIVE = re.compile(r"^\s*(?:(?:for|endfor|if|elif|else|endif|default|inherit|def|enddef)\b|py:|#)")


def _preseed_error(exc: BadValue) -> PreseedError:
    # BadValue's text names the field and the fix and never holds a hash or a password.
    return PreseedError(str(exc))


def check_password_hash(value: str | Secret) -> str:
    """The crypt hash, if ``value`` is one (``values.parse_crypt_hash``: sha512crypt ``$6$``,
    sha256crypt ``$5$``, yescrypt ``$y$``, bcrypt ``$2b$``; exactly as given, nothing trimmed).
    Otherwise ``PreseedError`` - without the value, which may be a plain-text password given by
    mistake."""
    text = value.reveal() if isinstance(value, Secret) else value
    try:
        return parse_crypt_hash(text, "root_password_hash")
    except BadValue as exc:
        raise _preseed_error(exc) from None


def check_ssh_key(line: str) -> str:
    """One ``authorized_keys`` line, by ``values.parse_ssh_key`` (a known type, a body of that
    type, a plain comment, no options, nothing trimmed); ``PreseedError`` otherwise."""
    try:
        return parse_ssh_key(line, "ssh_keys")
    except BadValue as exc:
        raise _preseed_error(exc) from None


def _check_component(field_name: str, value: str) -> str:
    if not isinstance(value, str) or not _COMPONENT.fullmatch(value):
        raise PreseedError(
            f"{field_name}: {show(value)} cannot be part of a preseed file name "
            "(ASCII letters, digits, '.', '+', '-' and '_' only)"
        )
    return value


def preseed_filename(osystem: str, arch: str, subarch: str, release: str, hostname: str) -> str:
    """MAAS's most specific curtin preseed name for one node:
    ``curtin_userdata_{osystem}_{arch}_{subarch}_{release}_{hostname}``, e.g.
    ``curtin_userdata_centos_amd64_generic_centos70_vm-42``. For a custom image osystem is
    ``custom`` and release the image name."""
    try:
        parse_hostname(hostname)
    except BadValue as exc:
        raise _preseed_error(exc) from None
    parts = [
        _check_component("osystem", osystem),
        _check_component("arch", arch),
        _check_component("subarch", subarch),
        _check_component("release", release),
        hostname,
    ]
    return "_".join([PRESEED_PREFIX, *parts])


# -- rendering ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedPreseed:
    """A rendered preseed and the file name MAAS will look for. ``repr`` hides the text;
    ``masked()`` is the copy for logs and artifacts."""

    text: str = field(repr=False)
    filename: str
    sensitive: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __repr__(self) -> str:
        return f"RenderedPreseed(filename={self.filename!r}, chars={len(self.text)})"

    def masked(self) -> RenderedPreseed:
        return RenderedPreseed(mask_preseed(self.text, self.sensitive), self.filename)


def mask_preseed(text: str, sensitive: Iterable[str] = ()) -> str:
    """``text`` with the given values, anything shaped like a crypt hash and the base64 body
    of every SSH key replaced by ``***``."""
    for value in sorted(set(sensitive), key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    text = _CRYPT_LIKE.sub("***", text)
    types = "|".join(re.escape(t) for t in SSH_KEY_TYPES)
    return re.sub(rf"\b({types}) [A-Za-z0-9+/=]{{16,}}", r"\1 ***", text)


def _environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    return jinja2.Environment(
        loader=loader,
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _load_template(template: str | os.PathLike[str] | None) -> tuple[str, jinja2.Template]:
    """``None``: the packaged default. A path (``pathlib.Path``/``os.PathLike``): that file. A
    ``str``: the template source itself."""
    if template is None:
        env = _environment(jinja2.FileSystemLoader(str(TEMPLATE_DIR)))
        source = (TEMPLATE_DIR / DEFAULT_TEMPLATE).read_text()
        name = DEFAULT_TEMPLATE
    elif isinstance(template, os.PathLike):
        path = Path(template)
        env = _environment(jinja2.FileSystemLoader(str(path.parent)))
        source = path.read_text()
        name = path.name
    else:
        env = _environment(jinja2.BaseLoader())
        source = template
        name = "<string>"
    try:
        return source, env.from_string(source) if name == "<string>" else env.get_template(name)
    except jinja2.TemplateSyntaxError as exc:
        raise PreseedError(f"template {name}: line {exc.lineno}: {exc.message}") from None


def tempita_placeholders(text: str) -> set[str]:
    """Every ``{{...}}`` Tempita tag in ``text``, whitespace-normalised."""
    return {" ".join(m.group(1).split()) for m in _TEMPITA.finditer(text)}


def substitute_tempita(text: str) -> str:
    """``text`` as MAAS might render it, structurally: directives (``{{for}}``, ``{{if}}``,
    ``{{py:}}``...) removed, expressions replaced by a dummy scalar. Enough to check that the
    surrounding YAML is well formed."""

    def repl(m: re.Match[str]) -> str:
        return "" if _TEMPITA_DIRECTIVE.match(m.group(1)) else "tempita-value"

    return _TEMPITA.sub(repl, text)


def validate_preseed(
    text: str,
    *,
    source: str | None = None,
    required_keys: Iterable[str] = REQUIRED_KEYS,
    required_placeholders: Iterable[str] = REQUIRED_PLACEHOLDERS,
    sensitive: Iterable[str] = (),
) -> dict[str, Any]:
    """Check a rendered preseed; return its YAML (Tempita replaced by dummies) as a dict."""
    found = tempita_placeholders(text)
    if source is not None:
        lost = tempita_placeholders(_JINJA_COMMENT.sub("", source)) - found
        if lost:
            raise PreseedError(f"rendering lost MAAS's Tempita placeholders: {sorted(lost)[:5]}")
    names = " ".join(found)
    missing = [p for p in required_placeholders if p not in names]
    if missing:
        raise PreseedError(
            f"the preseed lacks MAAS's {', '.join('{{' + p + '}}' for p in missing)} "
            "(late_commands must call MAAS's netboot-off URL)"
        )
    try:
        data = yaml.safe_load(substitute_tempita(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PreseedError(
            f"the rendered preseed is not valid YAML: {where}{mask_preseed(str(problem), sensitive)}"
        ) from None
    if not isinstance(data, dict):
        raise PreseedError(f"the rendered preseed is YAML but not a mapping (got {type(data).__name__})")
    absent = [k for k in required_keys if k not in data]
    if absent:
        raise PreseedError(f"the rendered preseed lacks the top-level key(s) {', '.join(absent)}")
    return data


def render_preseed(
    template: str | os.PathLike[str] | None = None,
    *,
    hostname: str,
    osystem: str,
    release: str,
    architecture: str = "amd64/generic",
    root_password_hash: str | Secret | None = None,
    ssh_keys: Iterable[str] = (),
    remove_cloud_init: bool = True,
    extra: Mapping[str, Any] | None = None,
    required_keys: Iterable[str] = REQUIRED_KEYS,
) -> RenderedPreseed:
    """Render ``template`` (default: the packaged ``curtin_userdata.j2``) for one node and
    check the result. Template variables: ``hostname``, ``osystem``, ``release``, ``arch``,
    ``subarch``, ``root_password_hash`` (or None), ``ssh_keys`` (checked lines),
    ``remove_cloud_init`` and ``extra`` (anything else a custom template wants).

    ``osystem``/``release`` are what MAAS deploys (``centos``/``centos70``; a custom image is
    ``custom``/its name) and, with the architecture, pick the file name MAAS looks for."""
    arch, _, subarch = architecture.partition("/")
    filename = preseed_filename(osystem, arch, subarch or "generic", release, hostname)
    pw_hash = check_password_hash(root_password_hash) if root_password_hash else None
    if isinstance(ssh_keys, str):
        ssh_keys = [ssh_keys]
    keys = [check_ssh_key(k) for k in ssh_keys if k != ""]  # "" is no key; "  " is a bad one
    if len(keys) > MAX_SSH_KEYS:
        raise PreseedError(f"ssh_keys: {len(keys)} keys; at most {MAX_SSH_KEYS} fit one preseed")
    sensitive = tuple([pw_hash] if pw_hash else []) + tuple(k.split()[1] for k in keys)
    source, tmpl = _load_template(template)
    try:
        text = tmpl.render(
            hostname=hostname,
            osystem=osystem,
            release=release,
            arch=arch,
            subarch=subarch or "generic",
            root_password_hash=pw_hash,
            ssh_keys=keys,
            remove_cloud_init=remove_cloud_init,
            extra=dict(extra or {}),
        )
    except jinja2.TemplateError as exc:
        msg = mask_preseed(str(getattr(exc, "message", None) or exc), sensitive)
        raise PreseedError(f"the preseed template did not render: {msg}") from None
    validate_preseed(text, source=source, required_keys=required_keys, sensitive=sensitive)
    return RenderedPreseed(mark_ours(text), filename, sensitive)


#: The last line of every preseed file metalflow writes, whatever the template: a Tempita
#: comment (MAAS drops the whole line when it renders the file). It tells metalflow's files
#: from an operator's, so cleaning up never touches a file metalflow did not write.
OURS_MARK = "{{# written by metalflow; removed once its deployment no longer needs it }}"


def mark_ours(text: str) -> str:
    return text if is_ours(text) else text.rstrip("\n") + "\n" + OURS_MARK + "\n"


def is_ours(text: str) -> bool:
    return OURS_MARK in text


def hostname_of(name: str) -> str | None:
    """The node a per-node preseed file is for (its last ``_`` part), None for any other
    file: ``curtin_userdata_ubuntu_amd64_generic_jammy_vm-42`` -> ``vm-42`` (a host name has no
    ``_``; the other parts may)."""
    parts = name.split("_")
    return parts[-1] if name.startswith(PRESEED_PREFIX + "_") and len(parts) >= 7 else None


# -- delivery -----------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise PreseedError(
            f"preseed file name {show(name)} is not a plain file name (ASCII letters, digits, '.', '+', '-', '_')"
        )
    return name


@runtime_checkable
class PreseedStore(Protocol):
    """Where MAAS reads its preseed templates (its preseeds directory)."""

    def write(self, name: str, text: str) -> str:
        """Write (replace) ``name`` atomically; return where it went."""

    def read(self, name: str) -> str: ...

    def exists(self, name: str) -> bool: ...

    def remove(self, name: str) -> None:
        """Remove ``name``; an absent file is already removed."""

    def names(self) -> list[str]:
        """The ``curtin_userdata*`` files in the directory, sorted."""


class LocalPreseedStore:
    """MAAS's preseeds directory on this machine (a region controller metalflow runs on, or
    the lab's). Writes are atomic (a temporary file in the same directory, then a rename), so
    MAAS never reads half a template; files are mode 0644, readable by the MAAS daemon."""

    def __init__(self, directory: str | os.PathLike[str], *, mode: int = 0o644):
        self.directory = Path(directory)
        self.mode = mode

    def __repr__(self) -> str:
        return f"LocalPreseedStore({str(self.directory)!r})"

    def _path(self, name: str) -> Path:
        return self.directory / _check_name(name)

    def write(self, name: str, text: str) -> str:
        target = self._path(name)
        if not self.directory.is_dir():
            raise PreseedStoreError(
                "the preseed directory does not exist", target=str(self.directory), operation="write"
            )
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), self.mode)
            os.replace(tmp, target)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise PreseedStoreError(
                f"could not write the preseed: {exc.strerror}", target=str(target), operation="write"
            ) from None
        try:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass  # the rename is done; a directory fsync is best effort
        return str(target)

    def read(self, name: str) -> str:
        try:
            return self._path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise PreseedStoreError(
                f"could not read the preseed: {exc.strerror}", target=str(self._path(name)), operation="read"
            ) from None

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def remove(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.directory.iterdir() if p.name.startswith(PRESEED_PREFIX) and p.is_file())
        except OSError as exc:
            raise PreseedStoreError(
                f"could not list the preseeds: {exc.strerror}", target=str(self.directory), operation="list"
            ) from None


class SftpPreseedStore:
    """MAAS's preseeds directory on a remote region controller, over SFTP (paramiko).

    One SSH connection per operation: preseeds are written once per deployment, and a
    long-lived connection would only add reconnect logic. Writes go to a temporary name in
    the same directory, are set to mode 0644, then renamed over the target (OpenSSH's
    ``posix-rename``; plain rename after removing the old file where it is missing).
    Host keys: ``known_hosts`` (or the system's) with ``host_key_policy="reject"`` by default;
    ``"auto-add"`` is for labs only.
    """

    def __init__(
        self,
        host: str,
        port: int = 22,
        username: str = "root",
        password: Secret | str | None = None,
        key: Any = None,
        directory: str = "/etc/maas/preseeds",
        *,
        timeout: float = 15.0,
        known_hosts: str | None = None,
        host_key_policy: str = "reject",
        mode: int = 0o644,
    ):
        if not posixpath.isabs(directory):
            raise PreseedError(f"directory: {directory!r} must be an absolute path on the MAAS host")
        if host_key_policy not in ("reject", "auto-add", "warn"):
            raise PreseedError("host_key_policy: one of reject, auto-add, warn")
        if password is None and key is None:
            raise PreseedError("password or key: SFTP needs one of them")
        self.host = host
        self.port = int(port)
        self.username = username
        self._password = Secret(password) if password is not None else None
        self._key = key  # a paramiko.PKey or a path to a private key file
        self.directory = posixpath.normpath(directory)
        self.timeout = timeout
        self.known_hosts = known_hosts
        self.host_key_policy = host_key_policy
        self.mode = mode

    def __repr__(self) -> str:
        return f"SftpPreseedStore({self.username}@{self.host}:{self.port}:{self.directory})"

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def remote_path(self, name: str) -> str:
        return posixpath.join(self.directory, _check_name(name))

    def _session(self, operation: str) -> tuple[Any, Any]:
        """A connected paramiko ``SSHClient`` and its ``SFTPClient`` (paramiko has no stubs)."""
        import paramiko  # only this store needs it

        client = paramiko.SSHClient()
        if self.known_hosts:
            client.load_host_keys(self.known_hosts)
        else:
            try:
                client.load_system_host_keys()
            except OSError:
                pass
        policy = {
            "reject": paramiko.RejectPolicy,
            "auto-add": paramiko.AutoAddPolicy,
            "warn": paramiko.WarningPolicy,
        }[self.host_key_policy]
        client.set_missing_host_key_policy(policy())
        kwargs: dict[str, Any] = dict(
            hostname=self.host,
            port=self.port,
            username=self.username,
            timeout=self.timeout,
            banner_timeout=self.timeout,
            auth_timeout=self.timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        if self._password is not None:
            kwargs["password"] = self._password.reveal()
        if isinstance(self._key, (str, os.PathLike)):
            kwargs["key_filename"] = os.fspath(self._key)
        elif self._key is not None:
            kwargs["pkey"] = self._key
        try:
            client.connect(**kwargs)
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.timeout)
        except Exception as exc:  # noqa: BLE001 - paramiko/socket errors, reported by type
            client.close()
            raise PreseedStoreError(
                f"SFTP to the MAAS host failed ({type(exc).__name__})",
                target=self.target,
                operation=operation,
                evidence=_safe_reason(exc, self._password),
            ) from None
        return client, sftp

    def _run(self, operation: str, name: str, fn: Callable[[Any, str], _T]) -> _T:
        client, sftp = self._session(operation)
        try:
            return fn(sftp, self.remote_path(name))
        except PreseedError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise PreseedStoreError(
                f"SFTP {operation} failed ({type(exc).__name__})",
                target=f"{self.target}:{self.remote_path(name)}",
                operation=operation,
                evidence=_safe_reason(exc, self._password),
            ) from None
        finally:
            sftp.close()
            client.close()

    def write(self, name: str, text: str) -> str:
        def op(sftp: Any, path: str) -> str:
            tmp = posixpath.join(self.directory, f".{name}.{_secrets.token_hex(4)}.tmp")
            try:
                with sftp.open(tmp, "w") as f:
                    f.write(text.encode("utf-8"))
                sftp.chmod(tmp, self.mode)
                try:
                    sftp.posix_rename(tmp, path)
                except OSError:
                    try:
                        sftp.remove(path)
                    except OSError:
                        pass
                    sftp.rename(tmp, path)
            except Exception:
                try:
                    sftp.remove(tmp)
                except OSError:
                    pass
                raise
            return f"sftp://{self.host}:{self.port}{path}"

        return self._run("write", name, op)

    def read(self, name: str) -> str:
        def op(sftp: Any, path: str) -> str:
            with sftp.open(path, "r") as f:
                data: bytes = f.read()
            return data.decode("utf-8")

        return self._run("read", name, op)

    def exists(self, name: str) -> bool:
        def op(sftp: Any, path: str) -> bool:
            try:
                mode: int = sftp.stat(path).st_mode or 0
                return stat.S_ISREG(mode)
            except FileNotFoundError:
                return False

        return self._run("exists", name, op)

    def remove(self, name: str) -> None:
        def op(sftp: Any, path: str) -> None:
            try:
                sftp.remove(path)
            except FileNotFoundError:
                pass  # already gone: removing is idempotent

        self._run("remove", name, op)

    def names(self) -> list[str]:
        def op(sftp: Any, path: str) -> list[str]:
            return sorted(n for n in sftp.listdir(self.directory) if n.startswith(PRESEED_PREFIX))

        return self._run("list", PRESEED_PREFIX, op)


def _safe_reason(exc: BaseException, password: Secret | None) -> str:
    text = str(exc)[:200]
    if password is not None and password.reveal():
        text = text.replace(password.reveal(), "***")
    return text
