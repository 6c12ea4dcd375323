"""One driver per entry point: hand it an input, get back what an operator or CloudStack
would see (:class:`Outcome`) and whether anything was written.

"Written" is measured against ground truth, not against the code's own account: the
inventory's whole SQLite content (every row of hosts, NICs, claims, the journal...) before and
after, and every request that reached the Prefect API (a listener that records requests in the
API's place and answers 404, so any run the edge tried to create shows up as a request).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.cloudstack.payloads import HOST_API_KEY, NETWORK_EXTRA, NETWORK_GUEST, VNC_PASSWORD, gson, nic, payload
from tests.fuzz.catalogue import OTHER_TENANT_UUID, OTHER_TENANT_VM

VM_UUID = "0f6c1a8e-7b1d-4c1e-9a55-3d2f6b9e1c01"
SWITCH_PASSWORD = "Canary-Switch-Pw-61c0e2"


@dataclass
class Outcome:
    """What came back: ``failure`` is the exception type's name (and its bases') or the exit
    code; ``text`` everything shown (error, answer, output); ``log`` what went to log files."""

    failure: tuple[str | int, ...]
    text: str
    log: str = ""
    field: str = ""
    accepted: Any = None  # the parsed value, when the input was accepted


def raised(exc: BaseException) -> Outcome:
    """The error as shown, with the error it was raised from (Prefect logs a pydantic
    ValidationError's text, ``input_value`` included, when parameters do not validate)."""
    names = tuple(c.__name__ for c in type(exc).__mro__)
    cause = exc.__cause__ or exc.__context__
    text = str(exc) + (f"\n{cause}" if cause is not None else "")
    return Outcome(names, text, field=str(getattr(exc, "field", "") or ""))


# ---------------------------------------------------------------------------- ground truth


class PrefectRecorder:
    """Listens where the Prefect API would be; records every request, answers 404."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    recorder.requests.append((self.command, self.path, body))
                out = b'{"detail": "Not found"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"

    @property
    def count(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def db_state(path: Path) -> str:
    """A digest of every row of every table of the SQLite inventory."""
    con = sqlite3.connect(path)
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


@dataclass
class World:
    """What one fuzz session writes against: a real SQLite inventory of five hosts (one of
    them carrying another tenant's VM) and the Prefect recorder."""

    tmp: Path
    db: Path
    prefect: PrefectRecorder

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def snapshot(self) -> tuple[str, int]:
        return db_state(self.db), self.prefect.count


def make_world(tmp: Path, prefect: PrefectRecorder) -> World:
    from tests.cloudstack.inventory_fixtures import make_inventory

    db = tmp / "inventory.db"
    inv = make_inventory(f"sqlite:///{db}")
    inv.hosts.set_last_vm("host-002", OTHER_TENANT_UUID, OTHER_TENANT_VM)
    inv.dispose()
    return World(tmp, db, prefect)


# ---------------------------------------------------------------------------- the extension


def extension_doc(inp: Mapping[str, Any]) -> tuple[str, str]:
    """(action, payload file text) for an extension input of the catalogue's shape."""
    if "raw" in inp:
        return inp.get("action", "create"), str(inp["raw"])
    action = inp.get("action", "create")
    custom = action in ("PlugNetwork", "UnplugNetwork", "Reinstall")
    vm_ext = {"vm_name": "web-01", "image": "ubuntu/jammy", **inp.get("vm_ext", {})}
    nics = None
    if "nics" in inp:
        nics = [
            nic(
                i,
                uri,
                default=d,
                network=NETWORK_GUEST if d else NETWORK_EXTRA,
                mac=f"02:00:5a:00:{i // 256:02x}:{i % 256:02x}",
            )
            for i, (uri, d) in enumerate(inp["nics"])
        ]
    doc = payload(action, VM_UUID, nics=nics, vm_ext=vm_ext, parameters=inp.get("parameters"), custom=custom)
    if nics is not None and action in ("create", "start"):
        doc["externaldetails"]["virtualmachine"].pop("cloudstack.vlan", None)
    doc["externaldetails"]["host"] = {"api_key": HOST_API_KEY}
    doc["cloudstack.vm.details"].update(inp.get("vm", {}))
    doc.update(inp.get("doc", {}))
    text = gson(doc)
    if inp.get("gson_newline"):
        text = text.replace("\\n", "\\u000a")
    return action, text


def run_extension(world: World, inp: Mapping[str, Any]) -> Outcome:
    """The CloudStack call in process: ``handle`` is ``main`` without the file-descriptor
    discipline (which the subprocess cases cover)."""
    from metalflow.integrations.cloudstack.extension import handle
    from metalflow.integrations.cloudstack.extension_config import ExtensionConfig

    action, text = extension_doc(inp)
    path = world.tmp / "payload.json"
    path.write_text(text, encoding="utf-8")
    log = world.tmp / "ext.log"
    log.write_text("")
    cfg = ExtensionConfig(
        prefect_api_url=world.prefect.url, inventory_url=world.url, log_file=str(log), request_timeout=2.0
    )
    try:
        answer = handle(action, str(path), 60, cfg, None, time.monotonic())
    except BaseException as exc:  # noqa: BLE001 - the entry point must answer, never raise
        return Outcome(("raised",), "".join(traceback.format_exception(exc)))
    return Outcome((answer.exit_code,), answer.text(), log=log.read_text(), field=str(answer.body.get("message", "")))


EXTENSION_SECRETS = (HOST_API_KEY, VNC_PASSWORD)


# ---------------------------------------------------------------------------- rack config


def rack_doc(inp: Mapping[str, Any]) -> dict[str, Any]:
    from metalflow.lab.spec import generate

    doc = generate(hosts=2, switches=1, dialects=("force10",), seed_secrets="fuzz").rack_config()
    rack = doc["racks"][0]
    rack["l2Switch"]["password"] = SWITCH_PASSWORD
    rack["l2Switch"].update(inp.get("switch", {}))
    rack["hosts"][0].update(inp.get("host", {}))
    if "extra_host" in inp:
        rack["hosts"].insert(1, {"port": rack["hosts"][0]["port"], **inp["extra_host"]})
    return doc


def run_rack(inp: Mapping[str, Any]) -> Outcome:
    from metalflow.integrations.config import load_rack_config

    doc = rack_doc(inp)
    try:
        cfg = load_rack_config(json.dumps(doc))
    except Exception as exc:  # noqa: BLE001 - the type is what is checked
        return raised(exc)
    return Outcome(("accepted",), "", accepted=cfg)


# ---------------------------------------------------------------------------- inventory import


def host_record(**over: Any) -> Any:
    from metalflow.integrations.inventory import HostRecord

    base = HostRecord(
        name="host-009",
        cloudstack_id="5c2e7a10-0000-4000-8000-000000000009",
        ipmi_address="10.0.9.9",
        ipmi_port=623,
        ipmi_username="admin",
        ipmi_credential_ref="block:ipmi-host-009",
        macs=("02:00:00:00:09:01",),
        cpu_count=8,
        memory_mb=16384,
    )
    return replace(base, **over)


def run_import(world: World, inp: Mapping[str, Any]) -> Outcome:
    from metalflow.integrations.config import load_rack_config
    from metalflow.integrations.inventory import Inventory

    rack = load_rack_config(rack_doc({}))
    inv = Inventory(world.url)
    try:
        kwargs: dict[str, Any] = {"pxe_vlan": inp["pxe_vlan"]} if "pxe_vlan" in inp else {}
        summary = inv.hosts.import_rack_config(rack, [host_record(**inp.get("host", {}))], **kwargs)
    except Exception as exc:  # noqa: BLE001
        return raised(exc)
    finally:
        inv.dispose()
    return Outcome(("accepted",), "", accepted=summary)


# ---------------------------------------------------------------------------- MAAS settings


def run_maas(text: str) -> Outcome:
    from metalflow.integrations.config.maas import parse_settings

    try:
        settings = parse_settings(text)
    except Exception as exc:  # noqa: BLE001
        return raised(exc)
    return Outcome(("accepted",), repr(settings), accepted=settings)


# ---------------------------------------------------------------------------- the CLI


def run_cli(world: World, argv: list[str]) -> Outcome:
    """``metalflow ...`` in process (typer's runner), the Prefect API pointed at the recorder
    and the inventory at the world's."""
    from typer.testing import CliRunner

    from metalflow.deployments.cli import app

    env = {"PREFECT_API_URL": world.prefect.url, "METALFLOW_INVENTORY_URL": world.url}
    result = CliRunner().invoke(app, argv, env=env)
    text = result.output
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        text += "".join(traceback.format_exception(exc))
        return Outcome(("raised",), text)
    return Outcome((result.exit_code,), text)


# ---------------------------------------------------------------------------- flow parameters


def base_vm(**over: Any) -> dict[str, Any]:
    vm: dict[str, Any] = {
        "name": "web-01",
        "uuid": VM_UUID,
        "image": "ubuntu/jammy",
        "nics": [{"vlan": 100, "default": True}, {"vlan": 200}],
        "root_password_ref": "block:tenant-a-root",
        "ssh_keys": [],
    }
    vm.update(over)
    return vm


def flow_params(inp: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    flow = inp.get("flow", "provision")
    if flow == "provision":
        params: dict[str, Any] = {"host": "host-001", "vm": base_vm(**inp.get("vm", {}))}
    else:
        params = {}
    params.update(inp.get("params", {}))
    return flow, params


def flows() -> dict[str, Any]:
    from metalflow.flows.destroy import destroy
    from metalflow.flows.nics import plug_nic, unplug_nic
    from metalflow.flows.provision import provision

    return {"provision": provision, "destroy": destroy, "plug-nic": plug_nic, "unplug-nic": unplug_nic}


def run_flow(inp: Mapping[str, Any]) -> Outcome:
    """Validate the parameters the way Prefect's API does before a run starts."""
    name, params = flow_params(inp)
    try:
        validated = flows()[name].validate_parameters(params)
    except Exception as exc:  # noqa: BLE001
        return raised(exc)
    return Outcome(("accepted",), "", accepted=validated)
