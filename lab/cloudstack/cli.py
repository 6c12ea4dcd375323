"""``metalflow lab cloudstack``: drive an Orchestrator extension the way CloudStack 4.21/4.22 does.

    metalflow lab cloudstack init --extension ./maas.py --host host1 --network guest=100 \\
        --template ubuntu:os=ubuntu
    metalflow lab cloudstack deploy web-1 --template ubuntu --network guest
    metalflow lab cloudstack calls web-1

Errors: one plain line on stderr; exit 2 for bad input, 1 for an operation that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metalflow.lab.cloudstack.model import PARAMETER_TYPES, VERSIONS, Config, Extension, Parameter
from metalflow.lab.cloudstack.orchestrator import CloudStack, InputError, Result
from metalflow.lab.cloudstack.process import Call

app = typer.Typer(
    help="A CloudStack 4.21/4.22 management server driving one Orchestrator extension (an executable).",
    no_args_is_help=True,
)
console = Console()

StateDirOpt = typer.Option(
    None, "--state-dir", help="Where the lab keeps its state (default: $METALFLOW_HOME/lab/cloudstack)."
)


def default_state_dir() -> Path:
    """``$METALFLOW_HOME/lab/cloudstack`` (the lab's home rule; not imported from
    ``lab.cli``, which imports this module: packages never import each other both ways)."""
    return Path(os.environ.get("METALFLOW_HOME") or Path.home() / ".metalflow") / "lab" / "cloudstack"


def _fail(message: str, code: int) -> None:
    typer.echo(" ".join(message.split()), err=True)  # one line, whatever the message holds
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except InputError as exc:
        _fail(str(exc), 2)


def _open(state_dir: Path | None, **kwargs: Any) -> CloudStack:
    return CloudStack(state_dir or default_state_dir(), **kwargs)


@contextlib.contextmanager
def _busy(state_dir: Path | None, what: str) -> Iterator[CloudStack]:
    """The lab, with a spinner that names each call as it starts (action, VM, try)."""
    with console.status(f"{what}...") as status:
        yield _open(state_dir, progress=lambda text: status.update(f"{escape(text)}..."))


def _kv(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        _fail(f"{what}: expected k=v, got {text!r}", 2)
    return key.strip(), value


def _kvs(items: list[str] | None, what: str) -> dict[str, str]:
    return dict(_kv(item, what) for item in items or [])


def _named_kv(text: str, what: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        _fail(f"{what}: expected NAME:k=v, got {text!r}", 2)
    key, value = _kv(rest, what)
    return name, key, value


def _done(cs: CloudStack, result: Result, what: str) -> None:
    if result.success:
        state = result.state or "expunged"
        vm = next((v for v in cs.vms() if v.uuid == result.vm), None)
        where = f" on {cs.host_name(vm.host_id)}" if vm is not None and vm.host_id is not None else ""
        console.print(f"{what}: {state}{where} ({len(result.calls)} calls)", markup=False, highlight=False)
        return
    if result.calls:
        _calls_table(result.calls, title=what)
    _fail(result.error or f"{what} failed", 1)


# --- init -----------------------------------------------------------------------------------------


def _parse_action(spec: str) -> tuple[str, Parameter | None]:
    parts = spec.split(":")
    name = parts[0]
    if len(parts) == 1:
        return name, None
    if not parts[1]:
        _fail(f"--action {spec!r}: empty parameter name", 2)
    param = Parameter(parts[1])
    if len(parts) > 2:
        param.type = parts[2].upper()
        if param.type not in PARAMETER_TYPES:
            _fail(f"--action {spec!r}: type must be one of {', '.join(PARAMETER_TYPES)}", 2)
    for extra in parts[3:]:
        if extra.lower() in ("required", "optional"):
            param.required = extra.lower() == "required"
        elif extra:
            param.validation = extra.upper()
    return name, param


@app.command()
def init(
    extension: Path = typer.Option(..., "--extension", help="The extension's executable (its path)."),
    name: str | None = typer.Option(
        None, "--name", help="The extension's name (default: the file name without suffix)."
    ),
    env: list[str] | None = typer.Option(None, "--env", help="K=V added to the extension's environment (repeatable)."),
    extension_detail: list[str] | None = typer.Option(
        None, "--extension-detail", help="k=v extension detail (externaldetails.extension; repeatable)."
    ),
    resourcemap: list[str] | None = typer.Option(
        None, "--resourcemap", help="k=v detail of the cluster mapping (externaldetails.resourcemap; repeatable)."
    ),
    host: list[str] | None = typer.Option(None, "--host", help="A host of the cluster (repeatable; default: host1)."),
    host_detail: list[str] | None = typer.Option(
        None, "--host-detail", help="NAME:k=v External: detail of a host (externaldetails.host; repeatable)."
    ),
    network: list[str] | None = typer.Option(
        None, "--network", help="NAME=VLAN, or NAME=new for a network not implemented yet (repeatable)."
    ),
    template: list[str] | None = typer.Option(
        None, "--template", help="NAME or NAME:k=v (its externaldetails; repeat for more details)."
    ),
    action: list[str] | None = typer.Option(
        None,
        "--action",
        help="A custom action: NAME, or NAME:param:TYPE[:required][:VALIDATION] (repeat for more parameters).",
    ),
    action_timeout: list[str] | None = typer.Option(None, "--action-timeout", help="NAME=SECONDS (default 3 s)."),
    action_detail: list[str] | None = typer.Option(None, "--action-detail", help="NAME:k=v (externaldetails.action)."),
    version: str = typer.Option("4.22", "--version", help=f"CloudStack version: {', '.join(VERSIONS)}."),
    start_retry: int = typer.Option(10, "--start-retry", min=1, help="start.retry: tries per start."),
    wait: int = typer.Option(1800, "--wait", min=1, help="The global wait (seconds)."),
    no_prepare: bool = typer.Option(
        False, "--no-prepare", help="The extension does not ask for prepare (orchestratorrequirespreparevm=false)."
    ),
    vlan_on_implement: int = typer.Option(1000, help="The VLAN a 'new' network gets when first implemented."),
    seed: int = typer.Option(0, "--seed", help="The planner's random seed."),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="The extension's working directory (default: state dir)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a lab that exists in the state dir."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Create the lab: the extension, its cluster's hosts, networks, templates and custom actions."""
    path = extension.expanduser().absolute()
    if not path.is_file():
        _fail(f"--extension {extension}: no such file", 2)
    if version not in VERSIONS:
        _fail(f"--version must be one of {', '.join(VERSIONS)}", 2)
    hosts = list(dict.fromkeys(host or ["host1"]))
    host_details: dict[str, dict[str, str]] = {h: {} for h in hosts}
    for item in host_detail or []:
        h, k, v = _named_kv(item, "--host-detail")
        if h not in host_details:
            _fail(f"--host-detail {item!r}: no --host {h}", 2)
        host_details[h][k] = v
    networks: dict[str, int | None] = {}
    for item in network or []:
        net_name, vlan_text = _kv(item, "--network")
        if vlan_text.lower() == "new":
            networks[net_name] = None
            continue
        if not vlan_text.isdigit() or not 1 <= int(vlan_text) <= 4094:
            _fail(f"--network {item!r}: the VLAN is 1 to 4094 (or 'new')", 2)
        networks[net_name] = int(vlan_text)
    templates: dict[str, dict[str, str]] = {}
    for item in template or []:
        tpl_name, sep, rest = item.partition(":")
        if not tpl_name:
            _fail(f"--template {item!r}: expected NAME or NAME:k=v", 2)
        templates.setdefault(tpl_name, {})
        if sep:
            k, v = _kv(rest, "--template")
            templates[tpl_name][k] = v
    actions: dict[str, list[Parameter]] = {}
    for item in action or []:
        a, param = _parse_action(item)
        actions.setdefault(a, [])
        if param is not None:
            actions[a].append(param)
    timeouts: dict[str, int] = {}
    for item in action_timeout or []:
        a, seconds = _kv(item, "--action-timeout")
        if a not in actions or not seconds.isdigit():
            _fail(f"--action-timeout {item!r}: expected NAME=SECONDS for an --action", 2)
        timeouts[a] = int(seconds)
    action_details: dict[str, dict[str, str]] = {a: {} for a in actions}
    for item in action_detail or []:
        a, k, v = _named_kv(item, "--action-detail")
        if a not in actions:
            _fail(f"--action-detail {item!r}: no --action {a}", 2)
        action_details[a][k] = v
    config = Config(
        extension=Extension(
            name=name or path.stem,
            path=str(path),
            details=_kvs(extension_detail, "--extension-detail"),
            requires_prepare=not no_prepare,
            env=_kvs(env, "--env"),
            workdir=str(workdir.absolute()) if workdir else None,
        ),
        version=version,
        start_retry=start_retry,
        wait=wait,
        planner_seed=seed,
        resourcemap=_kvs(resourcemap, "--resourcemap"),
        vlan_on_implement=vlan_on_implement,
    )
    with _errors():
        cs = _open(state_dir, config=config, reset=force)
        for h in hosts:
            cs.add_host(h, host_details[h])
        for n, vlan in networks.items():
            cs.add_network(n, vlan)
        for tpl_name, details in templates.items():
            cs.add_template(tpl_name, details)
        for a, params in actions.items():
            cs.add_action(a, params, timeouts.get(a), action_details[a])
    t = Table(title=f"CloudStack {version} lab in {cs.state_dir}", show_header=False)
    t.add_row("extension", f"{config.extension.name}: {path}{'' if not no_prepare else ' (no prepare)'}")
    t.add_row("hosts", ", ".join(hosts))
    t.add_row(
        "networks",
        ", ".join(f"{n} (VLAN {v if v is not None else 'on implement'})" for n, v in networks.items()) or "-",
    )
    t.add_row("templates", ", ".join(templates) or "-")
    t.add_row("custom actions", ", ".join(actions) or "-")
    t.add_row("start.retry / wait", f"{start_retry} / {wait} s")
    console.print(t)


# --- VM operations --------------------------------------------------------------------------------


@app.command()
def deploy(
    name: str = typer.Argument(..., help="The VM's display name."),
    template: str = typer.Option(..., "--template", "-t"),
    network: list[str] = typer.Option(..., "--network", "-n", help="A network (repeatable; the first is the default)."),
    detail: list[str] | None = typer.Option(
        None, "--detail", "-d", help="k=v deploy externaldetails (stored as External:k; repeatable)."
    ),
    plain_detail: list[str] | None = typer.Option(None, "--plain-detail", help="k=v plain VM detail (repeatable)."),
    ssh_key: str | None = typer.Option(None, "--ssh-key", help="The keypair's public key (SSH.PublicKey detail)."),
    cpus: int = typer.Option(2, "--cpus", min=1),
    ram_mb: int = typer.Option(2048, "--ram-mb", min=1),
    host: str | None = typer.Option(None, "--host", help="Pin the planner to this host."),
    wait: int | None = typer.Option(None, "--wait", min=1, help="The create call's wait (default: the global wait)."),
    no_start: bool = typer.Option(False, "--no-start", help="startvm=false: create the VM Stopped, never started."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Deploy a VM: prepare + create, retried up to start.retry times with a cleanup stop after each failure."""
    details = _kvs(detail, "--detail")
    plain = _kvs(plain_detail, "--plain-detail")
    with _errors(), _busy(state_dir, f"deploying {name}") as cs:
        result = cs.deploy(
            name,
            template,
            network,
            cpus=cpus,
            ram_mb=ram_mb,
            details=details,
            plain_details=plain,
            ssh_public_key=ssh_key,
            host=host,
            start=not no_start,
            wait=wait,
        )
    _done(cs, result, f"deploy {name}")


@app.command()
def start(
    vm: str = typer.Argument(..., help="Display name or uuid."),
    host: str | None = typer.Option(None, "--host", help="Pin the planner to this host."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Start a Stopped VM (start on its last host; prepare + create if it never started)."""
    with _errors(), _busy(state_dir, f"starting {vm}") as cs:
        result = cs.start(vm, host=host)
    _done(cs, result, f"start {vm}")


@app.command()
def stop(vm: str = typer.Argument(..., help="Display name or uuid."), state_dir: Path | None = StateDirOpt) -> None:
    """Stop a Running VM."""
    with _errors(), _busy(state_dir, f"stopping {vm}") as cs:
        result = cs.stop(vm)
    _done(cs, result, f"stop {vm}")


@app.command()
def reboot(vm: str = typer.Argument(..., help="Display name or uuid."), state_dir: Path | None = StateDirOpt) -> None:
    """Reboot a Running VM."""
    with _errors(), _busy(state_dir, f"rebooting {vm}") as cs:
        result = cs.reboot(vm)
    _done(cs, result, f"reboot {vm}")


@app.command()
def destroy(
    vm: str = typer.Argument(..., help="Display name or uuid."),
    keep: bool = typer.Option(False, "--keep", help="Destroy without expunging (the VM stays, Destroyed)."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Destroy and expunge a VM (delete is called only if it ever started)."""
    with _errors(), _busy(state_dir, f"destroying {vm}") as cs:
        result = cs.destroy(vm, expunge=not keep)
    _done(cs, result, f"destroy {vm}")


@app.command("add-nic")
def add_nic(vm: str, network: str, state_dir: Path | None = StateDirOpt) -> None:
    """Add a NIC (works on a Stopped VM; on a Running one CloudStack's PlugNicCommand fails)."""
    with _errors(), _busy(state_dir, f"adding a NIC in {network} to {vm}") as cs:
        result = cs.add_nic(vm, network)
    _done(cs, result, f"add-nic {vm} {network}")


@app.command("remove-nic")
def remove_nic(vm: str, network: str, state_dir: Path | None = StateDirOpt) -> None:
    """Remove a NIC (Stopped VM only; never the default NIC)."""
    with _errors(), _busy(state_dir, f"removing the NIC in {network} from {vm}") as cs:
        result = cs.remove_nic(vm, network)
    _done(cs, result, f"remove-nic {vm} {network}")


@app.command("action")
def run_action(
    vm: str,
    name: str,
    param: list[str] | None = typer.Option(None, "--param", "-p", help="k=v parameter (repeatable)."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Run a custom action; prints its details and what the UI would show."""
    params = _kvs(param, "--param")
    with _errors(), _busy(state_dir, f"running {name} on {vm}") as cs:
        result = cs.run_action(vm, name, params)
    console.print(f"details: {result.details}", markup=False, highlight=False)
    if result.ui_message is not None:
        console.print("UI shows:", markup=False)
        console.print_json(json.dumps(result.ui_message))
    else:
        console.print("UI shows: nothing", markup=False)
    if not result.success:
        _fail(result.error or f"custom action {name} failed", 1)


@app.command()
def ping(state_dir: Path | None = StateDirOpt) -> None:
    """One ping of every host: status per VM, then the power-state sync."""
    with _errors(), _busy(state_dir, "pinging the hosts") as cs:
        before = {v.uuid: v for v in cs.vms()}
        report = cs.ping()
    after = {v.uuid: v for v in cs.vms()}
    t = Table("VM", "uuid", "power", "state before", "state after")
    for vm_uuid, power in report.items():
        vm = before[vm_uuid]
        t.add_row(vm.display_name, vm_uuid, power, vm.state, after[vm_uuid].state if vm_uuid in after else "-")
    console.print(t)


# --- looking at it ----------------------------------------------------------------------------------


@app.command()
def vms(
    as_json: bool = typer.Option(False, "--json", help="The VM records as JSON."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """The VMs, as CloudStack has them."""
    with _errors():
        cs = _open(state_dir)
        records = cs.vms()
        networks = {n.uuid: n for n in cs.networks()}
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in records], indent=1))
        return
    t = Table("name", "uuid", "internal", "state", "host", "last host", "NICs")
    for v in records:
        nics = "\n".join(
            f"{n.device_id}{'*' if n.default else ''} {networks[n.network].name} {n.ip} {n.mac}"
            + (f" vlan {networks[n.network].vlan}" if networks[n.network].vlan is not None else "")
            for n in v.nics
        )
        t.add_row(
            v.display_name,
            v.uuid,
            v.name,
            v.state,
            cs.host_name(v.host_id) or "-",
            cs.host_name(v.last_host_id) or "-",
            nics,
        )
    console.print(t)


def _calls_table(calls: list[Call], title: str | None = None) -> None:
    t = Table("time", "VM", "action", "try", "wait", "exit", "seconds", "text", title=title)
    for c in calls:
        exit_text = "Timeout" if c.timed_out else ("-" if c.exit_code is None else str(c.exit_code))
        action = c.action + (f" ({c.note})" if c.note else "")
        t.add_row(
            c.started_at[11:23],
            c.vm_name or "-",
            escape(action),
            "-" if c.try_number is None else str(c.try_number),
            str(c.wait),
            exit_text,
            f"{c.seconds:.2f}",
            escape(c.text[:80].replace("\n", " ")),
        )
    console.print(t)


@app.command()
def calls(
    vm: str | None = typer.Argument(None, help="Only this VM's calls (display name or uuid)."),
    as_json: bool = typer.Option(False, "--json", help="Every call as JSON (payload included)."),
    state_dir: Path | None = StateDirOpt,
) -> None:
    """Every run of the extension: time, action, try, wait, exit code or Timeout, seconds, text."""
    with _errors():
        records = _open(state_dir).calls(vm)
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in records], indent=1))
        return
    _calls_table(records)


def main() -> None:  # python -m metalflow.lab.cloudstack.cli
    app(prog_name="metalflow lab cloudstack")


if __name__ == "__main__":
    main()
