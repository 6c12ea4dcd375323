"""The CloudStack extension's end-to-end harness: its own stack (a Prefect server, a lab of four
hosts, metalflow served), every host registered and polled once, and the extension's
configuration file pointing at it. The executable is run as CloudStack runs it: a
subprocess ``metalflow-cloudstack <action> <payload.json> <wait_seconds>`` with nothing in
its environment but PATH, HOME and the configuration's path.

The e2e harness of tests/e2e is reused unchanged (``E2E``: trigger, wait, lab, inventory); the
stack is separate so these tests do not share hosts with the other end-to-end tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from metalflow.deployments.stack import Stack
from metalflow.integrations.common import Deadline
from metalflow.integrations.common.names import host_lock_name as lock_name
from tests.cloudstack.payloads import write
from tests.conftest import free_block
from tests.e2e.conftest import E2E, _free_port

HOSTS = 4
EXE = Path(sys.executable).with_name("metalflow-cloudstack")


@dataclass(frozen=True)
class Call:
    code: int
    answer: dict
    stdout: str

    @property
    def message(self) -> str:
        return str(self.answer.get("message", ""))


class CloudStackE2E:
    def __init__(self, e2e: E2E, config: Path, workdir: Path):
        self.e2e = e2e
        self.config = config
        self.workdir = workdir

    @property
    def lab(self):
        return self.e2e.lab

    @property
    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "METALFLOW_CLOUDSTACK_CONFIG": str(self.config),
        }
        if os.environ.get("PYTHONPATH"):  # the code under test, when it is not the installed one
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return env

    def argv(self, action: str, doc: dict, wait: int) -> list[str]:
        path = write(self.workdir, doc, name=str(uuid.uuid4()))  # <dataDir>/<extension>/<uuid>.json
        exe = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "metalflow.integrations.cloudstack.extension"]
        return [*exe, action, str(path), str(wait)]

    def call(self, action: str, doc: dict, wait: int = 240) -> Call:
        proc = subprocess.run(
            self.argv(action, doc, wait),
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=wait + 30,
        )
        return self._parse(proc.returncode, proc.stdout + proc.stderr)

    def spawn(self, action: str, doc: dict, wait: int = 240) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(action, doc, wait),
            env=self.env,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish(self, proc: subprocess.Popen, timeout: float = 270) -> Call:
        out, _ = proc.communicate(timeout=timeout)
        return self._parse(proc.returncode, out)

    @staticmethod
    def _parse(code: int, out: str) -> Call:
        lines = out.splitlines()
        assert len(lines) == 1, f"expected exactly one JSON document, got: {out!r}"
        return Call(code, json.loads(lines[0]), out)

    # --- reading the world -----------------------------------------------------------------
    def runs_for(self, vm_uuid: str) -> list[dict]:
        r = requests.post(
            f"{self.e2e.stack.api_url}/flow_runs/filter",
            json={"flow_runs": {"tags": {"all_": [f"vm:{vm_uuid}"]}}},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()

    def lock_held(self, host: str) -> bool:
        r = requests.get(f"{self.e2e.stack.api_url}/v2/concurrency_limits/{lock_name(host)}", timeout=10)
        return r.status_code == 200 and r.json()["active_slots"] > 0

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = Deadline(timeout)
        while True:
            value = predicate()
            if value:
                return value
            if deadline.expired():
                raise AssertionError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.2)

    def inventory(self):
        return self.e2e.inventory()

    def host(self, name: str) -> dict:
        return self.lab.host(name)

    def pxe_vlan(self) -> int:
        return self.e2e.stack.manifest["maas"]["pxe_vlan"]


@pytest.fixture(scope="session")
def cs(tmp_path_factory) -> CloudStackE2E:
    home = tmp_path_factory.mktemp("metalflow-cloudstack")
    stack = Stack(
        home=Path(home),
        api_url=f"http://127.0.0.1:{_free_port()}/api",
        hosts=HOSTS,
        switches=2,
        block=free_block(45),
        lab_args=(
            "--deploy-seconds",
            "1",
            "--commission-seconds",
            "0.5",
            "--erase-seconds",
            "0.5",
            "--node-timeout",
            "8",
        ),
        # The extension stores the state each operation verified; a poll every
        # 150 s (inside status's 180-s bound) spares the busy test machine.
        serve_env={"METALFLOW_POWER_POLL_INTERVAL": "150"},
    )
    stack.start()
    try:
        e2e = E2E(stack)
        runs = [e2e.trigger("register-host", host=f"host-{i:03d}") for i in range(1, HOSTS + 1)]
        for run in runs:
            done = e2e.wait(run.id, 240)
            assert done.ok, f"{done.name}: {done.message}"
        assert e2e.run("power-poll", timeout=120).ok
        inventory_url = json.loads((stack.home / "config.json").read_text())["inventory_url"]
        workdir = Path(home) / "cloudstack"
        workdir.mkdir()
        config = workdir / "cloudstack.json"
        config.write_text(
            json.dumps(
                {
                    "prefect_api_url": stack.api_url,
                    "inventory_url": inventory_url,
                    "log_file": str(workdir / "extension.log"),
                    "poll_interval": 0.3,
                    "stop_soft_timeout": 3,
                }
            )
        )
        os.chmod(config, 0o600)
        yield CloudStackE2E(e2e, config, workdir)
    finally:
        stack.stop()


@pytest.fixture
def clean(cs):
    """Faults off and no claim left behind by a test, whatever it did."""
    cs.lab.reset_faults()
    yield cs
    cs.lab.reset_faults()
    inv = cs.inventory()
    for claim in inv.claims.all():
        inv.claims.release(claim.vm_uuid)
    inv.dispose()


# --- the lab's CloudStack driving the real executable (issue 17) --------------------------------

#: The lifecycle tests' extension configuration: a lease short enough to wait out.
LEASE_SECONDS = 6


@pytest.fixture
def cloud(clean, tmp_path):
    """A factory of lab CloudStacks (``metalflow.lab.cloudstack``) driving the real
    ``metalflow-cloudstack`` as 4.22 does: Gson payload files, ``action file wait``, stderr
    merged, killed at the wait, prepare + create with retries and cleanup stops, expunge without
    delete for a VM that never started. One CloudStack host (the MAAS pool: the planner always
    picks it, as in a one-host pool); networks guest (VLAN 100), extra (150), extra2 (160);
    templates jammy and nosuch; the three custom actions with their own timeout. Every VM left
    is destroyed afterwards and every host taken out of maintenance."""
    from metalflow.lab.cloudstack import CloudStack, Config, Extension, Parameter

    cs = clean
    config = cs.workdir / "lifecycle.json"
    doc = json.loads(cs.config.read_text())
    doc.update({"lease_seconds": LEASE_SECONDS, "create_failure_limit": 2})
    config.write_text(json.dumps(doc))
    os.chmod(config, 0o600)
    made: list = []

    def make(*, start_retry: int = 4, wait: int = 240, name: str = "cs") -> CloudStack:
        env = {"METALFLOW_CLOUDSTACK_CONFIG": str(config)}
        ext = Extension(name="metalflow", path=str(EXE), env=env, requires_prepare=True)
        cloud = CloudStack(tmp_path / name, Config(extension=ext, version="4.22", start_retry=start_retry, wait=wait))
        cloud.add_host("maas-pool")
        cloud.add_network("guest", 100)
        cloud.add_network("extra", 150)
        cloud.add_network("extra2", 160)
        cloud.add_template("jammy", {"image": "ubuntu/jammy"})
        cloud.add_template("nosuch", {"image": "ubuntu/nosuch"})
        cloud.add_action("PlugNetwork", [Parameter("vlan", "NUMBER", True)], 240)
        cloud.add_action("UnplugNetwork", [Parameter("vlan", "NUMBER", True)], 240)
        cloud.add_action("Reinstall", [Parameter("image", "STRING", False)], 300)
        made.append(cloud)
        return cloud

    yield make
    cs.lab.reset_faults()
    for cloud in made:
        for vm in cloud.vms():
            cloud.destroy(vm.uuid)
    inv = cs.inventory()
    for host in inv.hosts.all():
        if host.maintenance:
            inv.power.set_maintenance(host.name, False)
    inv.dispose()
