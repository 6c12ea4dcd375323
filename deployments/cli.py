"""The ``metalflow`` command.

It fails like a command line tool: an error is one line of plain text on stderr (never read
as rich markup, so ``--param '[/red]'`` is just text), no traceback unless ``--debug``, and
the exit code says whose fault it was:

- 0: done;
- 1: a system failed or the run did not succeed (Prefect API, inventory, MAAS, a failed run);
- 2: bad input (an option, a ``--param``, a host name): refused before any API call.

Every value echoed back (run names and messages, inventory fields) is printed as text, not
as markup.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from metalflow.integrations.common import scrub
from metalflow.integrations.common.values import BadValue, parse_hostname, parse_ident
from metalflow.lab.cli import app as lab_app

#: Exit codes (see the module docstring).
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2

console = Console()
errors = Console(stderr=True)


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line of plain text on stderr, then exit with ``code``. Scrubbed: an error may
    quote a URL with its password, or a loaded secret."""
    message = scrub(message)
    errors.print(message, markup=False, highlight=False, emoji=False, soft_wrap=True, style="red")
    raise typer.Exit(code)


@dataclass(frozen=True)
class Options:
    """The global options (``metalflow --debug trigger ...``), on the click context."""

    debug: bool = False


class _Group(TyperGroup):
    """Turns an unexpected exception into one line and an exit code, unless ``--debug``."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own: usage errors, exit codes
            raise
        except Exception as exc:
            if isinstance(ctx.obj, Options) and ctx.obj.debug:
                raise
            from metalflow.integrations.inventory import HostNotFound

            bad_input = isinstance(exc, (BadValue, HostNotFound))
            text = " ".join(str(exc).split()) or type(exc).__name__
            hint = "" if bad_input else " (run with --debug for the traceback)"
            _fail(f"{text}{hint}", EXIT_BAD_INPUT if bad_input else EXIT_FAILED)


app = typer.Typer(
    cls=_Group,
    help="metalflow: bare-metal provisioning for Apache CloudStack, on Prefect. "
    "Exit codes: 0 done, 1 a system failed or the run did not succeed, 2 bad input (nothing was started).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(lab_app, name="lab")


@app.callback()
def main(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an unexpected error."),
) -> None:
    ctx.obj = Options(debug=debug)


def _bad(exc: BadValue) -> NoReturn:
    _fail(str(exc), EXIT_BAD_INPUT)


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
    from metalflow.deployments.workers import HEARTBEAT_SECONDS

    # Heartbeats every 30 s, as on `metalflow worker`, before Prefect is imported (it reads
    # its settings once): the crash automation takes 3 missed ones for a dead runner.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS))
    from metalflow.deployments.registry import serve_all

    serve_all(schedules=schedules, limit=limit, isolated=isolated)


@app.command()
def deploy(
    pool: str = typer.Option("metalflow", help="Process work pool (made if missing)"),
    schedules: bool = typer.Option(True, help="Register power-poll and audit with their schedules."),
    crash_after: float = typer.Option(
        60.0,
        help="Mark a metalflow run Crashed after this many seconds without a heartbeat (its "
        "worker died); 2 heartbeats of `metalflow worker` (30 s each). Workers started otherwise "
        "need PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30. 0: no crash automation.",
    ),
) -> None:
    """Register every deployment (<flow>/metalflow) on a process work pool for `metalflow worker`s."""
    from metalflow.deployments.workers import deploy_all

    try:
        ids = deploy_all(pool=pool, schedules=schedules, crash_after=crash_after or None)
    except ValueError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    console.print(f"{len(ids)} deployments on work pool [bold]{escape(pool)}[/bold]: {escape(', '.join(sorted(ids)))}")
    if crash_after:
        console.print(f"metalflow runs without a heartbeat for {crash_after:.0f} s are marked Crashed")
    console.print("a run marked Crashed starts recover: its host lock released, its rollback finished")


@app.command()
def worker(
    pool: str = typer.Option("metalflow", help="Work pool to pull runs from"),
    name: str | None = typer.Option(None, help="Worker name (default: Prefect's, from the host name)"),
    limit: int | None = typer.Option(
        None, help="At most this many runs at once on this machine (each run is a process of about 90 MB)"
    ),
) -> None:
    """Run a Prefect process worker for metalflow's pool (`prefect worker start`), with a short
    poll interval and the flow-run heartbeats the crash automation watches; each flow run is a
    process of its own that gets its runtime on first use (``deployments.runtime``).

    Ctrl-C or SIGTERM stops it cleanly: no new runs at once, running ones finish for
    ``worker_stop_grace`` seconds (METALFLOW_WORKER_STOP_GRACE, 600), then roll back
    (``worker_rollback_grace``, 300); a second Ctrl-C skips the wait."""
    from metalflow.deployments.workers import supervise, worker_command, worker_env
    from metalflow.tasks.settings import settings

    cmd = worker_command(pool, name=name, limit=limit)
    console.print(" ".join(cmd), markup=False)
    cfg = settings()
    raise typer.Exit(
        supervise(
            cmd,
            worker_env(),
            stop_grace=cfg.worker_stop_grace,
            rollback_grace=cfg.worker_rollback_grace,
            say=lambda text: console.print(text, markup=False),
        )
    )


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


def _flow_named(deployment: str) -> Any:
    """The flow object behind ``<flow>/<deployment>``: its signature is what the run will
    validate the parameters against."""
    from metalflow.deployments.registry import flows_by_name

    flows = flows_by_name()
    name = deployment.partition("/")[0]
    if name not in flows:
        raise BadValue("flow", f"no metalflow flow named {name!r}: use one of {', '.join(sorted(flows))}")
    return flows[name]


@app.command()
def trigger(
    flow: str = typer.Argument(..., help="Flow name, e.g. provision (deployment <flow>/metalflow)"),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        help='key=value; a value that looks like JSON ({, [, ", a digit, -, true/false/null) must be JSON. '
        "Checked against the flow's parameters before anything is sent.",
    ),
    key: str | None = typer.Option(None, help="Idempotency key (default: derived from flow and parameters)"),
    wait: bool = typer.Option(True, help="Wait for the run's final state"),
    timeout: float = typer.Option(3600, min=0, help="How long to wait"),
) -> None:
    """Start a run through the Prefect REST API (idempotent, retries 503s). Bad parameters
    are refused (exit 2) before any API call: no run is created."""
    from metalflow.deployments.params import parse_params, validate_params
    from metalflow.integrations.common import Deadline
    from metalflow.integrations.prefectapi import PrefectApi, PrefectApiError, idempotency_key

    deployment = flow if "/" in flow else f"{flow}/metalflow"
    try:
        target = _flow_named(deployment)
        params = validate_params(target, parse_params(param, target))
    except BadValue as exc:
        _bad(exc)
    api = PrefectApi()
    try:
        run = api.create_flow_run(
            deployment, params, idempotency_key=key or idempotency_key(deployment, json.dumps(params, sort_keys=True))
        )
        console.print(Text.assemble("run ", (run.name, "bold"), f" ({run.id}): {run.state_name}"))
        if wait:
            with console.status(f"waiting for {escape(run.name)}..."):
                run = api.wait(run.id, Deadline(timeout))
            console.print(Text.assemble(f"{run.name}: ", (run.state_name, "bold"), f" {run.message}"))
    except PrefectApiError as exc:
        _fail(str(exc))
    if wait and not run.ok:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def register(
    names: list[str] = typer.Argument(None, help="Inventory host names (default: every host not yet in MAAS)"),
    all_hosts: bool = typer.Option(False, "--all", help="Every host in the inventory, registered or not"),
    timeout: float = typer.Option(3600, min=0, help="How long to wait for all of them"),
) -> None:
    """Register hosts with MAAS (adopt or enlist and commission), one register-host run each,
    with a progress bar; the runs go in parallel, each host under its own lock."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from metalflow.integrations.common import Deadline
    from metalflow.integrations.prefectapi import PrefectApi, PrefectApiError, idempotency_key
    from metalflow.tasks.clients import inventory

    try:
        names = [parse_hostname(n, "NAMES") for n in names or []]
    except BadValue as exc:
        _bad(exc)
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
                    progress.update(bar, description=escape(f"{n} {run.state_name.lower()}"))
            deadline.sleep(1.0)
    for line in failed:
        errors.print(line, markup=False, highlight=False, soft_wrap=True, style="red")
    if failed or pending:
        if pending:
            errors.print(f"still running after {timeout:.0f} s: {', '.join(pending)}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)


@app.command()
def hosts() -> None:
    """The inventory: hosts, their MAAS machine, VM, power state and its age, maintenance."""
    from metalflow.tasks.clients import inventory

    now = datetime.now(UTC)
    t = Table("host", "CloudStack id", "MAAS", "VM", "power", "age", "maintenance")
    inv = inventory()
    left: dict[str, list[str]] = {}
    for u in inv.undos.left():  # what a run that died left half-done: recover finishes it
        left.setdefault(u.host, []).append(u.label + (" (failed)" if u.state == "failed" else ""))
    for h in inv.hosts.all():
        age = f"{(now - h.power_state_at).total_seconds():.0f} s" if h.power_state_at else "never"
        t.add_row(
            *(
                Text(cell)
                for cell in (
                    h.name,
                    h.cloudstack_id or "",
                    h.maas_system_id or "-",
                    h.last_vm_name or "-",
                    h.power_state,
                    age,
                    "; ".join(
                        ([f"yes: {h.maintenance_reason}"] if h.maintenance else [])
                        + ([f"undo records: {', '.join(left[h.name])}"] if h.name in left else [])
                    ),
                )
            )
        )
    console.print(t)


@app.command()
def claims(
    release: str | None = typer.Option(
        None, "--release", metavar="VM_UUID", help="Release this VM's claim (a lease or a provisioning claim)."
    ),
    force: bool = typer.Option(False, "--force", help="With --release: release a placement too (the VM is gone)."),
) -> None:
    """Placement claims: the machine each CloudStack VM holds, as a lease (prepare), a
    provisioning claim (a create's run) or a placement (installed), with its age and expiry."""
    from metalflow.tasks.clients import inventory

    inv = inventory()
    if release is not None:
        try:
            vm = parse_ident(release, "--release", "a VM uuid")
        except BadValue as exc:
            _bad(exc)
        claim = inv.claims.for_vm(vm)
        if claim is None:
            _fail(f"VM {vm} holds no claim", EXIT_BAD_INPUT)
        if claim.state == "placed" and not force:
            _fail(
                f"VM {vm} is installed on {claim.host} (a placement): destroy the VM instead, "
                "or add --force if it no longer exists in CloudStack",
                EXIT_BAD_INPUT,
            )
        inv.claims.release(vm)
        inv.history.append(
            claim.host, "claims", None, "released by hand", "inventory", "ok", f"VM {vm} ({claim.state})"
        )
        console.print(f"released {claim.host} ({claim.state} claim of VM {vm})")
        return
    now = datetime.now(UTC)
    t = Table("host", "VM uuid", "VM name", "state", "age", "expires")
    for c in inv.claims.all():
        if c.expires_at is None:
            expires = "never"
        else:
            left = (c.expires_at - now).total_seconds()
            expires = f"in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        age = f"{(now - c.claimed_at).total_seconds():.0f} s"
        t.add_row(*(Text(cell) for cell in (c.host, c.vm_uuid, c.vm_name or "-", c.state, age, expires)))
    console.print(t)


@app.command()
def maintenance(
    host: str,
    off: bool = typer.Option(False, "--off", help="Take the host out of maintenance (an operator cleared it)."),
    reason: str | None = typer.Option(None, "--reason", help="Why the host goes into maintenance."),
) -> None:
    """Put a host into maintenance (no prepare hands it out; provision refuses it) or take it
    out: also how a machine held after repeated failed provisions is cleared."""
    from metalflow.tasks.clients import inventory

    try:
        key = parse_ident(host, "HOST", "a host name or CloudStack id")
    except BadValue as exc:
        _bad(exc)
    if not off and not reason:
        _fail("say why with --reason, or clear maintenance with --off", EXIT_BAD_INPUT)
    inv = inventory()
    before = inv.hosts.get(key)
    after = inv.power.set_maintenance(key, not off, reason)
    step = "maintenance cleared by hand" if off else "maintenance set by hand"
    was = f" (was: {before.maintenance_reason})" if off and before.maintenance else ""
    inv.history.append(after.name, "maintenance", None, step, "inventory", "ok", (reason or "") + was)
    console.print(
        f"{after.name}: " + ("out of maintenance" + was if off else f"in maintenance ({after.maintenance_reason})")
    )


@app.command()
def events(host: str, limit: int = typer.Option(50, min=1, max=10000)) -> None:
    """A host's event journal, newest first."""
    from metalflow.tasks.clients import inventory

    try:
        key = parse_ident(host, "HOST", "a host name or CloudStack id")
    except BadValue as exc:
        _bad(exc)
    t = Table("time", "operation", "step", "system", "outcome", "detail")
    for e in inventory().history.events(key, limit=limit):
        cells = (e.at.strftime("%H:%M:%S"), e.operation, e.step, e.system, e.outcome, (e.detail or "")[:80])
        t.add_row(*(Text(str(c or "")) for c in cells))
    console.print(t)


@app.command()
def demo(
    hosts_: int = typer.Option(4, "--hosts", help="Lab hosts"),
    port: int = typer.Option(4200, help="Prefect server port (an existing server there is used)"),
    stay: bool = typer.Option(True, help="Keep everything up after the demo until Ctrl-C"),
    via: str = typer.Option(
        "api",
        "--via",
        help="api: trigger the flows over the REST API; cloudstack: the lab's CloudStack drives the "
        "real metalflow-cloudstack through a VM's life",
    ),
) -> None:
    """The main job on the embedded default: a local Prefect server, the lab, metalflow served,
    then register, provision, stop, start, plug-nic and destroy triggered over the REST API
    (or, with --via cloudstack, a VM's life as CloudStack drives the extension)."""
    from metalflow.deployments.demo import run_demo

    if via not in ("api", "cloudstack"):
        _fail(f"--via: {via!r} is not api or cloudstack", EXIT_BAD_INPUT)
    code = run_demo(hosts=hosts_, port=port, stay=stay, console=console, via=via)
    raise typer.Exit(code)


def wait_forever() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        time.sleep(0.5)


if __name__ == "__main__":
    app()
