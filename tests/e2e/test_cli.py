"""The operator's CLI against the running stack: register with a progress bar, hosts, events,
trigger. Uses host-009 and host-010."""

import subprocess
import sys


def cli(e2e, *args, timeout=300):
    env = dict(e2e.stack.env, COLUMNS="250")
    return subprocess.run(
        [sys.executable, "-m", "metalflow.deployments.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    assert bad.returncode == 2 and "key=value" in bad.stdout
