"""``metalflow lab``: start a lab, look at it, break it."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metalflow.lab.cloudstack.cli import app as cloudstack_app
from metalflow.lab.spec import Timing, generate

app = typer.Typer(
    help="The lab: MAAS, BMCs and ToR switches simulated over their real protocols.", no_args_is_help=True
)
fault_app = typer.Typer(help="Inject faults into a running lab.", no_args_is_help=True)
app.add_typer(fault_app, name="fault")
app.add_typer(cloudstack_app, name="cloudstack")
console = Console()


def default_home() -> Path:
    return Path(os.environ.get("METALFLOW_HOME") or Path.home() / ".metalflow")


def default_manifest() -> Path:
    return Path(os.environ.get("METALFLOW_LAB_MANIFEST") or default_home() / "lab" / "manifest.json")


ManifestOpt = typer.Option(None, "--manifest", "-m", help="Lab manifest (default: $METALFLOW_HOME/lab/manifest.json).")


@app.command()
def up(
    hosts: int = typer.Option(4, "--hosts", "-n", min=1, help="How many servers (each with a BMC)."),
    switches: int = typer.Option(1, "--switches", "-s", min=1, help="How many ToR switches."),
    manifest: Path | None = ManifestOpt,
    block: int = typer.Option(0, "--block", min=0, max=99, help="Loopback block 127.<100+block>.0.0/16 of this lab."),
    enlist: str = typer.Option("none", help="'none': MAAS starts empty; 'ready': every host preloaded as Ready."),
    pxe_vlan: int = typer.Option(10, help="The provisioning (PXE) VLAN every cabled port starts in."),
    deploy_seconds: float = typer.Option(Timing.deploy, help="How long a simulated deployment takes."),
    commission_seconds: float = typer.Option(Timing.commission, help="How long commissioning takes."),
    erase_seconds: float = typer.Option(Timing.erase, help="How long a disk erase takes."),
    node_timeout: float = typer.Option(
        Timing.node_timeout, help="MAAS's node_timeout: a phase with no PXE boot fails after it."
    ),
    bmc_processes: int = typer.Option(0, help="Processes serving the BMCs (0: one per 500 BMCs)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Start a lab and keep it running until interrupted (Ctrl-C)."""
    from metalflow.lab.runner import Lab

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    manifest = manifest or default_manifest()
    workdir = manifest.parent / f"lab-{block}"
    timing = Timing(
        deploy=deploy_seconds, commission=commission_seconds, erase=erase_seconds, node_timeout=node_timeout
    )
    spec = generate(hosts, switches, block=block, pxe_vlan=pxe_vlan, timing=timing, workdir=str(workdir))
    spec = replace(spec, bmc_processes=bmc_processes)
    t0 = time.monotonic()
    with console.status(f"starting {hosts} BMCs, {switches} switches and MAAS..."):
        lab = Lab(spec, enlist=enlist)
        try:
            lab.start()
        except OSError as exc:
            console.print(
                f"[red]The lab could not start:[/red] {exc}\n"
                f"Is another lab running in block {block}? Try --block {block + 1}."
            )
            raise typer.Exit(2) from None
    lab.write_manifest(str(manifest))
    _summary(spec, manifest, time.monotonic() - t0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        console.print("stopping the lab...")
        lab.stop()
        try:
            manifest.unlink()
        except OSError:
            pass


def _summary(spec, manifest: Path, seconds: float) -> None:
    t = Table(title=f"metalflow lab up in {seconds:.1f} s", show_header=False)
    t.add_row("MAAS", spec.maas.url)
    t.add_row(
        "BMCs", f"{len(spec.hosts)} (IPMI 2.0 lanplus, e.g. {spec.hosts[0].bmc.address}:{spec.hosts[0].bmc.port})"
    )
    t.add_row("switches", ", ".join(f"{s.name} {s.dialect} ssh {s.address}:{s.port}" for s in spec.switches))
    t.add_row("PXE VLAN", str(spec.maas.pxe_vlan))
    t.add_row("control", spec.control_url)
    t.add_row("manifest", f"{manifest} (credentials inside, mode 0600)")
    console.print(t)
    console.print("Running until interrupted (Ctrl-C).")


def _load(manifest: Path | None) -> dict:
    path = manifest or default_manifest()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        console.print(f"[red]No lab manifest at {path}.[/red] Start one with: metalflow lab up")
        raise typer.Exit(2) from None


def _call(manifest: Path | None, method: str, path: str, body: dict | None = None) -> dict:
    url = _load(manifest)["lab"]["control_url"].rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:  # not the lab's JSON error (another server on that port?)
            message = str(exc)
        console.print(message, style="red", markup=False)  # the message may hold [brackets]
        raise typer.Exit(1) from None
    except urllib.error.URLError as exc:
        console.print(f"[red]The lab at {url} does not answer ({exc.reason}).[/red] Is `metalflow lab up` running?")
        raise typer.Exit(2) from None
    except OSError as exc:  # a read timeout or a reset connection: urlopen does not wrap those
        console.print(f"[red]The lab at {url} did not answer properly ({exc}).[/red] Is `metalflow lab up` running?")
        raise typer.Exit(2) from None


@app.command()
def state(
    host: str | None = typer.Argument(None),
    manifest: Path | None = ManifestOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show every host as the hardware sees it: power, boot device, what runs, port VLANs."""
    data = _call(manifest, "GET", f"/hosts/{host}" if host else "/state")
    hosts = [data] if host else list(data["hosts"].values())
    if as_json:
        console.print_json(json.dumps(data))
        return
    t = Table("host", "power", "boot", "running", "ports (untagged / tagged)", "BMC fault")
    for h in hosts:
        ports = "; ".join(
            f"{p['switch']} {p['port']}: {p['untagged']} / {','.join(map(str, p['tagged'])) or '-'}" for p in h["ports"]
        )
        boot = h.get("override") or h.get("bootdev")
        t.add_row(
            h["name"],
            h.get("power", "?"),
            f"{boot}{' (persistent)' if h.get('persistent') else ''}",
            h["running"],
            ports,
            h.get("bmc_fault", ""),
        )
    console.print(t)


@app.command()
def power(
    host: str,
    on: bool = typer.Argument(..., help="on or off", parser=lambda s: s.lower() in ("on", "1", "true")),
    manifest: Path | None = ManifestOpt,
) -> None:
    """Press a server's power button behind metalflow's back."""
    _call(manifest, "POST", f"/power/{host}", {"on": on})


@fault_app.command("maas")
def fault_maas(
    mode: str = typer.Option("503", help="503 or 409 (with Retry-After), or none."),
    count: int = typer.Option(1),
    retry_after: int = typer.Option(1),
    fail_next: str | None = typer.Option(None, help="Fail the next phase: commission, deploy, erase or release."),
    manifest: Path | None = ManifestOpt,
) -> None:
    """Make MAAS answer errors, or fail its next phase."""
    body = (
        {"fail_next": fail_next, "count": count}
        if fail_next
        else {"mode": mode, "count": count, "retry_after": retry_after}
    )
    _call(manifest, "POST", "/faults/maas", body)


@fault_app.command("bmc")
def fault_bmc(
    host: str,
    mode: str = typer.Option(..., help="none, silent, slow, ignore_soft_off, reject_auth"),
    delay: float = typer.Option(0.0),
    manifest: Path | None = ManifestOpt,
) -> None:
    """Make a host's BMC misbehave."""
    _call(manifest, "POST", f"/faults/bmc/{host}", {"mode": mode, "delay": delay})


@fault_app.command("switch")
def fault_switch(
    name: str,
    mode: str = typer.Option(..., help="none, drop_session, reject_login, slow, wrong_readback, busy"),
    after: int = typer.Option(0),
    count: int = typer.Option(1),
    delay: float = typer.Option(0.0),
    manifest: Path | None = ManifestOpt,
) -> None:
    """Make a switch misbehave."""
    _call(manifest, "POST", f"/faults/switch/{name}", {"mode": mode, "after": after, "count": count, "delay": delay})


@fault_app.command("reset")
def fault_reset(manifest: Path | None = ManifestOpt) -> None:
    """Clear every fault."""
    _call(manifest, "POST", "/reset")
