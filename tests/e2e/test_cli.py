"""The operator's CLI against the running stack: register with a progress bar, hosts, events,
trigger; and bad input refused like a command line tool refuses it (one plain line on stderr,
exit 2, no traceback, no run created). Uses host-009 and host-010.

The real ``metalflow`` console script is run (``python -m metalflow.deployments.cli`` when it
is not installed beside the interpreter)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("metalflow")


def cli(e2e, *args, timeout=300, env_extra=None):
    env = dict(e2e.stack.env, COLUMNS="250", **(env_extra or {}))
    exe = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "metalflow.deployments.cli"]
    return subprocess.run([*exe, *args], env=env, capture_output=True, text=True, timeout=timeout)


#: Every flow the CLI can trigger (power-poll and audit runs come from their schedules too).
ON_DEMAND = ["register-host", "provision", "stop", "start", "reboot", "status", "destroy", "plug-nic", "unplug-nic"]


def flow_runs(e2e) -> int:
    """Runs of the triggered flows on the server (scheduled runs aside)."""
    body = {"flows": {"name": {"any_": ON_DEMAND}}}
    r = e2e.http("POST", "flow_runs/count", body)
    r.raise_for_status()
    return r.json()


def test_register_hosts_events_trigger(e2e):
    out = cli(e2e, "register", "host-009", "host-010")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2/2" in out.stdout
    inv = e2e.inventory()
    ids = {h.name: h.maas_system_id for h in inv.hosts.all()}
    assert ids["host-009"] and ids["host-010"]
    for name in ("host-009", "host-010"):
        assert e2e.maas().machine(ids[name]).status.name == "READY"

    table = cli(e2e, "hosts")
    assert table.returncode == 0 and ids["host-009"] in table.stdout

    events = cli(e2e, "events", "host-009")
    assert events.returncode == 0
    for step in ("converge-ports", "find-or-create-machine", "wait-for-status"):
        assert step in events.stdout

    # registering again adopts the same machines: nothing re-created
    again = cli(e2e, "register", "host-009", "--all")
    assert again.returncode == 0, again.stdout + again.stderr
    assert e2e.inventory().hosts.get("host-009").maas_system_id == ids["host-009"]
    assert len(e2e.maas().machines(hostname=e2e.maas().machine(ids["host-009"]).hostname)) == 1

    status = cli(e2e, "trigger", "status", "-p", "host=host-009")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Completed" in status.stdout

    bad = cli(e2e, "trigger", "status", "-p", "host")
    assert bad.returncode == 2 and "key=value" in bad.stderr


VM = '{"name": "web-01", "uuid": "vm-1", "image": "ubuntu/jammy", "nics": [{"vlan": 100, "default": true}]}'


@pytest.mark.parametrize(
    "args, says",
    [
        # rich markup in the input is text, not markup (it used to print a 78-line traceback)
        (("trigger", "provision", "--param", "[/red]"), ["--param #1", "key=value"]),
        (("trigger", "provision", "-p", "[bold]x=1"), ["not a parameter name"]),
        # JSON that does not parse is refused, naming the parameter, never taken as a string
        (("trigger", "provision", "-p", "host=host-009", "-p", "vm={bad json"), ["--param vm", "does not parse"]),
        (("trigger", "plug-nic", "-p", "host=host-009", "-p", "vlan=[1,"), ["--param vlan", "does not parse"]),
        (("trigger", "plug-nic", "-p", "host=host-009", "-p", "vlan=100\n"), ["--param vlan", "whitespace"]),
        (("trigger", "plug-nic", "-p", "host=host-009", "-p", "vlan=NaN"), ["vlan"]),
        # the flow's own parameter types, checked locally: the field is named
        (("trigger", "provision", "-p", "host=host-009", "-p", "vm=" + VM.replace("web-01", "Web_01")), ["vm.name"]),
        (("trigger", "provision", "-p", "host=host-009", "-p", "vm=" + VM.replace("100", "4095")), ["vm.nics.0.vlan"]),
        (("trigger", "provision", "-p", "host=host-009"), ["vm: missing"]),
        (("trigger", "status", "-p", "host=host-009", "-p", "colour=red"), ["no parameter colour"]),
        (("trigger", "status", "-p", "host=host-009", "-p", "host=host-010"), ["given twice"]),
        (("trigger", "nosuch[red]"), ["no metalflow flow named 'nosuch[red]'"]),
        # names are MAAS host names before anything is asked of anyone
        (("register", "host_3"), ["NAMES", "'_'"]),
        (("register", "host-009\n"), ["NAMES", "'host-009\\n'"]),
        (("register", "HOST-009"), ["upper-case"]),
        (("events", "[/red]"), ["HOST", "'[/red]'"]),
    ],
)
def test_bad_input_is_one_plain_line_exit_2_and_no_run(e2e, args, says):
    before = flow_runs(e2e)
    out = cli(e2e, *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    for text in says:
        assert text in out.stderr, out.stderr
    assert flow_runs(e2e) == before


def test_a_secret_in_a_parameter_is_not_echoed(e2e):
    before = flow_runs(e2e)
    vm = "vm=" + VM.replace('"nics"', '"root_password_ref": "hunter2-CANARY", "nics"')
    pasted = cli(e2e, "trigger", "provision", "-p", "host=host-009", "-p", "hunter2-CANARY")
    assert pasted.returncode == 2 and "--param #2" in pasted.stderr and "CANARY" not in pasted.stderr
    out = cli(e2e, "trigger", "provision", "-p", "host=host-009", "-p", vm)
    assert out.returncode == 2 and "vm.root_password_ref" in out.stderr, out.stderr
    assert "CANARY" not in out.stdout + out.stderr
    assert flow_runs(e2e) == before


def test_a_system_failure_is_one_line_exit_1_and_a_traceback_only_with_debug(e2e):
    broken = {"METALFLOW_INVENTORY_URL": "nosuchdb://inventory"}
    out = cli(e2e, "hosts", env_extra=broken)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "--debug" in out.stderr, out.stderr
    debug = cli(e2e, "--debug", "hosts", env_extra=broken)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
