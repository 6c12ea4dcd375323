"""The extension's one configuration file, and the installer that writes it.

CloudStack starts the executable with the management server's environment and no
arguments of ours, so everything the extension needs is in one JSON file:
``$METALFLOW_CLOUDSTACK_CONFIG`` or ``/etc/metalflow/cloudstack.json``. It holds where the
Prefect API and the inventory are, the Prefect API's basic-auth string (the only secret, so
the file is written owner-only) and timeouts. The MAAS key, IPMI and switch passwords are
not here: they stay with metalflow's flows.

It also holds how far a tenant may reach: ``tenant_secret_scope``, the reference prefixes a
``root_password_ref`` written in VM details may start with (a tenant who can set VM details
must not name another tenant's secret). Empty, the default, refuses such references entirely:
the operator opts in.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from metalflow.integrations.common import MetalflowError, Secret

ENV_CONFIG = "METALFLOW_CLOUDSTACK_CONFIG"
DEFAULT_CONFIG = Path("/etc/metalflow/cloudstack.json")
LOG_NAME = "metalflow-cloudstack.log"
CLOUDSTACK_DEFAULT_WAIT = 1800  # CloudStack's global ``wait``, used when it passes 0


class ExtensionConfigError(MetalflowError):
    """The configuration file is missing or wrong; the message names the file and the key."""


@dataclass(frozen=True)
class ExtensionConfig:
    prefect_api_url: str
    inventory_url: str
    prefect_auth_string: Secret | None = None
    log_file: str = ""  # empty: metalflow-cloudstack.log beside the configuration file
    deployment: str = "metalflow"  # deployments are <flow>/<deployment>
    deadline_margin: float = 15.0  # answer this long before CloudStack's wait runs out
    min_deadline: float = 5.0  # but wait at least this long, if CloudStack's wait allows
    status_stale_after: float = 180.0  # an older power reading is PowerUnknown
    status_timeout: float = 2.0  # for the one HTTP call a status makes (the host lock)
    request_timeout: float = 10.0
    poll_interval: float = 1.0  # first interval of waiting for a run (it grows to 3 s)
    erase_default: str = "quick"
    wait_for_erase: bool = True
    stop_soft_timeout: float | None = None  # None: metalflow's setting
    #: Reference prefixes (``block:tenant-root-``, ``env:METALFLOW_ROOT_``) a root_password_ref
    #: from VM details may start with; empty: none is accepted (see docs/cloudstack.md).
    tenant_secret_scope: tuple[str, ...] = ()
    #: How long a machine ``prepare`` claimed stays set aside without a ``create`` (and after
    #: a create's run ends without completing). CloudStack runs prepare before it implements
    #: the VM's networks (a new isolated network starts a virtual router first): its own
    #: ``wait`` (1800 s) bounds each of those steps. See docs/cloudstack.md, "Leases".
    lease_seconds: float = 1800.0
    #: After this many provisions of one VM failed in a row, a create (and a prepare) of that
    #: VM fails at once with the first failure's reason, and the machine of the last failure
    #: is held in maintenance until an operator clears it (CloudStack retries a failed start
    #: up to ``start.retry`` = 10 times, on the same host as often as not).
    create_failure_limit: int = 2
    path: str = ""  # where it was read from (not written)

    @property
    def log_path(self) -> Path:
        if self.log_file:
            return Path(self.log_file)
        base = Path(self.path).parent if self.path else DEFAULT_CONFIG.parent
        return base / LOG_NAME

    def deadline_for(self, wait_seconds: int) -> float:
        """How long an action may wait for its run: safely below CloudStack's ``wait``
        (``deadline_margin`` below it), at least ``min_deadline`` when ``wait`` allows, and
        never past three quarters of a short ``wait`` (a custom action's default is 3 s)."""
        wait = wait_seconds if wait_seconds > 0 else CLOUDSTACK_DEFAULT_WAIT
        return max(wait - self.deadline_margin, min(self.min_deadline, wait * 0.75))

    def document(self) -> dict[str, Any]:
        """The JSON written to the file (the auth string revealed: the file is 0600)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "path":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = value.reveal()
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def masked(self) -> dict[str, Any]:
        doc = self.document()
        if "prefect_auth_string" in doc:
            doc["prefect_auth_string"] = "***"
        return doc


_FLOATS = (
    "deadline_margin",
    "min_deadline",
    "status_stale_after",
    "status_timeout",
    "request_timeout",
    "poll_interval",
    "lease_seconds",
)
_ERASE = ("none", "quick", "secure")
#: A scope prefix: the start of a reference as ``values.parse_secret_ref`` reads it, with at
#: least one character of the name (``block:`` alone would be every block).
_SCOPE_PREFIX = re.compile(
    r"env:[A-Za-z_][A-Za-z0-9_]{0,127}|block:[a-z0-9][a-z0-9-]{0,127}(?:#[A-Za-z0-9._-]{0,128})?", re.ASCII
)


def _scope(value: Any, problems: list[str]) -> tuple[str, ...]:
    fix = (
        "tenant_secret_scope: expected a list of reference prefixes, each env: or block: and the start of a "
        'name, e.g. ["block:tenant-root-"]'
    )
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(fix)
        return ()
    bad = [i for i, v in enumerate(value) if not _SCOPE_PREFIX.fullmatch(v)]
    if bad:
        problems.append(f"{fix} (entries {', '.join(map(str, bad))} are not)")
        return ()
    return tuple(value)


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(ENV_CONFIG) or DEFAULT_CONFIG)


def parse_config(doc: Any, where: str) -> ExtensionConfig:
    """Check every key (all problems at once); the auth string is never echoed."""
    if not isinstance(doc, Mapping):
        raise ExtensionConfigError(f"{where}: expected a JSON object")
    known = {f.name for f in fields(ExtensionConfig)} - {"path"}
    problems = [f"{k}: unknown key (known: {', '.join(sorted(known))})" for k in doc if k not in known]
    values: dict[str, Any] = {}
    for key in ("prefect_api_url", "inventory_url"):
        v = doc.get(key)
        if not isinstance(v, str) or not v.strip():
            problems.append(
                f"{key}: missing; e.g. "
                + (
                    "http://127.0.0.1:4200/api"
                    if key == "prefect_api_url"
                    else "sqlite:////var/lib/metalflow/inventory.db"
                )
            )
        else:
            values[key] = v.strip()
    if "prefect_api_url" in values and not values["prefect_api_url"].startswith(("http://", "https://")):
        problems.append("prefect_api_url: expected an http(s) URL ending in /api")
    auth = doc.get("prefect_auth_string")
    if auth is not None:
        if not isinstance(auth, str) or ":" not in auth:
            problems.append("prefect_auth_string: expected user:password (the value is not shown)")
        else:
            values["prefect_auth_string"] = Secret(auth)
    for key in ("log_file", "deployment"):
        if key in doc:
            if not isinstance(doc[key], str) or (key == "deployment" and not doc[key]):
                problems.append(f"{key}: expected a string")
            else:
                values[key] = doc[key]
    for key in (*_FLOATS, "stop_soft_timeout"):
        if key in doc and not (key == "stop_soft_timeout" and doc[key] is None):
            v = doc[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                problems.append(f"{key}: expected a positive number of seconds")
            else:
                values[key] = float(v)
    if "create_failure_limit" in doc:
        v = doc["create_failure_limit"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100:
            problems.append("create_failure_limit: expected a whole number from 1 to 100 (failed provisions in a row)")
        else:
            values["create_failure_limit"] = v
    if "erase_default" in doc:
        if doc["erase_default"] not in _ERASE:
            problems.append(f"erase_default: expected one of {', '.join(_ERASE)}")
        else:
            values["erase_default"] = doc["erase_default"]
    if "wait_for_erase" in doc:
        if not isinstance(doc["wait_for_erase"], bool):
            problems.append("wait_for_erase: expected true or false")
        else:
            values["wait_for_erase"] = doc["wait_for_erase"]
    if "tenant_secret_scope" in doc:
        values["tenant_secret_scope"] = _scope(doc["tenant_secret_scope"], problems)
    if problems:
        raise ExtensionConfigError(f"{where}: " + "; ".join(problems))
    return ExtensionConfig(**values, path=where)


def load_config(path: str | Path | None = None) -> ExtensionConfig:
    p = Path(path) if path else config_path()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ExtensionConfigError(
            f"no configuration at {p}: run `metalflow-cloudstack install --config {p} --prefect-api-url ...` "
            f"or point {ENV_CONFIG} at it"
        ) from None
    except OSError as exc:
        raise ExtensionConfigError(
            f"cannot read {p}: {exc.strerror or exc} (the file must be readable by "
            "the user CloudStack runs as, normally cloud)"
        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExtensionConfigError(f"{p} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return parse_config(doc, str(p))


# ---------------------------------------------------------------------------- installer


def entry_command() -> str:
    """How to run this extension from a shell: the console script beside our Python."""
    script = Path(sys.executable).with_name("metalflow-cloudstack")
    return str(script) if script.exists() else f"{sys.executable} -m metalflow.integrations.cloudstack.extension"


def shim_text(config: str | Path, command: str | None = None) -> str:
    """The file CloudStack runs from its extensions folder: one line that hands the call over."""
    return f'#!/bin/sh\nexec env {ENV_CONFIG}={config} {command or entry_command()} "$@"\n'


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically with ``mode`` from the first byte (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(
    config: str | Path,
    *,
    prefect_api_url: str,
    inventory_url: str,
    auth_string: str | None = None,
    log_file: str | None = None,
    owner: str | None = None,
    shim: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ExtensionConfig, str]:
    """Write the configuration (mode 0600, owned by ``owner`` when given, e.g. ``cloud``),
    create the log file for that owner, optionally write the shim (mode 0755); return the
    configuration and the shim's text."""
    path = Path(config).absolute()
    doc: dict[str, Any] = {"prefect_api_url": prefect_api_url, "inventory_url": inventory_url}
    if auth_string:
        doc["prefect_auth_string"] = auth_string
    if log_file:
        doc["log_file"] = log_file
    doc.update(extra or {})
    cfg = parse_config(doc, str(path))  # check before writing anything
    _write_private(path, json.dumps(cfg.document(), indent=2) + "\n")
    log = cfg.log_path
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch(mode=0o600, exist_ok=True)
    if owner:
        try:
            pw = pwd.getpwnam(owner)
        except KeyError:
            raise ExtensionConfigError(f"--owner: no user {owner!r} on this machine") from None
        for p in (path, log):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    text = shim_text(path)
    if shim:
        shim_path = Path(shim)
        shim_path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(shim_path, text, 0o755)
        if owner:
            os.chown(shim_path, pw.pw_uid, pw.pw_gid)
    return cfg, text
