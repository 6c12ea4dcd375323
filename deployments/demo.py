"""``metalflow demo``: everything on one machine, one host's whole life over the REST API, or
(``--via cloudstack``) one VM's whole life through the lab's CloudStack, which drives the real
``metalflow-cloudstack`` executable exactly as CloudStack 4.22 does."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from metalflow.deployments.runtime import process_runtime
from metalflow.deployments.stack import Stack
from metalflow.integrations.common import Deadline
from metalflow.integrations.prefectapi import PrefectApi, idempotency_key
from metalflow.tasks.settings import metalflow_home


def run_demo(*, hosts: int, port: int, stay: bool, console: Console, via: str = "api") -> int:
    """The demo, with this process's runtime built for it and closed when it ends."""
    with process_runtime("metalflow demo"):
        return _demo(hosts=hosts, port=port, stay=stay, console=console, via=via)


def _demo(*, hosts: int, port: int, stay: bool, console: Console, via: str = "api") -> int:
    home = metalflow_home() / "demo"
    stack = Stack(home=home, api_url=f"http://127.0.0.1:{port}/api", hosts=hosts, switches=2, block=0)
    steps: list[tuple[str, str, str, float]] = []
    try:
        with console.status("starting the Prefect server (about 10 s the first time)..."):
            server = stack.start_server()
        console.print(f"Prefect server: {server.ui_url}")
        with console.status("starting the lab (MAAS, BMCs, switches)..."):
            manifest = stack.start_lab()
        console.print(
            f"lab: {hosts} hosts, MAAS {manifest['maas']['url']}, switches "
            + ", ".join(f"{s['name']} ({s['type']})" for s in manifest["switches"])
        )
        with console.status("importing the lab into metalflow's inventory..."):
            summary = stack.setup()
        console.print(f"inventory: {summary.changes} changes")
        with console.status("serving the deployments..."):
            stack.start_serve()
        api = PrefectApi(stack.api_url)
        host = manifest["hosts"][1 if hosts > 1 else 0]  # a two-NIC host: the bond is shown too
        name = host["name"]
        if via == "cloudstack":
            return _via_cloudstack(stack, api, console=console, stay=stay)
        vm = {
            "name": "web-01",
            "uuid": "demo-vm-0001",
            "image": "ubuntu/jammy",
            "nics": [{"vlan": 100, "default": True}],
            "owner": {"account": "acct-1", "domain": "dom-1", "project": ""},
            "ssh_keys": [],
        }
        plan = [
            ("register-host", {"host": name}),
            ("provision", {"host": name, "vm": vm}),
            ("stop", {"host": name}),
            ("start", {"host": name}),
            ("plug-nic", {"host": name, "vlan": 200}),
            ("destroy", {"host": name}),
        ]
        stamp = str(int(time.time()))
        for flow, params in plan:
            t0 = time.monotonic()
            run = api.create_flow_run(f"{flow}/metalflow", params, idempotency_key=idempotency_key("demo", stamp, flow))
            with console.status(f"{run.name}..."):
                run = api.wait(run.id, Deadline(600))
            steps.append((run.name, run.state_name, run.message, time.monotonic() - t0))
            colour = "green" if run.ok else "red"
            console.print(f"[{colour}]{run.state_name:>9}[/{colour}]  {run.name}  ({time.monotonic() - t0:.1f} s)")
            if not run.ok:
                console.print(f"           {run.message}")
                break
        table = Table(title="metalflow demo", show_lines=False)
        table.add_column("run")
        table.add_column("state")
        table.add_column("seconds", justify="right")
        for run_name, state, _, secs in steps:
            table.add_row(run_name, state, f"{secs:.1f}")
        console.print(table)
        ok = len(steps) == len(plan) and all(s[1] == "Completed" for s in steps)
        ui = server.ui_url
        console.print(f"\nPrefect UI: [bold]{ui}/runs[/bold] (every run, its tasks, logs and the report artifact)")
        console.print(f"Lab state:  metalflow lab state --manifest {stack.manifest_path}")
        console.print(f"Inventory:  METALFLOW_HOME={home} metalflow hosts   |   metalflow events {name}")
        if stay:
            console.print(
                "Everything stays up: explore the UI, rerun runs, trigger more "
                "(PREFECT_API_URL=" + stack.api_url + " metalflow trigger ...). Ctrl-C to stop."
            )
            from metalflow.deployments.cli import wait_forever

            wait_forever()
        return 0 if ok else 1
    finally:
        with console.status("stopping..."):
            stack.stop()


# ---------------------------------------------------------------------------- --via cloudstack


@dataclass(frozen=True)
class Step:
    """One CloudStack operation of the demo: what CloudStack asked, what the extension was
    called with (action, exit code or Timeout, seconds each) and the VM's state after."""

    operation: str
    ok: bool
    vm_state: str
    calls: str
    seconds: float
    error: str = ""
    machine: str = ""  # the machine as the lab sees it afterwards: power and the ports' VLANs
    shown: object = None  # a custom action's message as CloudStack's UI renders it (None: nothing)


def extension_executable() -> Path:
    """``metalflow-cloudstack`` beside this interpreter (the venv's console script)."""
    return Path(sys.executable).with_name("metalflow-cloudstack")


def cloudstack_life(
    stack: Stack,
    workdir: Path,
    *,
    tell: Callable[[Step], None] | None = None,
    vm_name: str = "web-01",
    details: Mapping[str, str] | None = None,
    ssh_public_key: str | None = None,
) -> list[Step]:
    """One VM's whole life through the lab's CloudStack (``metalflow.lab.cloudstack``) and the
    real extension, on a running stack whose hosts are registered and polled: deploy on two
    networks (prepare + create), stop, the NICs changed while stopped (one removed, one added),
    start (the ports follow), a status ping, PlugNetwork (a custom action), destroy (stop +
    delete). ``details`` are the deploy's extra externaldetails (a pin, an architecture).
    Stops at the first failure."""
    from metalflow.lab.cloudstack import CloudStack, Config, Extension, Parameter

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "metalflow-cloudstack.json"
    inventory_url = json.loads((stack.home / "config.json").read_text())["inventory_url"]
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "prefect_api_url": stack.api_url,
                "inventory_url": inventory_url,
                "log_file": str(workdir / "metalflow-cloudstack.log"),
                "poll_interval": 0.5,
            },
            f,
        )
    ext = Extension(
        name="metalflow",
        path=str(extension_executable()),
        env={"METALFLOW_CLOUDSTACK_CONFIG": str(config)},
        requires_prepare=True,
    )
    cloud = CloudStack(workdir / "cloudstack", Config(extension=ext, version="4.22"), reset=True)
    cloud.add_host("maas-pool")
    cloud.add_network("guest", 100)
    cloud.add_network("storage", 200)
    cloud.add_network("backup", 300)
    cloud.add_template("ubuntu-jammy", {"image": "ubuntu/jammy"})
    cloud.add_action("PlugNetwork", [Parameter("vlan", "NUMBER", True)], 600)

    vm_uuid = ""
    plan: list[tuple[str, Callable[[], object]]] = [
        (
            f"deploy {vm_name} on guest (VLAN 100) and storage (VLAN 200)",
            lambda: cloud.deploy(
                vm_name,
                "ubuntu-jammy",
                ["guest", "storage"],
                cpus=2,
                ram_mb=2048,
                details={"vm_name": vm_name, **(details or {})},
                ssh_public_key=ssh_public_key,
            ),
        ),
        (f"stop {vm_name}", lambda: cloud.stop(vm_uuid)),
        (f"remove NIC storage from the stopped {vm_name}", lambda: cloud.remove_nic(vm_uuid, "storage")),
        (f"add NIC backup (VLAN 300) to the stopped {vm_name}", lambda: cloud.add_nic(vm_uuid, "backup")),
        (f"start {vm_name}", lambda: cloud.start(vm_uuid)),
        ("status ping", lambda: cloud.ping()),
        (f"PlugNetwork vlan=400 on {vm_name}", lambda: cloud.run_action(vm_uuid, "PlugNetwork", {"vlan": 400})),
        (f"destroy {vm_name}", lambda: cloud.destroy(vm_uuid)),
    ]
    control = str(stack.manifest["lab"]["control_url"]).rstrip("/")

    def machine() -> str:
        record = next((v for v in cloud.vms() if v.uuid == vm_uuid), None)
        name = record.details.get("External:metalflow_host") if record is not None else None
        if not name:
            return ""
        with urllib.request.urlopen(f"{control}/hosts/{name}", timeout=10) as resp:
            hw = json.loads(resp.read())
        port = hw["ports"][0]
        tagged = ",".join(map(str, port["tagged"])) or "-"
        return f"{name}: {hw['power']}, untagged {port['untagged']}, tagged {tagged}"

    steps: list[Step] = []
    for operation, do in plan:
        t0 = time.monotonic()
        result = do()
        seconds = time.monotonic() - t0
        if isinstance(result, dict):  # a ping: {vm uuid: power state}
            state = result.get(vm_uuid, "-")
            step = Step(operation, state in ("PowerOn", "PowerOff"), state, "status", seconds, machine=machine())
        else:
            vm_uuid = vm_uuid or str(getattr(result, "vm", "") or "")
            calls = ", ".join(
                f"{c.action}={'Timeout' if c.timed_out else c.exit_code}" for c in getattr(result, "calls", [])
            )
            step = Step(
                operation,
                bool(getattr(result, "success", False)),
                str(getattr(result, "state", None) or "expunged"),
                calls or "none",
                seconds,
                str(getattr(result, "error", "") or ""),
                machine(),
                getattr(result, "ui_message", None),
            )
        steps.append(step)
        if tell is not None:
            tell(step)
        if not step.ok:
            break
    return steps


def _via_cloudstack(stack: Stack, api: PrefectApi, *, console: Console, stay: bool) -> int:
    hosts = [h["name"] for h in stack.manifest["hosts"][:2]]
    stamp = str(int(time.time()))
    for name in hosts:
        run = api.create_flow_run(
            "register-host/metalflow", {"host": name}, idempotency_key=idempotency_key("demo-cs", stamp, name)
        )
        with console.status(f"{run.name}..."):
            run = api.wait(run.id, Deadline(600))
        console.print(f"[{'green' if run.ok else 'red'}]{run.state_name:>9}[/]  {run.name}")
        if not run.ok:
            console.print(f"           {run.message}")
            return 1
    poll = api.create_flow_run("power-poll/metalflow", {}, idempotency_key=idempotency_key("demo-cs", stamp, "poll"))
    with console.status("power-poll (the pool hands out only machines whose power state is known)..."):
        poll = api.wait(poll.id, Deadline(600))

    def tell(step: Step) -> None:
        colour = "green" if step.ok else "red"
        console.print(
            f"[{colour}]{'ok' if step.ok else 'FAILED':>6}[/{colour}]  {step.operation}  → {step.vm_state}  "
            f"[dim](extension: {step.calls}; {step.seconds:.1f} s)[/dim]  {step.machine}"
        )
        if step.error:
            console.print(f"        {step.error}", markup=False)

    workdir = stack.home / "cloudstack-demo"
    console.print(
        "CloudStack (the lab's, 4.22) drives the real metalflow-cloudstack: payload files, "
        "action file wait, retries with cleanup stops, NIC changes while stopped"
    )
    with console.status("CloudStack at work..."):
        steps = cloudstack_life(stack, workdir, tell=tell)
    ok = len(steps) == 8 and all(s.ok for s in steps)
    table = Table(title="metalflow demo --via cloudstack")
    for column in ("CloudStack operation", "VM state", "extension calls", "seconds", "the machine after"):
        table.add_column(column)
    for s in steps:
        table.add_row(s.operation, s.vm_state, s.calls, f"{s.seconds:.1f}", s.machine)
    console.print(table)
    console.print(
        f"\nPrefect UI: [bold]{stack.api_url.removesuffix('/api')}/runs[/bold] (the runs the extension started)"
    )
    console.print(f"Every call CloudStack made: metalflow lab cloudstack calls --state-dir {workdir / 'cloudstack'}")
    console.print(f"The extension's log:       {workdir / 'metalflow-cloudstack.log'}")
    if stay:
        from metalflow.deployments.cli import wait_forever

        console.print("Everything stays up. Ctrl-C to stop.")
        wait_forever()
    return 0 if ok else 1
