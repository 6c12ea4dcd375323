"""metalflow on Prefect's distributed set-up: the Prefect server and the inventory on
PostgreSQL, every deployment on a process work pool, two ``prefect worker start`` processes.
Triggered over the REST API; results read from the lab's hardware, MAAS and switches.

The tests run in file order on one stack (the module fixture); the last one kills a worker and
starts it again. Timings are printed (``pytest -s``) for docs/scale-out.md, never asserted.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest
import requests

from metalflow.integrations.common import Secret
from metalflow.integrations.common.names import host_lock_name as lock_name
from metalflow.integrations.prefectapi import PrefectApi
from metalflow.integrations.switches import connect

# Minutes, not seconds: the worker-kill test waits for Prefect to notice (~1.5 min) and for
# recovery; a busy CI machine can double that.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

IMAGE = "ubuntu/jammy"
PXE_VLAN = 10


def vm(name: str, vlan: int) -> dict:
    return {
        "name": name,
        "uuid": f"uuid-{name}",
        "image": IMAGE,
        "nics": [{"vlan": vlan, "default": True}],
        "owner": {"account": "a1", "domain": "d1"},
    }


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def ensure_registered(scale, hosts: list[str]) -> None:
    """register-host for those not yet in MAAS, all at once (idempotent anyway)."""
    todo = [h for h in hosts if not scale.inventory().hosts.get(h).maas_system_id]
    runs = [scale.trigger("register-host", host=h) for h in todo]
    for run in runs:
        done = scale.wait(run.id, 240)
        assert done.ok, f"{done.name}: {done.state_name} {done.message}"


def deploy_count(scale, host: str) -> int:
    """How many times the host PXE-booted into MAAS's deployer (one per MAAS deploy)."""
    return sum(1 for e in scale.lab.host(host)["history"] if e["running"] == "ephemeral:deploying")


def journal_span(scale, host: str, run_id: str) -> tuple[float, float]:
    events = [e for e in scale.inventory().history.events(host, limit=1000) if e.run_id == run_id]
    assert events, f"no journal entries of run {run_id} on {host}"
    times = [e.at.timestamp() for e in events]
    return min(times), max(times)


def test_provisions_of_four_hosts_spread_over_both_workers_and_complete(scale):
    hosts = ["host-001", "host-002", "host-003", "host-004"]
    ensure_registered(scale, hosts + ["host-005"])  # host-005: for the worker-kill test

    started = time.monotonic()
    runs = {h: scale.trigger("provision", host=h, vm=vm(f"web-{h[-1]}", 100 + int(h[-1]))) for h in hosts}
    done = {h: scale.wait(r.id, 300) for h, r in runs.items()}
    makespan = time.monotonic() - started
    for run in done.values():
        assert run.ok, f"{run.name}: {run.state_name} {run.message}"
    print(f"\n4 provisions on 2 workers: makespan {makespan:.1f} s")

    # Spread: each run was executed by exactly one worker, and both workers took some.
    owners = {h: scale.worker_of(r.id) for h, r in runs.items()}
    assert all(len(o) == 1 for o in owners.values()), owners
    assert {o[0] for o in owners.values()} == {w.name for w in scale.workers}, owners

    for h in hosts:
        hw = scale.lab.host(h)
        vlan = 100 + int(h[-1])
        assert hw["power"] == "on" and hw["running"] == f"os:{IMAGE}" and hw["bootdev"] == "disk", hw
        assert all(p["untagged"] == vlan and p["tagged"] == [] for p in hw["ports"]), hw["ports"]
        machine = scale.maas().find_by_mac(hw["ports"][0]["mac"])
        assert machine.hostname == f"web-{h[-1]}" and machine.status.name == "DEPLOYED"
        assert deploy_count(scale, h) == 1


def test_the_host_lock_spans_processes(scale):
    """The lock lives on the server: held here, in the test process (as a run on another
    worker would hold it), a reboot on a worker waits, says so, and starts once it is free."""
    url, host = scale.stack.api_url, "host-006"
    name = lock_name(host)
    r = requests.post(f"{url}/v2/concurrency_limits/", json={"name": name, "limit": 1}, timeout=10)
    assert r.status_code in (201, 409), r.text
    lease = requests.post(
        f"{url}/v2/concurrency_limits/increment-with-lease",
        timeout=10,
        json={"names": [name], "slots": 1, "mode": "concurrency", "lease_duration": 120},
    ).json()["lease_id"]
    try:
        reboot = scale.trigger("reboot", host=host)
        wait_for(
            lambda: "waiting: another operation is running on host-006" in scale.logs(reboot.id),
            120,
            "the reboot saying it waits for the lock",
            interval=1,
        )
        assert scale.api.read_flow_run(reboot.id).state_type == "RUNNING"
    finally:
        released = time.time()
        requests.post(
            f"{url}/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease}, timeout=10
        ).raise_for_status()
    done = scale.wait(reboot.id, 120)
    assert done.ok, done.message
    # Logs reach the API in batches, possibly after the final state.
    wait_for(lambda: "got the lock on host-006" in scale.logs(reboot.id), 30, "the reboot's lock log", interval=1)
    start, _ = journal_span(scale, host, reboot.id)
    assert start >= released, "the reboot acted while the lock was held elsewhere"


def test_50_concurrent_triggers_get_no_503_and_make_no_duplicate_run(scale):
    """40 distinct idempotency keys, 10 of them sent twice, all 50 at once from threads with
    their own client. The pool is paused meanwhile so that 40 status runs do not start 40
    processes: the subject is the API under a burst, not the workers."""
    url = scale.stack.api_url
    statuses: collections.Counter = collections.Counter()
    count_lock = threading.Lock()

    def count(resp, *_args, **_kwargs):
        with count_lock:
            statuses[resp.status_code] += 1

    tag = f"burst-{uuid.uuid4().hex[:8]}"
    keys = [f"{tag}-{i}" for i in range(40)] + [f"{tag}-{i}" for i in range(10)]
    results: list = [None] * len(keys)
    errors: list[str] = []
    barrier = threading.Barrier(len(keys))

    def trigger(i: int) -> None:
        session = requests.Session()
        session.hooks["response"].append(count)
        api = PrefectApi(url, session=session)
        try:
            api.deployment_id("status/metalflow")
            barrier.wait(60)
            t = time.monotonic()
            run = api.create_flow_run("status/metalflow", {"host": "host-006"}, idempotency_key=keys[i], tags=(tag,))
            results[i] = (run.id, time.monotonic() - t)
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(f"trigger {i}: {exc!r}")

    requests.patch(f"{url}/work_pools/metalflow", json={"is_paused": True}, timeout=10).raise_for_status()
    created: list[dict] = []
    try:
        threads = [threading.Thread(target=trigger, args=(i,)) for i in range(len(keys))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        created = requests.post(
            f"{url}/flow_runs/filter", json={"flow_runs": {"tags": {"all_": [tag]}}, "limit": 200}, timeout=30
        ).json()
    finally:
        for run in created:
            requests.delete(f"{url}/flow_runs/{run['id']}", timeout=10)
        requests.patch(f"{url}/work_pools/metalflow", json={"is_paused": False}, timeout=10).raise_for_status()

    assert not errors, errors
    latencies = sorted(r[1] for r in results)
    print(f"\n50 concurrent triggers: p50 {latencies[25]:.2f} s, max {latencies[-1]:.2f} s; HTTP {dict(statuses)}")
    assert not any(code >= 500 for code in statuses), f"the server answered {dict(statuses)}"  # retried or not
    by_key = collections.Counter(r["idempotency_key"] for r in created)
    assert len(created) == 40 and set(by_key.values()) == {1}, by_key
    for i in range(10):  # a repeated key got the run the first call made
        assert results[i][0] == results[40 + i][0]


def test_scheduled_runs_run_once_with_two_workers(scale):
    """power-poll (every 30 s here) and audit are made by the server's scheduler as one flow
    run per slot; both workers see each one, and only one runs it."""
    api = scale.api

    def finished(deployment: str, n: int) -> list:
        dep = api.deployment_id(deployment)
        runs = requests.post(
            f"{scale.stack.api_url}/flow_runs/filter",
            timeout=10,
            json={
                "deployments": {"id": {"any_": [dep]}},
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}},
                "limit": 200,
            },
        ).json()
        return runs if len(runs) >= n else []

    for deployment, n in (("power-poll/metalflow", 3), ("audit/metalflow", 1)):
        runs = wait_for(lambda: finished(deployment, n), 120, f"{n} finished {deployment} runs", interval=2)
        assert all(r["state"]["type"] == "COMPLETED" for r in runs), [(r["name"], r["state"]) for r in runs]
        assert all(r["run_count"] == 1 for r in runs), [(r["name"], r["run_count"]) for r in runs]
        slots = collections.Counter(r["expected_start_time"] for r in runs)
        assert set(slots.values()) == {1}, f"two runs for one schedule slot: {slots}"
        for r in runs:
            assert len(scale.worker_of(r["id"])) == 1, (r["name"], scale.worker_of(r["id"]))
        print(f"\n{deployment}: {len(runs)} scheduled runs, each run once")


def switch_change_cost(scale, switch: str, port: str, old: int, new: int) -> int:
    """Configuration commands one ``old`` → ``new`` untagged VLAN change of one port costs on
    ``switch``, measured on a spare port through the same driver and session the flows use."""
    spec = next(s for s in scale.lab.manifest["switches"] if s["name"] == switch)
    scale.lab.control("POST", f"/ports/{switch}", {"port": port, "untagged": old, "tagged": []})
    before = scale.lab.state()["switches"][switch]["counters"]["config_commands"]
    password = Secret(spec["password"])
    driver = connect(
        spec["type"], spec["address"], spec["username"], password, port=spec["port"], enable_secret=password
    )
    try:
        with driver.session() as s:
            s.port_vlans(port)
            s.remove_vlan(port, old)
            s.add_vlan(port, new, False)
    finally:
        driver.close()
    cost = scale.lab.state()["switches"][switch]["counters"]["config_commands"] - before
    scale.lab.control("POST", f"/ports/{switch}", {"port": port, "untagged": None, "tagged": []})
    return cost


def where_it_stands(scale, host: str, vm_name: str) -> str | None:
    """None when ``host`` is consistent: it carries the VM ``vm_name`` (Deployed under its name,
    on, booting from disk, the inventory recording it) or it is free (Ready under its idle name,
    off, PXE boot, only the PXE VLAN, no VM recorded), with no undo or lock of a dead run left.
    Otherwise what is still wrong."""
    hw = scale.lab.host(host)
    inv = scale.inventory()
    rec = inv.hosts.get(host)
    machine = scale.maas().machine(rec.maas_system_id)
    ports = [(p["untagged"], p["tagged"]) for p in hw["ports"]]
    left = [u.label for u in inv.undos.left(host)]
    held = [x.run_id for x in inv.leases.of_runs() if x.limit_name == lock_name(host)]
    if left or held:
        return f"undo records {left}, recorded locks of runs {held}"
    if rec.last_vm_name == vm_name:
        ok = machine.status.name == "DEPLOYED" and machine.hostname == vm_name and hw["power"] == "on"
        return None if ok and hw["bootdev"] == "disk" else f"VM recorded, but {machine.status.name} {hw['power']}"
    free = (machine.status.name, hw["power"], hw["bootdev"], ports) == ("READY", "off", "pxe", [(PXE_VLAN, [])])
    if free and machine.hostname.startswith("HOST-") and rec.last_vm_uuid is None:
        return None
    return f"half-done: MAAS {machine.status.name} {machine.hostname}, power {hw['power']}, ports {ports}"


def leaked_vlans(scale) -> dict[str, list[int]]:
    """Per switch, the VLAN definitions metalflow made (the inventory's record) that are still
    defined on the lab's switch and carried by no port."""
    inv = scale.inventory()
    out = {}
    for name, sw in scale.lab.state()["switches"].items():
        made = {v for v, origin in inv.ports.vlan_origins(name).items() if origin == "made"}
        carried = {p["untagged"] for p in sw["ports"].values()} | {v for p in sw["ports"].values() for v in p["tagged"]}
        leaked = sorted(made & {int(v) for v in sw["vlans"]} - carried)
        if leaked:
            out[name] = leaked
    return out


def running_on(scale, run_id: str):
    """The worker whose flow-run process runs ``run_id``."""
    pid = requests.get(f"{scale.stack.api_url}/flow_runs/{run_id}", timeout=10).json()["infrastructure_pid"]
    return next(w for w in scale.workers if int(str(pid).rsplit(":", 1)[-1]) in w.flow_run_pids())


def test_a_worker_killed_with_its_runs_leaves_every_host_consistent_without_a_human(scale):
    """A worker machine dies mid-provision (the worker and its flow-run processes SIGKILLed):
    Prefect marks its runs Crashed (no heartbeat for 60 s), which starts ``recover``; that
    releases the dead runs' host locks and rolls them back. With the default crash window and
    lock lease every host becomes consistent with nobody acting (72-76 s after the kill on a
    quiet machine: printed, not asserted). A rerun after recovery is an ordinary provision; a
    rerun that meets another run's records is in tests/e2e (test_failures)."""
    hosts = ["host-005", "host-006"]
    ensure_registered(scale, hosts)
    names = {h: f"killed-{h[-1]}" for h in hosts}
    runs = {h: scale.trigger("provision", host=h, vm=vm(names[h], 200 + int(h[-1]))) for h in hosts}
    # Mid-provision: renamed, allocated, tagged, deploy sent; PXE-booting into the deployer.
    for h in hosts:
        wait_for(lambda h=h: deploy_count(scale, h) >= 1, 180, f"MAAS deploying {h}", interval=0.1)
    victim = running_on(scale, runs[hosts[0]].id)
    survivor = next(w for w in scale.workers if w is not victim)
    killed = victim.kill()
    killed_at = time.monotonic()
    assert killed, f"{victim.name} had no flow-run process to kill"
    dead = [h for h, r in runs.items() if r.id not in survivor.runs()]
    assert hosts[0] in dead

    def all_consistent():
        return all(where_it_stands(scale, h, names[h]) is None for h in hosts)

    try:
        wait_for(all_consistent, 300, "every host consistent after the kill", interval=1)
    except AssertionError:
        raise AssertionError({h: where_it_stands(scale, h, names[h]) for h in hosts}) from None
    took = time.monotonic() - killed_at
    # The time is printed, not asserted (a busy CI machine stretches it: 147 s there, 72-76 s
    # on a quiet one, docs/scale-out.md); what is asserted is that nobody had to act.
    print(f"\nworker and its runs SIGKILLed → {len(dead)} hosts rolled back, all consistent in {took:.0f} s")
    assert leaked_vlans(scale) == {}, "VLAN definitions metalflow made that no port carries"
    for h in dead:
        crashed = scale.api.read_flow_run(runs[h].id)
        assert crashed.state_type == "CRASHED", f"{crashed.state_name}: {crashed.message}"
        assert where_it_stands(scale, h, names[h]) is None and scale.inventory().hosts.get(h).last_vm_name is None
    recovers = scale.http(
        "POST", "flow_runs/filter", {"deployments": {"id": {"any_": [scale.api.deployment_id("recover/metalflow")]}}}
    ).json()
    assert any((r.get("created_by") or {}).get("type") == "AUTOMATION" for r in recovers), [
        (r["name"], r.get("created_by")) for r in recovers
    ]

    scale.stack.restart_worker(victim)  # the stack as it was, for whatever runs next


def test_a_worker_process_killed_alone_lets_its_runs_finish(scale):
    """Only the worker process dies (its flow-run processes live on, in sessions of their own):
    their logs to the dead worker's pipe must not kill them. The run completes by itself and
    the host carries its VM, with no record left (4 s after the kill here: printed)."""
    host = "host-005"
    ensure_registered(scale, [host])
    before = deploy_count(scale, host)
    run = scale.trigger("provision", host=host, vm=vm("orphan-5", 215))
    wait_for(lambda: deploy_count(scale, host) > before, 180, f"MAAS deploying {host}", interval=0.1)
    victim = running_on(scale, run.id)
    victim.kill_worker_only()
    killed_at = time.monotonic()
    done = scale.wait(run.id, 300)
    assert done.ok, f"{done.state_name}: {done.message}"
    wait_for(lambda: where_it_stands(scale, host, "orphan-5") is None, 30, f"{host} consistent", interval=1)
    took = time.monotonic() - killed_at
    print(f"\nworker process SIGKILLed alone → its run completed, host consistent in {took:.0f} s")
    assert scale.inventory().hosts.get(host).last_vm_name == "orphan-5"
    scale.stack.restart_worker(victim)  # the stack as it was, for whatever runs next
