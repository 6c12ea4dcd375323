"""MAAS steps. Each reads the machine first and does nothing when the step already holds, so
a rerun of any run converges without duplicate changes."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from metalflow.integrations.common import Deadline, Secret
from metalflow.integrations.common.values import CRYPT_HASH_FIX, BadValue, parse_crypt_hash, parse_secret_ref
from metalflow.integrations.inventory import HostInfo
from metalflow.integrations.maas import TAG_COMMENT, MaasError, MaasTimeout, MaasWrongState, Machine, NodeStatus
from metalflow.integrations.maas.preseed import hostname_of, is_ours, render_preseed
from metalflow.tasks import clients
from metalflow.tasks.common import logger, runbook_task
from metalflow.tasks.credentials import resolve

S = NodeStatus


class WaitFor(StrEnum):
    """The MAAS statuses a run waits for (``wait_for_status``). A ``StrEnum`` rather than
    ``NodeStatus`` itself (an ``IntEnum`` of MAAS's numbers): Prefect shows the parameter and
    the run name (``wait-for-ready host-007``) by value."""

    READY = "ready"
    DEPLOYED = "deployed"

    @property
    def status(self) -> NodeStatus:
        return NodeStatus[self.name]


def _sid(host: HostInfo) -> str:
    if not host.maas_system_id:
        raise MaasError("the host is not registered in MAAS (run register-host)", target=host.name)
    return host.maas_system_id


@runbook_task(system="maas", name="read-machine")
def read_machine(host: HostInfo) -> Machine:
    return clients.maas().machine(_sid(host))


@runbook_task(system="maas", name="find-or-create-machine")
def find_or_create_machine(host: HostInfo, hostname: str) -> Machine:
    """Adopt the machine that has the host's boot MAC, or enlist it with IPMI power (MAAS
    commissions it). A machine already in MAAS is never re-created."""
    m = clients.maas()
    found = m.find_by_mac(host.boot_mac)
    if found is not None:
        logger().info("adopting %s (%s) already in MAAS as %s", found.system_id, found.status.label, found.hostname)
        return found
    address = host.ipmi_address if host.ipmi_port == 623 else f"{host.ipmi_address}:{host.ipmi_port}"
    macs = [n.mac for n in host.nics] or [host.boot_mac]
    return m.create_machine(
        hostname,
        macs,
        address,
        host.ipmi_username,
        resolve(host.ipmi_credential_ref),
        architecture=host.arch,
        commission=True,
    )


@runbook_task(system="maas", name="commission-machine")
def commission_machine(host: HostInfo, system_id: str) -> str:
    """Commission a machine MAAS holds as New or Failed commissioning (an adopted one)."""
    m = clients.maas()
    current = m.machine(system_id)
    if current.status in (S.NEW, S.FAILED_COMMISSIONING):
        m.commission(system_id)
        return "commissioning started"
    return f"no commissioning needed ({current.status.label})"


@runbook_task(system="maas", name="wait-for-status", run_name="wait-for-{want} {host.name}", retries=1)
def wait_for_status(host: HostInfo, system_id: str, want: WaitFor, timeout: float, phase: str = "") -> Machine:
    """Wait with a deadline; a failure state ends the wait at once with MAAS's message. The
    wait goes through the process's shared status watch: one MAAS read per round for every
    machine any run of this process waits on, a round a second (``MaasClient.status_watch``).

    ``phase`` (commission, deploy, erase) names the MAAS phase being waited for: its deadline
    is the ``<phase>_timeout`` setting, and a phase that outlives it fails saying so."""
    try:
        return clients.maas().wait_for_status(system_id, WaitFor(want).status, deadline=Deadline(timeout), shared=True)
    except MaasTimeout as exc:
        if not phase:
            raise
        raise MaasTimeout(
            f"{phase} phase did not finish within {timeout:g} s (the {phase}_timeout setting, "
            f"METALFLOW_{phase.upper()}_TIMEOUT); MAAS still has {host.name} ({system_id}) "
            f"{exc.last_status or 'in an unknown state'}",
            system_id=system_id,
            op=f"wait for {phase}",
            last_status=exc.last_status,
        ) from None
    except MaasWrongState as exc:
        if not phase:
            raise
        raise MaasWrongState(
            f"{phase} phase failed: {exc.message}",
            machine_status=exc.machine_status,
            system_id=system_id,
            op=f"wait for {phase}",
            excerpt=exc.excerpt,
        ) from None


@runbook_task(system="maas", name="rename-machine", run_name="rename-machine {host.name} {hostname}")
def rename_machine(host: HostInfo, hostname: str) -> str:
    m = clients.maas()
    current = m.machine(_sid(host))
    if current.hostname == hostname:
        return f"already named {hostname}"
    m.rename(current.system_id, hostname)
    return f"{current.hostname} → {hostname}"


@runbook_task(system="maas", name="create-bond")
def create_bond(host: HostInfo, macs: list[str]) -> str:
    """An active-backup bond over the cabled interfaces, its MAC the boot NIC's, linked by
    DHCP on the subnet whose VLAN serves DHCP (as the original CloudStack plugin did)."""
    m = clients.maas()
    sid = _sid(host)
    ifaces = m.interfaces(sid)
    wanted = {mac.lower() for mac in macs}
    parents = [i for i in ifaces if i.type == "physical" and i.mac_address in wanted]
    if len(parents) != len(wanted):
        raise MaasError(
            "MAAS does not know every cabled interface of the host",
            target=f"{host.name} {sid}",
            excerpt=f"cabled {sorted(wanted)}",
        )
    existing = [i for i in ifaces if i.type == "bond" and set(i.parents) == {p.name for p in parents}]
    if existing:
        bond = existing[0]
        if any(link.mode == "dhcp" for link in bond.links):
            return f"bond {bond.name} already there"
    else:
        bond = m.create_bond(sid, "bond0", [p.id for p in parents], mode="active-backup", mac_address=host.boot_mac)
    subnet = next((s for s in m.subnets() if s.vlan is not None and s.vlan.dhcp_on), None)
    m.link_subnet(sid, bond.id, subnet.id if subnet else None, mode="dhcp", force=True)
    return f"bond {bond.name} (active-backup) over {', '.join(p.name for p in parents)}"


@runbook_task(system="maas", name="allocate-machine")
def allocate_machine(host: HostInfo) -> str:
    m = clients.maas()
    current = m.machine(_sid(host))
    if current.status in (S.ALLOCATED, S.DEPLOYING, S.DEPLOYED):
        return f"already {current.status.label}"
    m.allocate(current.system_id, comment="metalflow provision")
    return "allocated"


@runbook_task(system="maas", name="tag-machine")
def tag_machine(host: HostInfo, tags: list[str]) -> list[str]:
    m = clients.maas()
    current = m.machine(_sid(host))
    added = []
    for tag in tags:
        if tag not in current.tag_names:
            m.add_tag(current.system_id, tag)
            added.append(tag)
    return added


@runbook_task(system="maas", name="untag-machine")
def untag_machine(host: HostInfo, prefixes: list[str]) -> list[str]:
    m = clients.maas()
    current = m.machine(_sid(host))
    removed = [t for t in current.tag_names if any(t.startswith(p) for p in prefixes)]
    for tag in removed:
        m.remove_tag(current.system_id, tag)
    # A tag metalflow created that no machine carries any more goes too (an account's tag stays
    # while another of its machines carries it). A provision tagging with it at this moment
    # makes it again (``MaasClient.add_tag``).
    ours = {t.name for t in m.tags() if t.comment == TAG_COMMENT}
    for tag in removed:
        if tag in ours and not m.tag_machines(tag):
            m.delete_tag(tag)
    return removed


@dataclass(frozen=True)
class DeliveredPreseed:
    filename: str
    masked_text: str

    def __str__(self) -> str:  # the report's cell and the journal line: the file, not its text
        return self.filename


@runbook_task(system="maas", name="deliver-preseed")
def deliver_preseed(
    host: HostInfo,
    hostname: str,
    image: str,
    root_password_ref: str | None,
    ssh_keys: list[str],
) -> DeliveredPreseed:
    """Render the curtin preseed for this node and write it as MAAS's most specific
    per-node file, so MAAS picks it for this deployment and no other.

    The root password's crypt hash comes by reference (``root_password_ref``) and is resolved
    here, on the worker: it is never a flow-run parameter, which Prefect stores and shows."""
    m = clients.maas()
    resource = m.find_image(image)
    if resource is None:
        raise MaasError(f"image {image!r} is not in MAAS", target=host.name)
    osystem, _, release = resource.name.rpartition("/")
    pw_hash: Secret | None = None
    if root_password_ref:
        pw_hash = _root_password_hash(root_password_ref)
    rendered = render_preseed(
        hostname=hostname,
        osystem=osystem or "custom",
        release=release,
        architecture=host.arch,
        root_password_hash=pw_hash,
        ssh_keys=ssh_keys,
    )
    clients.preseed_store().write(rendered.filename, rendered.text)
    return DeliveredPreseed(rendered.filename, rendered.masked().text)


@runbook_task(system="maas", name="remove-preseeds", run_name="remove-preseeds {host.name} {hostname}")
def remove_preseeds(host: HostInfo, hostname: str) -> list[str]:
    """Remove the per-node preseed files metalflow wrote for ``hostname`` (a VM's name): once
    MAAS deployed the machine, or when the deployment is rolled back. Files metalflow did not
    write (no mark) stay."""
    store = clients.preseed_store()
    gone = []
    for name in store.names():
        if hostname_of(name) == hostname and is_ours(store.read(name)):
            store.remove(name)
            gone.append(name)
    return gone


def _root_password_hash(ref: str) -> Secret:
    """The crypt hash ``ref`` names. What it resolves to is checked as a crypt hash; the error
    names the reference, never what was found there (a plain password stored by mistake)."""
    field = "vm.root_password_ref"
    secret = resolve(str(parse_secret_ref(ref, field)))
    try:
        return Secret(parse_crypt_hash(secret.reveal(), field))
    except BadValue:
        raise BadValue(field, f"what {ref} holds is not usable: {CRYPT_HASH_FIX}") from None


@runbook_task(system="maas", name="deploy-machine", run_name="deploy-machine {host.name} {image}")
def deploy_machine(host: HostInfo, image: str) -> str:
    m = clients.maas()
    current = m.machine(_sid(host))
    if current.status in (S.DEPLOYING, S.DEPLOYED):
        return f"already {current.status.label}"
    m.deploy(current.system_id, image, comment="metalflow provision")
    return f"deploying {image}"


@runbook_task(system="maas", name="release-machine", run_name="release-machine {host.name} erase={erase}")
def release_machine(host: HostInfo, erase: str) -> str:
    m = clients.maas()
    current = m.machine(_sid(host))
    if current.status in (S.READY, S.RELEASING, S.DISK_ERASING):
        return f"already {current.status.label}"
    if current.status in (S.COMMISSIONING, S.TESTING):
        m.abort(current.system_id)
        current = m.machine(current.system_id)
    m.release(current.system_id, erase=erase, comment="metalflow")
    return f"released (erase: {erase})"


@runbook_task(system="maas", name="check-image", retries=2)
def image_exists(host: HostInfo, image: str, architecture: str | None = None) -> bool:
    return clients.maas().image_exists(image, architecture)
