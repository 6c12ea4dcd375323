"""The MAAS client against the lab, over real sockets on 127.162.0.0/16.

The whole lab runs in-process (``lab.runner.Lab``): the MAAS simulator powers machines through
the BMC simulators over IPMI, and a machine that PXE-boots reaches MAAS only if its switch
port is untagged in the PXE VLAN, as on real hardware. Faults are the lab's own knobs: MAAS
``set_fault``/``fail_next``, a switch port taken off the PXE VLAN (a phase that hangs), a BMC
that rejects logins (MAAS answers 503 without Retry-After).
"""

from __future__ import annotations

import pickle
import traceback

import pytest
import yaml

from metalflow.integrations.common import Backoff, Secret
from metalflow.integrations.maas import (
    TAG_COMMENT,
    LocalPreseedStore,
    MaasAuthFailed,
    MaasClient,
    MaasConflict,
    MaasNotFound,
    MaasTimeout,
    MaasUnavailable,
    MaasValidationError,
    MaasWrongState,
    NodeStatus,
    Tag,
    render_preseed,
)

runner = pytest.importorskip("metalflow.lab.runner", reason="the lab is not in this checkout")
from metalflow.lab.spec import Timing, generate  # noqa: E402
from metalflow.lab.switch import PortVlans  # noqa: E402

BLOCK = 62  # 127.162.0.0/16, this test file's loopback block
HASH = "$6$mfgoldensalt$gTFB5ASXZKXJHZ7x2I.Vf8necUInQcfX4WHOeJ82nzbkXZ3mlPvpZM7AfL763l9/TEDV6B/nSNb7EKG8S6wb10"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFt7AmGEnzdog0y+zCwJLtTQ8qU6JpXHzZlI/IEA/KQK ops@metalflow"
FAST = Backoff(first=0.01, factor=2, cap=0.05, attempts=5, jitter=False)
WAIT = dict(interval=0.05, max_interval=0.2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("maas-lab")
    spec = generate(
        hosts=22,
        switches=1,
        block=BLOCK,
        workdir=str(workdir),
        dialects=("force10",),
        nics_per_host=(1, 2),
        seed_secrets="test-maas-lab",
        timing=Timing(
            commission=0.2,
            deploy=0.3,
            release=0.05,
            erase=0.2,
            quick_erase=0.1,
            secure_erase=0.3,
            node_timeout=20.0,
            soft_off=0.1,
            boot=0.02,
        ),
    )
    with runner.Lab(spec) as lab:
        client = MaasClient(lab.maas.url, Secret(spec.maas.api_key), timeout=10, retries=FAST, retry_budget=30)
        yield spec, lab, client
        client.close()


def secrets_of(spec):
    out = [spec.maas.consumer_key, spec.maas.token_key, spec.maas.token_secret, spec.maas.api_key]
    out += [h.bmc.password for h in spec.hosts]
    return out


def assert_no_secret(exc: BaseException, spec) -> None:
    """Nothing of the API key, an OAuth header or a BMC password in any view of ``exc``."""
    views = [str(exc), repr(exc), repr(exc.args), repr(vars(exc)), "".join(traceback.format_exception(exc))]
    views.append(pickle.dumps(exc).decode("latin-1"))
    text = "\n".join(views)
    for secret in secrets_of(spec):
        assert secret not in text
    # (MAAS's own body text "Authorization Error: ..." is fine; the header and OAuth fields are not.)
    assert "OAuth " not in text and "oauth_" not in text and "%26" not in text
    assert exc.__cause__ is None or not hasattr(exc.__cause__, "request")


def ready_machine(env, index: int) -> str:
    """Host ``index`` preloaded in MAAS as Ready (as if enlisted and commissioned)."""
    spec, lab, _ = env
    h = spec.hosts[index]
    return lab.maas.add_machine(h.name, list(h.macs), runner.power_parameters(spec, h.name))


def test_register_host_commissions_to_ready_and_is_found_by_mac(env):
    spec, _, client = env
    h = spec.hosts[0]
    assert client.find_by_mac(h.boot_mac) is None
    m = client.create_machine(
        h.name, h.macs, h.bmc.address, h.bmc.username, Secret(h.bmc.password), power_port=h.bmc.port
    )
    assert m.status is NodeStatus.COMMISSIONING and m.hostname == h.name and m.power_type == "ipmi"
    m = client.wait_for_status(m.system_id, NodeStatus.READY, deadline=20, **WAIT)
    assert m.status_name == "Ready"
    found = client.find_by_mac(h.boot_mac.upper().replace(":", "-"))
    assert found is not None and found.system_id == m.system_id
    assert h.boot_mac in found.macs
    renamed = client.rename(m.system_id, "vm-0042")
    assert renamed.hostname == "vm-0042" and client.machine(m.system_id).hostname == "vm-0042"
    assert [x.system_id for x in client.machines(hostname="vm-0042")] == [m.system_id]
    assert m.system_id in {x.system_id for x in client.machines(status=NodeStatus.READY)}
    # Power parameters: a BMC off port 623 is addr:port; the password comes back wrapped.
    client.set_power_parameters(m.system_id, h.bmc.address, "operator", Secret("n3w-bmc-pw"), power_port=16230)
    params = client.power_parameters(m.system_id)
    assert params["power_address"] == f"{h.bmc.address}:16230" and params["power_user"] == "operator"
    assert isinstance(params["power_pass"], Secret) and params["power_pass"].reveal() == "n3w-bmc-pw"
    client.set_power_parameters(
        m.system_id, h.bmc.address, h.bmc.username, Secret(h.bmc.password), power_port=h.bmc.port
    )
    # A second registration of the same MACs is refused by MAAS, naming the field.
    with pytest.raises(MaasValidationError) as ei:
        client.create_machine(
            "dup", h.macs, h.bmc.address, h.bmc.username, Secret(h.bmc.password), power_port=h.bmc.port
        )
    assert "mac_addresses" in ei.value.fields
    assert_no_secret(ei.value, spec)


def test_allocate_tags_bond_and_links(env):
    spec, _, client = env
    h = spec.hosts[1]
    assert len(h.macs) == 2  # every second host has two cabled NICs
    sid = ready_machine(env, 1)
    m = client.allocate(sid, agent_name="metalflow", comment="vm-7")
    assert m.status is NodeStatus.ALLOCATED and m.owner
    with pytest.raises(MaasConflict) as ei:
        client.allocate(sid)
    assert ei.value.status == 409 and "not available" in str(ei.value)
    assert_no_secret(ei.value, spec)

    m = client.add_tag(sid, "account-acme")
    m = client.add_tag(sid, "account-acme")  # already there: still fine
    assert "account-acme" in m.tag_names
    # the tags it creates say so: what cleaning up goes by (never an operator's tag)
    assert Tag("account-acme", TAG_COMMENT) in client.tags() and client.tag_machines("account-acme") == (sid,)
    assert "account-acme" not in client.remove_tag(sid, "account-acme").tag_names
    assert client.tag_machines("account-acme") == ()  # defined, carried by no machine: litter
    client.delete_tag("account-acme")
    client.delete_tag("account-acme")  # already gone: no error
    assert "account-acme" not in {t.name for t in client.tags()} and client.tag_machines("account-acme") == ()
    assert client.remove_tag(sid, "never-created").tag_names == ()
    with pytest.raises(ValueError, match="tag"):
        client.add_tag(sid, "acme corp")

    physical = [i for i in client.interfaces(sid) if i.type == "physical"]
    assert sorted(i.mac_address for i in physical) == sorted(h.macs)
    bond = client.create_bond(sid, "bond0", [i.id for i in physical])
    assert bond.type == "bond" and set(bond.parents) == {i.name for i in physical}
    assert bond.params.get("bond_mode") == "active-backup"
    subnet = next(s for s in client.subnets() if bond.vlan and s.vlan and s.vlan.id == bond.vlan.id)
    bond = client.link_subnet(sid, bond.id, subnet.id, mode="dhcp")
    (link,) = bond.links
    assert link.mode == "dhcp"
    after = {i.name: i for i in client.interfaces(sid)}
    assert after["bond0"].links[0].id == link.id and all(after[p.name].children == ("bond0",) for p in physical)
    # MAAS keeps an unlinked interface up: what remains is at most a LINK_UP link.
    assert {lk.mode for lk in client.unlink_subnet(sid, bond.id, link.id).links} <= {"link_up"}
    assert client.disconnect_interface(sid, bond.id).vlan is None
    fabric_vlans = {v.vid for f in client.fabrics() for v in f.vlans}
    assert spec.maas.pxe_vlan in fabric_vlans


def test_deploy_with_delivered_preseed_then_release(env):
    spec, lab, client = env
    sid = ready_machine(env, 2)
    client.rename(sid, "vm-deploy")
    rendered = render_preseed(
        hostname="vm-deploy",
        osystem="centos",
        release="centos70",
        architecture="amd64/generic",
        root_password_hash=HASH,
        ssh_keys=[SSH_KEY],
    )
    store = LocalPreseedStore(spec.maas.preseed_dir)
    store.write(rendered.filename, rendered.text)
    assert rendered.filename in lab.maas.snapshot()["preseeds"]
    assert client.image_exists("centos/centos70") and client.image_exists("centos70")
    m = client.deploy(sid, "centos/centos70", user_data="#cloud-config\n{}\n", comment="vm-deploy")
    assert m.status is NodeStatus.DEPLOYING
    m = client.wait_for_status(sid, NodeStatus.DEPLOYED, deadline=20, **WAIT)
    assert (m.osystem, m.distro_series, m.power_state) == ("centos", "centos70", "on")
    # What MAAS will give curtin is our template, with MAAS's Tempita filled in.
    config = client.get_curtin_config(sid)
    data = yaml.safe_load(config)
    setup = data["late_commands"]["metalflow_node_setup"][-1]
    assert f"usermod -p '{HASH}' root" in setup and SSH_KEY in setup
    assert data["power_state"] == {"mode": "reboot"}
    assert sid in " ".join(data["late_commands"]["maas"]) and "{{" not in config
    assert client.query_power_state(sid) == "on"
    client.power_off(sid, "hard")
    assert client.query_power_state(sid) == "off"  # queued behind the power-off in MAAS
    assert client.power_on(sid, comment="start vm").status is NodeStatus.DEPLOYED
    assert client.query_power_state(sid) == "on"
    with pytest.raises(ValueError, match="stop_mode"):
        client.power_off(sid, "yank")
    m = client.release(sid, comment="vm destroyed")
    assert m.status in (NodeStatus.RELEASING, NodeStatus.READY)
    m = client.wait_for_status(sid, NodeStatus.READY, deadline=20, **WAIT)
    assert m.osystem == "" and m.owner is None
    store.remove(rendered.filename)


@pytest.mark.parametrize("erase", ["quick", "secure", "full"])
def test_release_with_disk_erase_returns_to_ready(env, erase):
    spec, _, client = env
    sid = ready_machine(env, {"quick": 3, "secure": 4, "full": 5}[erase])
    client.allocate(sid)
    m = client.release(sid, erase=erase)
    assert m.status is NodeStatus.DISK_ERASING
    assert client.wait_for_status(sid, "Ready", deadline=20, **WAIT).status is NodeStatus.READY
    assert client.release(sid).status is NodeStatus.READY  # a no-op on a Ready machine
    with pytest.raises(ValueError, match="erase"):
        client.release(sid, erase="shred")


@pytest.mark.parametrize("index, wait", [(6, WAIT), (20, {"shared": True})], ids=["alone", "shared-watch"])
def test_failed_deployment_ends_the_wait_at_once(env, index, wait):
    spec, lab, client = env
    sid = ready_machine(env, index)
    lab.maas.fail_next("deploy", 1)
    client.deploy(sid, "ubuntu/jammy")
    # A long deadline: only the failure state can end this wait with MaasWrongState.
    with pytest.raises(MaasWrongState) as ei:
        client.wait_for_status(sid, NodeStatus.DEPLOYED, deadline=300, **wait)
    err = ei.value
    assert err.machine_status == "Failed deployment" and err.system_id == sid
    assert "Installation failed" in str(err)
    assert_no_secret(err, spec)
    # A failure state that is the target is simply reached.
    assert client.wait_for_status(sid, NodeStatus.FAILED_DEPLOYMENT, deadline=5, **wait).status_message
    assert client.release(sid).status in (NodeStatus.RELEASING, NodeStatus.READY)
    client.wait_for_status(sid, NodeStatus.READY, deadline=20, **wait)


def test_hung_phase_times_out_naming_the_machine_and_status(env):
    spec, lab, client = env
    h = spec.hosts[7]
    sid = ready_machine(env, 7)
    # Off the PXE VLAN the machine powers on but its PXE ROM gets no DHCP offer: the deploy
    # hangs in Deploying until MAAS's node timeout (20 s here, far beyond our wait).
    for nic in h.nics:
        lab.switches[nic.switch].set_port_vlans(nic.port, PortVlans(untagged=1, tagged=frozenset()))
    try:
        client.deploy(sid, "ubuntu/jammy")
        with pytest.raises(MaasTimeout) as ei:
            client.wait_for_status(sid, NodeStatus.DEPLOYED, deadline=0.5, **WAIT)
        err = ei.value
        assert isinstance(err, TimeoutError) and err.system_id == sid and err.last_status == "Deploying"
        assert sid in str(err) and "Deploying" in str(err)
        assert client.abort(sid).status is NodeStatus.ALLOCATED
    finally:
        for nic in h.nics:
            lab.switches[nic.switch].set_port_vlans(
                nic.port, PortVlans(untagged=spec.maas.pxe_vlan, tagged=frozenset())
            )


class RecordingClock:
    """Real time for ``now``; ``sleep`` only records (the retry delays are the evidence)."""

    def __init__(self):
        import time

        self._mono = time.monotonic
        self.slept: list[float] = []

    def now(self):
        return self._mono() + sum(self.slept)

    def sleep(self, seconds):
        self.slept.append(seconds)


@pytest.mark.parametrize("mode", ["503", "409"])
def test_retry_after_faults_are_ridden_out_with_the_header_as_floor(env, mode):
    spec, lab, _ = env
    sid = ready_machine(env, 8 if mode == "503" else 9)
    clock, calls = RecordingClock(), []
    client = MaasClient(lab.maas.url, spec.maas.api_key, timeout=10, retries=FAST, clock=clock, on_call=calls.append)
    lab.maas.set_fault(mode, 2, retry_after=3)
    m = client.rename(sid, f"vm-retry-{mode}")  # a PUT: the faulted answers changed nothing
    assert m.hostname == f"vm-retry-{mode}"
    assert [c.status for c in calls] == [int(mode), int(mode), 200]
    assert clock.slept == [3.0, 3.0]  # Retry-After (3 s) beats the 0.01-0.02 s backoff


def test_503_beyond_the_retry_budget_is_unavailable(env):
    spec, lab, _ = env
    clock, calls = RecordingClock(), []
    client = MaasClient(lab.maas.url, spec.maas.api_key, timeout=10, retries=FAST, clock=clock, on_call=calls.append)
    lab.maas.set_fault("503", 50, retry_after=1)
    try:
        with pytest.raises(MaasUnavailable) as ei:
            client.machines()
    finally:
        lab.maas.set_fault("none", 0)
    err = ei.value
    assert err.transient and err.status == 503 and len(calls) == FAST.attempts
    assert "rack controller" in str(err)
    assert_no_secret(err, spec)
    # 503 without Retry-After (MAAS could not read the BMC): raised at once, not retried.
    h = spec.hosts[10]
    sid = ready_machine(env, 10)
    lab.bmcs.set_fault(h.name, "reject_auth")
    calls.clear()
    try:
        with pytest.raises(MaasUnavailable) as ei:
            client.query_power_state(sid)
    finally:
        lab.bmcs.set_fault(h.name, "none")
    assert ei.value.status == 503 and len(calls) == 1
    assert client.query_power_state(sid) == "off"


def test_bad_key_is_auth_failed_without_the_key(env):
    spec, lab, _ = env
    wrong = f"{spec.maas.consumer_key}:{spec.maas.token_key}:not-the-{spec.maas.token_secret}"
    with pytest.raises(MaasAuthFailed) as ei:
        MaasClient(lab.maas.url, wrong, retries=FAST).machines()
    assert ei.value.status == 401
    assert "not-the-" not in str(ei.value)
    assert_no_secret(ei.value, spec)
    with pytest.raises(MaasAuthFailed):
        MaasClient(lab.maas.url, "unknown:consumer:key", retries=FAST).machines()


def test_unknown_image_is_a_validation_error_naming_distro_series(env):
    spec, _, client = env
    sid = ready_machine(env, 11)
    assert not client.image_exists("ubuntu/nosuch") and client.image_exists("jammy")
    assert client.image_exists("centos7") and client.image_exists("custom/centos7")
    assert not client.image_exists("ubuntu/jammy", architecture="arm64")
    with pytest.raises(MaasValidationError) as ei:
        client.deploy(sid, "ubuntu/nosuch")
    err = ei.value
    assert "distro_series" in err.fields and "distro_series" in str(err) and err.system_id == sid
    assert_no_secret(err, spec)
    # As in MAAS, deploy allocates a Ready machine before it validates the series: a flow
    # checks image_exists() first, and its undo releases the machine.
    assert client.machine(sid).status is NodeStatus.ALLOCATED


def test_wrong_state_not_found_and_owner_actions(env):
    spec, _, client = env
    sid = ready_machine(env, 12)
    errors = []
    for call in (
        lambda: client.abort(sid),  # nothing to abort in Ready
        lambda: client.power_on(sid),  # not allocated
        lambda: client.mark_fixed(sid),
    ):  # not broken
        with pytest.raises(MaasWrongState) as ei:
            call()
        assert ei.value.status == 409 and ei.value.system_id == sid
        errors.append(ei.value)
    with pytest.raises(MaasNotFound) as ei:
        client.machine("nosuch")
    errors.append(ei.value)
    client.allocate(sid)
    with pytest.raises(MaasWrongState, match="cannot commission"):
        client.commission(sid)  # MAAS answers a form-wide 400 for the state
    assert client.mark_broken(sid, "disk smells of smoke").status is NodeStatus.BROKEN
    assert client.mark_fixed(sid).status is NodeStatus.READY
    for err in errors:
        assert_no_secret(err, spec)


def test_delete_exists_for_operators(env):
    spec, _, client = env
    h = spec.hosts[13]
    m = client.create_machine(
        "to-delete",
        ["02:ff:00:00:00:01"],
        h.bmc.address,
        h.bmc.username,
        Secret(h.bmc.password),
        power_port=h.bmc.port,
        commission=False,
    )
    assert m.status is NodeStatus.NEW
    client.delete_machine(m.system_id)
    assert client.find_by_mac("02:ff:00:00:00:01") is None


# --- the shared status watch: one read per round for every machine waited on ------------------


def watched_client(env, calls: list):
    """A client of its own (its own watch), recording every HTTP exchange it makes."""
    spec, lab, _ = env
    return MaasClient(
        lab.maas.url,
        Secret(spec.maas.api_key),
        timeout=10,
        retries=FAST,
        retry_budget=30,
        on_call=calls.append,
        watch_interval=0.05,
    )


def test_shared_waits_read_every_machine_in_one_request_per_round(env):
    import threading

    _, _, client = env
    sids = [ready_machine(env, i) for i in range(14, 20)]
    calls: list = []
    watcher = watched_client(env, calls)
    results: dict[str, object] = {}

    def wait(sid: str) -> None:
        try:
            results[sid] = watcher.wait_for_status(sid, NodeStatus.DEPLOYED, deadline=30, shared=True)
        except Exception as exc:  # noqa: BLE001 - asserted below
            results[sid] = exc

    for sid in sids:
        client.deploy(sid, "ubuntu/jammy")
    threads = [threading.Thread(target=wait, args=(sid,)) for sid in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {sid: getattr(m, "status", m) for sid, m in results.items()} == {sid: NodeStatus.DEPLOYED for sid in sids}
    watch = watcher.status_watch()
    # Every exchange was the batched list, one per round: no machine was read on its own.
    assert calls and {(c.method, c.path) for c in calls} == {("GET", "machines/")}
    assert len(calls) == watch.requests == watch.rounds
    watcher.close()
    for sid in sids:
        client.release(sid)


def test_shared_wait_rides_out_503_then_times_out_naming_the_status(env):
    _, lab, client = env
    sid = ready_machine(env, 21)
    calls: list = []
    watcher = watched_client(env, calls)
    lab.maas.set_fault("503", 3, retry_after=0)
    try:
        # Ready is reached although the first reads answer 503.
        assert watcher.wait_for_status(sid, NodeStatus.READY, deadline=20, shared=True).status is NodeStatus.READY
        assert any(c.status == 503 for c in calls)
    finally:
        lab.maas.set_fault("none", 0)
    with pytest.raises(MaasTimeout) as ei:
        watcher.wait_for_status(sid, NodeStatus.DEPLOYED, deadline=0.3, shared=True)
    assert ei.value.last_status == "Ready" and sid in str(ei.value)
    # Nobody waits any more: the watch's thread has stopped polling.
    sent = len(calls)
    import time

    time.sleep(0.3)
    assert len(calls) - sent <= 1
    watcher.close()


def test_shared_wait_on_a_deleted_machine_is_not_found(env):
    _, lab, client = env
    h = env[0].hosts[13]
    sid = lab.maas.add_machine(
        "watch-gone", [h.macs[0].replace(h.macs[0][:2], "0a", 1)], runner.power_parameters(env[0], h.name)
    )
    client.delete_machine(sid)
    with pytest.raises(MaasNotFound):
        client.wait_for_status(sid, NodeStatus.READY, deadline=10, shared=True)
