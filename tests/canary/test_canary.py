"""The canary test (issue 16, "no secret ever echoed"): every credential the system holds is a
value unique to this test; the operations run, the failures happen; then every store and every
output is searched for every one of those values, and none may be found.

The canaries:

- the lab's credentials: every BMC password, every switch password (also its enable secret),
  the three parts of the MAAS API key. The lab makes each a fresh random value for this stack
  (16 to 32 hex characters), so each is as unique as a planted canary;
- the root password hash: a valid crypt hash around a canary salt, reached by reference
  (``env:``), as every root hash now travels;
- a secret pasted by mistake where a reference belongs (a CloudStack VM detail
  ``root_password_ref``);
- the password of the Prefect API URL the CloudStack extension is configured with (userinfo;
  the Prefect server ignores the basic-auth header it becomes);
- a database password in the inventory URL of a second extension configuration, for ``check``
  (the stack's inventory is SQLite, which has no password).

What runs: register, provision (success, and one the lab makes fail: rolled back), plug and
unplug a NIC, destroy, and the CloudStack actions through the extension executable, among them
failures (a BMC that refuses the login on stop, a pasted secret as a reference), and ``check``.

What is searched, after the stack has stopped (every log line delivered): the Prefect database
(every column of every table: logs, artifacts, flow-run parameters, task-run states, ...), the
inventory database (every table), the logs of ``metalflow serve`` and of the Prefect server,
the extension's log file, and the stdout and stderr of every extension call. The lab's own log
is not searched: the lab is the hardware, and it knows the passwords it was made with.

The search is shown to work: a control canary written deliberately into the inventory database
must be found there, and a value every run stores (a VM's name) must be found in the Prefect
database.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from metalflow.deployments.stack import Stack
from tests.cloudstack.payloads import GIB, NETWORK_GUEST, after_prepare, nic, payload, write
from tests.conftest import free_block
from tests.e2e.conftest import E2E, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HOSTS = ("host-001", "host-002", "host-003", "host-004")
EXE = Path(sys.executable).with_name("metalflow-cloudstack")
_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b64(n: int) -> str:
    return "".join(secrets.choice(_B64) for _ in range(n))


@dataclass(frozen=True)
class Canaries:
    """Every value that must never be found, by name."""

    values: dict[str, str]

    @classmethod
    def of(cls, manifest: dict, planted: dict[str, str]) -> Canaries:
        values = dict(planted)
        for h in manifest["hosts"]:
            values[f"BMC password of {h['name']}"] = h["ipmi"]["password"]
        for s in manifest["switches"]:
            values[f"password of switch {s['name']}"] = s["password"]
            values[f"enable secret of switch {s['name']}"] = s["enable_secret"]
        ck, tk, ts = manifest["maas"]["api_key"].split(":")
        values.update({"MAAS consumer key": ck, "MAAS token key": tk, "MAAS token secret": ts})
        assert all(len(v) >= 12 for v in values.values()), "a canary must be unmistakable"
        return cls(values)


@dataclass(frozen=True)
class Hit:
    store: str
    where: str
    canary: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.store} / {self.where}: {self.canary}: ...{self.excerpt}..."


def find(store: str, where: str, text: str, canaries: dict[str, str]) -> list[Hit]:
    out = []
    for name, value in canaries.items():
        i = text.find(value)
        if i >= 0:
            out.append(Hit(store, where, name, text[max(0, i - 80) : i + len(value) + 40].replace("\n", " ")))
    return out


def scan_sqlite(store: str, path: Path, canaries: dict[str, str]) -> list[Hit]:
    """Every column of every row of every table of the SQLite database at ``path``."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        hits = []
        for table in tables:
            cur = con.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cur.description]
            for row in cur:
                for column, value in zip(columns, row, strict=True):
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    if isinstance(value, str):
                        hits += find(store, f"{table}.{column}", value, canaries)
        return hits
    finally:
        con.close()


class Extension:
    """The CloudStack extension executable, run as CloudStack runs it (see tests/cloudstack)."""

    def __init__(self, config: Path, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.outputs: list[tuple[str, str]] = []  # (what, stdout + stderr)

    def _run(self, argv: list[str], what: str, config: Path | None = None, timeout: float = 300) -> tuple[int, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "METALFLOW_CLOUDSTACK_CONFIG": str(config or self.config),
        }
        if "PYTHONPATH" in os.environ:  # a worktree's code (see docs on running a checkout)
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        exe = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "metalflow.integrations.cloudstack.extension"]
        proc = subprocess.run([*exe, *argv], env=env, cwd=self.workdir, capture_output=True, text=True, timeout=timeout)
        self.outputs.append((f"{what} stdout", proc.stdout))
        self.outputs.append((f"{what} stderr", proc.stderr))
        return proc.returncode, proc.stdout

    def call(self, action: str, doc: dict, wait: int = 240) -> tuple[int, dict]:
        path = write(self.workdir, doc, name=str(uuid.uuid4()))
        code, out = self._run([action, str(path), str(wait)], f"{action} {doc.get('virtualmachineid', '')}")
        lines = out.splitlines()
        assert len(lines) == 1, f"expected one JSON document, got {out!r}"
        return code, json.loads(lines[0])

    def check(self, config: Path) -> tuple[int, str]:
        return self._run(["check", "--config", str(config)], f"check {config.name}", config=config, timeout=120)


@pytest.fixture(scope="module")
def canary_stack(tmp_path_factory):
    """A stack of its own (its own loopback block, from 40: the e2e session's stack is at 30,
    the CloudStack one at 45), with the root hash canary in the environment of the runs."""
    home = Path(tmp_path_factory.mktemp("metalflow-canary"))
    root_hash = f"$6$Cnry{_b64(12)}${_b64(86)}"
    stack = Stack(
        home=home,
        api_url=f"http://127.0.0.1:{_free_port()}/api",
        hosts=len(HOSTS),
        switches=2,
        block=free_block(40),
        lab_args=("--deploy-seconds", "1", "--commission-seconds", "0.5", "--erase-seconds", "0.5"),
        serve_env={"CANARY_ROOT_HASH": root_hash, "METALFLOW_POWER_POLL_INTERVAL": "600"},
    )
    stack.start()
    try:
        yield stack, root_hash
    finally:
        stack.stop()


def test_no_canary_reaches_any_store_or_output(canary_stack):
    stack, root_hash = canary_stack
    e2e = E2E(stack)
    pasted = f"Pasted-Secret-{secrets.token_hex(8)}"
    prefect_pw = f"PrefectPw-{secrets.token_hex(8)}"
    db_pw = f"InventoryDbPw-{secrets.token_hex(8)}"
    canaries = Canaries.of(
        stack.manifest,
        {
            "root password hash": root_hash,
            "root hash salt": root_hash.split("$")[2],
            "secret pasted as a reference": pasted,
            "Prefect API URL password": prefect_pw,
            "inventory DB password": db_pw,
        },
    ).values

    # --- the flows, over the REST API as CloudStack's extension triggers them -------------------
    e2e.register(*HOSTS)
    vm = {
        "name": "canary-one",
        "uuid": "vm-canary-0001",
        "image": "ubuntu/jammy",
        "nics": [{"vlan": 101, "default": True}],
        "root_password_ref": "env:CANARY_ROOT_HASH",
    }
    run = e2e.run("provision", host="host-001", vm=vm)
    assert run.ok, run.message
    assert e2e.run("plug-nic", host="host-001", vlan=301).ok
    assert e2e.run("unplug-nic", host="host-001", vlan=301).ok
    # A provision the lab makes fail after the switch and MAAS were changed: rolled back.
    e2e.lab.control("POST", "/faults/maas", {"fail_next": "deploy"})
    failed = e2e.run("provision", host="host-002", vm={**vm, "name": "canary-two", "uuid": "vm-canary-0002"})
    assert not failed.ok and "rolled back" in failed.message, failed.message
    e2e.lab.reset_faults()
    assert e2e.run("destroy", host="host-001").ok
    assert e2e.run("destroy", host="host-002").ok

    # --- the CloudStack actions, through the extension executable -------------------------------
    assert e2e.run("power-poll", timeout=120).ok
    workdir = stack.home / "cloudstack"
    workdir.mkdir()
    inventory_url = json.loads((stack.home / "config.json").read_text())["inventory_url"]
    api_with_password = stack.api_url.replace("http://", f"http://canary:{prefect_pw}@", 1)
    config = workdir / "cloudstack.json"
    config.write_text(
        json.dumps(
            {
                "prefect_api_url": api_with_password,
                "inventory_url": inventory_url,
                "log_file": str(workdir / "extension.log"),
                "poll_interval": 0.3,
                "stop_soft_timeout": 3,
                # The operator lets tenants name the root hash this lab keeps for them.
                "tenant_secret_scope": ["env:CANARY_ROOT_"],
            }
        )
    )
    os.chmod(config, 0o600)
    ext = Extension(config, workdir)

    def guest() -> dict:
        return nic(0, "vlan://100", default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")

    # One VM through its life: prepare, create (root hash by reference), stop refused by the BMC, delete.
    vm_id = str(uuid.uuid4())
    vm_ext = {"image": "ubuntu/jammy", "vm_name": "canary-cs", "root_password_ref": "env:CANARY_ROOT_HASH"}
    code, prep = ext.call("prepare", payload("prepare", vm_id, cpus=2, ram=2 * GIB, nics=[guest()], vm_ext=vm_ext))
    assert code == 0, prep
    create_doc = after_prepare(payload("create", vm_id, nics=[guest()], vm_ext=vm_ext), prep)
    code, created = ext.call("create", create_doc)
    assert code == 0, created
    host = prep["details"]["External:metalflow_host"]
    later = {k[len("External:") :]: v for k, v in prep["details"].items()} | vm_ext
    e2e.lab.control("POST", f"/faults/bmc/{host}", {"mode": "reject_auth"})
    code, stopped = ext.call("stop", payload("stop", vm_id, vm_ext=later), wait=60)
    assert code == 1, stopped  # the BMC refused: a failure, answered
    e2e.lab.reset_faults()
    code, deleted = ext.call("delete", payload("delete", vm_id, vm_ext=later))
    assert code == 0, deleted

    # A VM whose root_password_ref detail is a secret pasted by mistake: refused, never quoted.
    vm2 = str(uuid.uuid4())
    vm2_ext = {"image": "ubuntu/jammy", "vm_name": "canary-pasted", "root_password_ref": pasted}
    # prepare checks the VM with provision's rules before it claims: refused there already
    code, prep2 = ext.call("prepare", payload("prepare", vm2, nics=[guest()], vm_ext=vm2_ext))
    assert code == 1 and "root_password_ref" in prep2["message"], prep2
    vm2_later = dict(vm2_ext, metalflow_host=host)  # as if a prepare had placed it: create refuses too
    code, answer = ext.call("create", payload("create", vm2, nics=[guest()], vm_ext=vm2_later))
    assert code == 1 and "root_password_ref" in answer["message"], answer
    runs = requests.post(
        f"{stack.api_url}/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [f"vm:{vm2}"]}}}, timeout=10
    )
    assert runs.json() == [], "refused at the edge: no run was started"
    # A payload that is not JSON, and an unknown action: failures answered in JSON too.
    bad = workdir / "bad.json"
    bad.write_text("{not json")
    assert ext._run(["create", str(bad), "30"], "create with a bad payload")[0] == 1

    # check: with the Prefect URL's password, and with a database password in the inventory URL.
    code, out = ext.check(config)
    assert "ok   configuration" in out, out
    pg_config = workdir / "cloudstack-pg.json"
    pg_config.write_text(
        json.dumps(
            {
                "prefect_api_url": api_with_password,
                "inventory_url": f"postgresql://metalflow:{db_pw}@127.0.0.1:9/inventory",
                "log_file": str(workdir / "extension.log"),
            }
        )
    )
    os.chmod(pg_config, 0o600)
    code, out = ext.check(pg_config)
    assert code == 1 and "FAIL inventory" in out, out

    # --- every store and output, once every log line has arrived --------------------------------
    time.sleep(2)  # the last runs' log batches (sent every 0.5 s)
    stack.stop()
    inventory_db = Path(inventory_url.removeprefix("sqlite:///"))
    prefect_dbs = sorted((stack.home / "prefect").glob("*.db"))
    assert prefect_dbs, f"no Prefect database under {stack.home / 'prefect'}"

    # The scanner finds what is there: a control canary written into the inventory on purpose...
    control = f"Control-Canary-{secrets.token_hex(8)}"
    con = sqlite3.connect(inventory_db)
    con.execute("CREATE TABLE canary_control (value TEXT)")
    con.execute("INSERT INTO canary_control VALUES (?)", (control,))
    con.commit()
    con.close()
    found = scan_sqlite("inventory", inventory_db, {**canaries, "control": control})
    assert [(h.where, h.canary) for h in found if h.canary == "control"] == [("canary_control.value", "control")]
    con = sqlite3.connect(inventory_db)
    con.execute("DROP TABLE canary_control")
    con.commit()
    con.close()
    # ... and reads the Prefect database (every run stores its parameters: the VM's name is there).
    assert any(
        h.where.startswith("flow_run.") for db in prefect_dbs for h in scan_sqlite("prefect", db, {"vm": "canary-one"})
    )

    hits = scan_sqlite("inventory", inventory_db, canaries)
    for db in prefect_dbs:
        hits += scan_sqlite(f"prefect {db.name}", db, canaries)
    logs = [stack.home / "serve.log", stack.home / "prefect" / "server.log", workdir / "extension.log"]
    for path in logs:
        if path.exists():
            hits += find("log file", str(path.relative_to(stack.home)), path.read_text(errors="replace"), canaries)
    for what, text in ext.outputs:
        hits += find("extension output", what, text, canaries)
    assert hits == [], "secrets found:\n" + "\n".join(str(h) for h in hits)
