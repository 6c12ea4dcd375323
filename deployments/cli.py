"""The ``metalflow`` command."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metalflow.integrations.common import scrub
from metalflow.lab.cli import app as lab_app

app = typer.Typer(help="metalflow: bare-metal provisioning for Apache CloudStack, on Prefect.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
console = Console()


def _fail(message: str, code: int = 1) -> None:
    message = scrub(message)  # an error may quote a URL with its password, or a loaded secret
    console.print(f"[red]{message}[/red]")
    raise typer.Exit(code)


@app.command()
def serve(
    schedules: bool = typer.Option(True, help="Run power-poll and audit on their schedules."),
    limit: int | None = typer.Option(None, help="At most this many runs at once."),
    isolated: bool = typer.Option(
        False,
        help="Run each flow run in a subprocess of its own (Prefect's serve) instead of a thread of this process.",
    ),
) -> None:
    """Serve every deployment (<flow>/metalflow) against PREFECT_API_URL until interrupted."""
    from metalflow.deployments.registry import serve_all

    serve_all(schedules=schedules, limit=limit, isolated=isolated)


@app.command()
def deploy(
    pool: str = typer.Option("metalflow", help="Process work pool (made if missing)"),
    schedules: bool = typer.Option(True, help="Register power-poll and audit with their schedules."),
    crash_after: float = typer.Option(
        600.0,
        help="Mark a run Crashed after this many seconds without a "
        "heartbeat (a worker died); at least 3 heartbeat intervals of "
        "every runner (Prefect's default interval: 180 s). 0: no automation.",
    ),
) -> None:
    """Register every deployment (<flow>/metalflow) on a process work pool for `metalflow worker`s."""
    from metalflow.deployments.workers import deploy_all

    try:
        ids = deploy_all(pool=pool, schedules=schedules, crash_after=crash_after or None)
    except ValueError as exc:
        _fail(str(exc), 2)
    console.print(f"{len(ids)} deployments on work pool [bold]{pool}[/bold]: {', '.join(sorted(ids))}")
    if crash_after:
        console.print(f"runs without a heartbeat for {crash_after:.0f} s are marked Crashed")


@app.command()
def worker(
    pool: str = typer.Option("metalflow", help="Work pool to pull runs from"),
    name: str | None = typer.Option(None, help="Worker name (default: Prefect's, from the host name)"),
    limit: int | None = typer.Option(
        None, help="At most this many runs at once on this machine (each run is a process of about 90 MB)"
    ),
) -> None:
    """Run a Prefect process worker for metalflow's pool (`prefect worker start`), with a short
    poll interval and the flow-run heartbeats the crash automation watches. This process
    becomes the worker (``exec``); each flow run is a process of its own that gets its runtime
    on first use (``deployments.runtime``)."""
    from metalflow.deployments.workers import worker_command, worker_env

    cmd = worker_command(pool, name=name, limit=limit)
    console.print(" ".join(cmd))
    os.execvpe(cmd[0], cmd, worker_env())


@app.command("setup-lab")
def setup_lab_cmd(manifest: Path | None = typer.Option(None, "--manifest", "-m")) -> None:
    """Point metalflow at a running lab: secrets, settings and the inventory."""
    from metalflow.deployments.labsetup import setup_lab
    from metalflow.lab.cli import default_manifest

    summary = setup_lab(manifest or default_manifest())
    console.print(
        f"inventory: {summary.changes} changes; "
        f"settings in {os.environ.get('METALFLOW_HOME', '~/.metalflow')}/config.json"
    )


def _parse_params(pairs: list[str]) -> dict:
    params: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f'--param {pair!r}: write it as key=value (value may be JSON, e.g. vm=\'{{"name": "web-01"}}\')', 2)
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


@app.command()
def trigger(
    flow: str = typer.Argument(..., help="Flow name, e.g. provision (deployment <flow>/metalflow)"),
    param: list[str] = typer.Option([], "--param", "-p", help="key=value; JSON values allowed"),
    key: str | None = typer.Option(None, help="Idempotency key (default: derived from flow and parameters)"),
    wait: bool = typer.Option(True, help="Wait for the run's final state"),
    timeout: float = typer.Option(3600, help="How long to wait"),
) -> None:
    """Start a run through the Prefect REST API (idempotent, retries 503s)."""
    from metalflow.integrations.common import Deadline
    from metalflow.integrations.prefectapi import PrefectApi, PrefectApiError, idempotency_key

    params = _parse_params(param)
    api = PrefectApi()
    deployment = flow if "/" in flow else f"{flow}/metalflow"
    try:
        run = api.create_flow_run(
            deployment, params, idempotency_key=key or idempotency_key(deployment, json.dumps(params, sort_keys=True))
        )
        console.print(f"run [bold]{run.name}[/bold] ({run.id}): {run.state_name}")
        if wait:
            with console.status(f"waiting for {run.name}..."):
                run = api.wait(run.id, Deadline(timeout))
            console.print(f"{run.name}: [bold]{run.state_name}[/bold] {run.message}")
    except PrefectApiError as exc:
        _fail(str(exc))
    if wait and not run.ok:
        raise typer.Exit(1)


@app.command()
def register(
    names: list[str] = typer.Argument(None, help="Inventory host names (default: every host not yet in MAAS)"),
    all_hosts: bool = typer.Option(False, "--all", help="Every host in the inventory, registered or not"),
    timeout: float = typer.Option(3600, help="How long to wait for all of them"),
) -> None:
    """Register hosts with MAAS (adopt or enlist and commission), one register-host run each,
    with a progress bar; the runs go in parallel, each host under its own lock."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metalflow.integrations.common import Deadline
    from metalflow.integrations.prefectapi import PrefectApi, PrefectApiError, idempotency_key
    from metalflow.tasks.clients import inventory

    if not names:
        names = [h.name for h in inventory().hosts.all() if all_hosts or not h.maas_system_id]
    if not names:
        console.print("every host is registered already (use --all to run register-host on each anyway)")
        return
    api = PrefectApi()
    stamp = str(int(time.time()))
    try:
        runs = {
            n: api.create_flow_run(
                "register-host/metalflow", {"host": n}, idempotency_key=idempotency_key("register", n, stamp)
            )
            for n in names
        }
    except PrefectApiError as exc:
        _fail(str(exc))
    deadline = Deadline(timeout)
    failed: list[str] = []
    columns = (
        TextColumn("register-host"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("", total=len(runs))
        pending = dict(runs)
        while pending and not deadline.expired():
            for n, run in list(pending.items()):
                run = api.read_flow_run(run.id)
                if run.final:
                    del pending[n]
                    progress.advance(bar)
                    if not run.ok:
                        failed.append(f"{n}: {run.state_name} {run.message}")
                    progress.update(bar, description=f"{n} {run.state_name.lower()}")
            deadline.sleep(1.0)
    for line in failed:
        console.print(f"[red]{line}[/red]", markup=False)
    if failed or pending:
        if pending:
            console.print(f"still running after {timeout:.0f} s: {', '.join(pending)}")
        raise typer.Exit(1)


@app.command()
def hosts() -> None:
    """The inventory: hosts, their MAAS machine, VM, power state and its age, maintenance."""
    from metalflow.tasks.clients import inventory

    now = datetime.now(UTC)
    t = Table("host", "CloudStack id", "MAAS", "VM", "power", "age", "maintenance")
    for h in inventory().hosts.all():
        age = f"{(now - h.power_state_at).total_seconds():.0f} s" if h.power_state_at else "never"
        t.add_row(
            h.name,
            h.cloudstack_id or "",
            h.maas_system_id or "-",
            h.last_vm_name or "-",
            h.power_state,
            age,
            f"yes: {h.maintenance_reason}" if h.maintenance else "",
        )
    console.print(t)


@app.command()
def events(host: str, limit: int = typer.Option(50)) -> None:
    """A host's event journal, newest first."""
    from metalflow.tasks.clients import inventory

    t = Table("time", "operation", "step", "system", "outcome", "detail")
    for e in inventory().history.events(host, limit=limit):
        t.add_row(e.at.strftime("%H:%M:%S"), e.operation, e.step, e.system, e.outcome, (e.detail or "")[:80])
    console.print(t)


@app.command()
def demo(
    hosts_: int = typer.Option(4, "--hosts", help="Lab hosts"),
    port: int = typer.Option(4200, help="Prefect server port (an existing server there is used)"),
    stay: bool = typer.Option(True, help="Keep everything up after the demo until Ctrl-C"),
) -> None:
    """The main job on the embedded default: a local Prefect server, the lab, metalflow served,
    then register, provision, stop, start, plug-nic and destroy triggered over the REST API."""
    from metalflow.deployments.demo import run_demo

    code = run_demo(hosts=hosts_, port=port, stay=stay, console=console)
    raise typer.Exit(code)


def wait_forever() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.5)


if __name__ == "__main__":
    app()
