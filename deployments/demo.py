"""``metalflow demo``: everything on one machine, one host's whole life over the REST API."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from metalflow.deployments.runtime import process_runtime
from metalflow.deployments.stack import Stack
from metalflow.integrations.common import Deadline
from metalflow.integrations.prefectapi import PrefectApi, idempotency_key
from metalflow.tasks.settings import metalflow_home


def run_demo(*, hosts: int, port: int, stay: bool, console: Console) -> int:
    """The demo, with this process's runtime built for it and closed when it ends."""
    with process_runtime("metalflow demo"):
        return _demo(hosts=hosts, port=port, stay=stay, console=console)


def _demo(*, hosts: int, port: int, stay: bool, console: Console) -> int:
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
