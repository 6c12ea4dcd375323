"""metalflow's CloudStack Orchestrator extension (CloudStack 4.21 and 4.22).

CloudStack runs ``<exe> <action> <payload.json> <wait_seconds>`` for every VM operation and
reads the exit code and stdout (stderr is merged into it). So this entry point:

- prints exactly one JSON document on stdout, whatever happens: file descriptors 1 and 2 are
  pointed at the log file while it works, and only the answer goes to the real stdout;
- logs to the log file of the configuration, never to stdout or stderr;
- exits 0 on success and 1 otherwise, within a deadline safely below ``wait_seconds``;
- fails at once, without touching anything, for an action it does not implement (CloudStack
  passes Java class names such as ``com.cloud.agent.api.XyzCommand`` for agent commands it
  does not route);
- imports as little as it can: ``status`` runs once per VM per minute, one after another,
  so it needs the standard library and SQLAlchemy Core only; the other actions add requests
  and the inventory. Never Prefect (``import prefect`` alone costs about a second).

The same executable has operator commands: ``install`` writes the configuration (0600) and
prints the one-line shim for CloudStack's extensions folder, ``check`` tests the
configuration, ``shim`` prints the shim again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

from metalflow.integrations.cloudstack.answer import Answer, no_console
from metalflow.integrations.cloudstack.extension_config import ExtensionConfig, ExtensionConfigError, load_config
from metalflow.integrations.cloudstack.payload import Payload, PayloadError, load_payload
from metalflow.integrations.common import Deadline, MetalflowError
from metalflow.integrations.common.secrets import ScrubFilter, scrub, scrubber

BUILTIN_ACTIONS = ("prepare", "create", "start", "stop", "reboot", "delete", "status", "getconsole")
CUSTOM_ACTIONS = ("PlugNetwork", "UnplugNetwork", "Reinstall")
ACTIONS = MappingProxyType({a.lower(): a for a in BUILTIN_ACTIONS + CUSTOM_ACTIONS})
ADMIN_COMMANDS = ("install", "check", "shim")
LOGGER = "metalflow.cloudstack"


# ---------------------------------------------------------------------------- the CloudStack call


def is_cloudstack_call(args: Sequence[str]) -> bool:
    """``<action> <payload.json> <wait_seconds>``: three arguments, the last an integer."""
    return len(args) == 3 and not args[1].startswith("-") and args[2].strip().lstrip("-").isdigit()


@contextmanager
def _quiet_stdio(log_path: Path | None) -> Iterator[int]:
    """Point fds 1 and 2 (and sys.stdout/stderr) at the log file, or /dev/null, for the
    duration; yield a duplicate of the real stdout for the one answer."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    sink = None
    if log_path is not None:
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            sink = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError:
            sink = None
    if sink is None:
        sink = os.open(os.devnull, os.O_WRONLY)
    old_out, old_err = sys.stdout, sys.stderr
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        sys.stdout = sys.stderr = os.fdopen(os.dup(sink), "w", buffering=1)
        yield saved_out
    finally:
        try:
            sys.stdout.flush()
            sys.stdout.close()
        except Exception:  # noqa: BLE001
            pass
        sys.stdout, sys.stderr = old_out, old_err
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, sink):
            os.close(fd)


def _logger(cfg: ExtensionConfig | None, action: str) -> logging.LoggerAdapter[logging.Logger]:
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    handler: logging.Handler = logging.NullHandler()
    if cfg is not None:
        try:
            cfg.log_path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(cfg.log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s [%(action)s] %(message)s"))
        except OSError:
            handler = logging.NullHandler()
    handler.addFilter(ScrubFilter())  # the log file never holds a secret the process knows
    log.addHandler(handler)
    return logging.LoggerAdapter(log, {"action": action})


def unknown_action(action: str) -> Answer:
    known = ", ".join(BUILTIN_ACTIONS + CUSTOM_ACTIONS)
    if "." in action:
        return Answer.error(
            f"{action} is a CloudStack agent command this extension does not handle "
            f"(it implements {known}); nothing was done"
        )
    return Answer.error(f"unknown action {action!r} (metalflow implements {known}); nothing was done")


def handle(
    action: str,
    payload_path: str,
    wait_seconds: int,
    cfg: ExtensionConfig | None,
    cfg_error: Exception | None,
    started: float,
) -> Answer:
    """Everything but the output discipline: the answer to one CloudStack call."""
    log = _logger(cfg, action)
    name = ACTIONS.get(action.lower())
    if name is None:
        answer = unknown_action(action)
        log.warning("%s", answer.body["message"])
        return answer
    if cfg is None:
        return Answer.error(f"metalflow extension configuration: {cfg_error}")
    try:
        payload = load_payload(payload_path, name)
    except PayloadError as exc:
        log.warning("bad payload: %s", exc)
        return Answer.error(str(exc))
    log = logging.LoggerAdapter(log.logger, {"action": f"{name} {payload.vm_uuid or '-'}"})
    try:
        if name == "status":
            from metalflow.integrations.cloudstack.status import answer_status

            answer = answer_status(cfg, payload)
        elif name == "getconsole":
            answer = no_console()
        else:
            answer = _act(cfg, payload, name, wait_seconds, started, log)
    except MetalflowError as exc:
        log.exception("%s failed", name)
        answer = Answer.error(str(exc))
    except Exception as exc:
        log.exception("%s failed unexpectedly", name)
        answer = Answer.error(f"{name} failed: {_explain(exc, cfg)}")
    log.info(
        "%s in %.0f ms: exit %d %s",
        name,
        (time.monotonic() - started) * 1000,
        answer.exit_code,
        answer.body.get("message", "") if name != "prepare" else answer.body.get("details", ""),
    )
    return answer


def _explain(exc: Exception, cfg: ExtensionConfig) -> str:
    """A short reason; database errors name the inventory (without its password) and the fix
    for the commonest one, an inventory older than the extension."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).splitlines()[0][:300] if str(orig) else type(orig).__name__
    module = type(exc).__module__
    if module.startswith("sqlalchemy") or module.startswith("sqlite3") or isinstance(exc, FileNotFoundError):
        url = cfg.inventory_url.split("@")[-1] if "@" in cfg.inventory_url else cfg.inventory_url
        hint = ""
        if "no such table" in text or "does not exist" in text:
            hint = (
                "; the inventory's schema is older than the extension: run `metalflow-cloudstack install` "
                "again or `python -m metalflow.integrations.inventory.migrate upgrade`"
            )
        return f"inventory {url}: {text}{hint}"
    return f"{type(exc).__name__}: {text}"


def _act(
    cfg: ExtensionConfig,
    payload: Payload,
    name: str,
    wait_seconds: int,
    started: float,
    log: logging.LoggerAdapter[logging.Logger],
) -> Answer:
    from metalflow.integrations.cloudstack.actions import Extension, dispatch
    from metalflow.integrations.prefectapi import PrefectApiError

    # CloudStack's clock started before ours: count what start-up and imports took.
    budget = cfg.deadline_for(wait_seconds) - (time.monotonic() - started)
    ext = Extension(cfg, payload, Deadline(max(0.5, budget)), log)
    try:
        return dispatch(ext, name)
    except PrefectApiError as exc:
        return Answer.error(f"Prefect API at {cfg.prefect_api_url}: {exc}")
    finally:
        ext.close()


def learn_config_secrets(cfg: ExtensionConfig) -> None:
    """Teach the process's scrubber the configuration's secrets: the auth string, and the
    passwords in the inventory URL and the Prefect API URL (userinfo), so no answer, log line
    or ``check`` line can show them."""
    s = scrubber()
    s.learn_auth_string(cfg.prefect_auth_string)
    s.learn_url(cfg.inventory_url)
    s.learn_url(cfg.prefect_api_url)


def run_cloudstack(args: Sequence[str]) -> int:
    started = time.monotonic()
    action, payload_path, wait_text = args
    cfg: ExtensionConfig | None = None
    cfg_error: Exception | None = None
    try:
        cfg = load_config()
        learn_config_secrets(cfg)
    except ExtensionConfigError as exc:
        cfg_error = exc
    answer = Answer.error("internal error")
    with _quiet_stdio(cfg.log_path if cfg is not None else None) as real_stdout:
        try:
            answer = handle(action, payload_path, int(wait_text), cfg, cfg_error, started)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit/KeyboardInterrupt answer in JSON
            answer = Answer.error(f"{action} failed: {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            for handler in logging.getLogger(LOGGER).handlers:
                handler.flush()
        # Whatever the answer quotes (an error from MAAS, the database, a run's state message)
        # passes the scrubber: CloudStack keeps the answer in its own logs and shows it.
        answer = Answer(answer.ok, scrubber().scrub_values(dict(answer.body)))
        os.write(real_stdout, (answer.text() + "\n").encode())
    return answer.exit_code


# ---------------------------------------------------------------------------- operator commands


def _admin(args: Sequence[str]) -> int:
    from metalflow.integrations.cloudstack.extension_config import DEFAULT_CONFIG, config_path, install, shim_text

    parser = argparse.ArgumentParser(
        prog="metalflow-cloudstack",
        description="metalflow's CloudStack Orchestrator extension. CloudStack runs it as "
        "`metalflow-cloudstack <action> <payload.json> <wait_seconds>`.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ins = sub.add_parser("install", help="write the configuration (mode 0600) and print the shim")
    ins.add_argument("--config", default=str(config_path()), help=f"where to write it (default {DEFAULT_CONFIG})")
    ins.add_argument("--prefect-api-url", required=True, help="e.g. http://metalflow.example:4200/api")
    ins.add_argument(
        "--auth-string",
        default=None,
        help="Prefect API basic auth user:password; '-' reads it from stdin (keeps it out of ps)",
    )
    ins.add_argument("--inventory-url", default=None, help="the inventory database (default: metalflow's)")
    ins.add_argument("--log-file", default=None, help="default: metalflow-cloudstack.log beside the configuration")
    ins.add_argument(
        "--owner", default=None, help="chown the configuration and log to this user (CloudStack runs as cloud)"
    )
    ins.add_argument(
        "--shim",
        default=None,
        help="also write the shim here, e.g. /usr/share/cloudstack-management/extensions/metalflow/metalflow.sh",
    )
    ins.add_argument("--no-upgrade", action="store_true", help="do not migrate the inventory to the newest schema")
    chk = sub.add_parser("check", help="test the configuration: Prefect API, deployments, inventory")
    chk.add_argument("--config", default=None)
    shim = sub.add_parser("shim", help="print the shim for CloudStack's extensions folder")
    shim.add_argument("--config", default=str(config_path()))
    a = parser.parse_args(list(args))

    if a.cmd == "shim":
        print(shim_text(Path(a.config).absolute()), end="")
        return 0
    if a.cmd == "check":
        return _check(a.config)
    from metalflow.integrations.inventory import Inventory, default_url

    auth = sys.stdin.readline().strip() if a.auth_string == "-" else a.auth_string
    inventory_url = a.inventory_url or default_url()
    try:
        cfg, text = install(
            a.config,
            prefect_api_url=a.prefect_api_url,
            inventory_url=inventory_url,
            auth_string=auth,
            log_file=a.log_file,
            owner=a.owner,
            shim=a.shim,
        )
    except ExtensionConfigError as exc:
        print(scrub(f"error: {exc}"), file=sys.stderr)
        return 2
    if not a.no_upgrade:
        inv = Inventory(inventory_url)
        inv.upgrade()
        inv.dispose()
    print(f"wrote {cfg.path} (mode 0600); the extension logs to {cfg.log_path}")
    if a.shim:
        print(f"wrote the shim {a.shim} (mode 0755)")
    else:
        print("put this shim in CloudStack's extensions folder (executable, owned by cloud):\n")
        print(text, end="")
    return 0


def _say(line: str) -> None:
    """One line of ``check``'s report, scrubbed: the configuration's URLs carry passwords, and
    an error from the database or the API may quote them."""
    print(scrub(line))


def _check(path: str | None) -> int:
    from metalflow.integrations.cloudstack.runs import ExtensionApi
    from metalflow.integrations.inventory import Inventory
    from metalflow.integrations.prefectapi import PrefectApiError

    try:
        cfg = load_config(path)
    except ExtensionConfigError as exc:
        _say(f"FAIL configuration: {exc}")
        return 1
    learn_config_secrets(cfg)
    ok = True
    _say(f"ok   configuration {cfg.path}: {cfg.masked()}")
    api = ExtensionApi(cfg.prefect_api_url, auth_string=cfg.prefect_auth_string, timeout=cfg.request_timeout)
    for flow in ("provision", "start", "stop", "reboot", "destroy", "plug-nic", "unplug-nic"):
        try:
            api.deployment_id(f"{flow}/{cfg.deployment}", deadline=Deadline(10))
            _say(f"ok   deployment {flow}/{cfg.deployment}")
        except PrefectApiError as exc:
            ok = False
            _say(f"FAIL deployment {flow}/{cfg.deployment}: {exc}")
    try:
        inv = Inventory(cfg.inventory_url)
        hosts = inv.hosts.all()
        claims = inv.claims.all()
        inv.dispose()
        _say(f"ok   inventory: {len(hosts)} hosts, {len(claims)} claimed")
    except Exception as exc:  # noqa: BLE001
        ok = False
        _say(f"FAIL inventory {cfg.inventory_url}: {exc}")
    try:
        with open(cfg.log_path, "a"):
            _say(f"ok   log file {cfg.log_path}")
    except OSError as exc:
        ok = False
        _say(f"FAIL log file {cfg.log_path}: {exc.strerror}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if is_cloudstack_call(args):
        return run_cloudstack(args)
    if not args or args[0] not in ADMIN_COMMANDS + ("-h", "--help"):
        # Called like CloudStack but wrongly: still exactly one JSON document.
        text = Answer.error(
            "usage: metalflow-cloudstack <action> <payload.json> <wait_seconds> "
            f"(or: metalflow-cloudstack {{{','.join(ADMIN_COMMANDS)}}} --help); got {len(args)} "
            "arguments"
        ).text()
        os.write(1, (text + "\n").encode())
        return 1
    return _admin(args)


if __name__ == "__main__":
    sys.exit(main())
