"""The actions CloudStack calls, each a flow run on metalflow's Prefect deployments.

One ``Extension`` per call: the configuration, the parsed payload, a deadline safely below
CloudStack's ``wait``, and (made on first use) the inventory and the Prefect API. Every
action finds the machine, starts or re-attaches to the matching flow run (``runs``), waits
within the deadline and answers: completed is success, failed is an error carrying the run's
own reason, still going is an error that says so and how to re-attach.

Placement. The seed's model: each CloudStack host is one server, named by the host detail
``metalflow_host`` (inventory name or CloudStack id). The 4.22 pool model: ``prepare`` claims
a free machine that fits and CloudStack saves it as the VM detail ``External:metalflow_host``.
Either way the claim in the inventory ties the VM to its machine until ``delete``; later
actions (whose payloads carry no NICs) find the machine by that claim.

CloudStack's real lifecycle (reference notes, section 7) decides the rest:

- a claim ``prepare`` makes is a lease (``lease_seconds``): CloudStack sends no ``delete`` for
  a VM whose first start failed, so an expired lease is released by the next ``prepare`` and
  by the scheduled audit; a ``create`` keeps it while its run lives; a completed provision
  makes it the VM's placement;
- a failed start is retried up to ``start.retry`` times, on the same host as often as not,
  with a cleanup ``stop`` (VM state ``Starting``) after each try: that stop never powers off a
  machine a create is installing or has installed for this first deploy; after
  ``create_failure_limit`` failed provisions in a row a VM fails at once, and the machine
  the last one changed is held in maintenance;
- the NIC list in ``create`` and ``start`` payloads is the truth: the ports follow it;
- a pin (``metalflow_host`` or ``maas_system_id`` in the VM's details) is honoured or refused;
- every VM value is checked with the provision flow's own model (``integrations.common.vm``)
  before anything is claimed or destroyed.

The tenant boundary. A tenant may set VM details (the deploy call's ``details``), so nothing
read from them reaches what belongs to someone else:

- a machine named by a ``metalflow_host`` detail is used only when it is this VM's (its claim,
  the VM installed on it) or free; a machine another VM holds or carries answers "not
  available", naming neither that VM nor its uuid, and nothing changes (``NotAvailable``);
- a ``root_password_ref`` from VM details must lie inside the operator's
  ``tenant_secret_scope`` (empty by default: refused), checked before anything changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from metalflow.integrations.cloudstack.answer import Answer, no_console
from metalflow.integrations.cloudstack.extension_config import ExtensionConfig
from metalflow.integrations.cloudstack.payload import Payload, PayloadError, parse_vlan
from metalflow.integrations.cloudstack.runs import TAG, ExtensionApi, Runs
from metalflow.integrations.common import Deadline, MetalflowError
from metalflow.integrations.common.names import ROLLBACK_INCOMPLETE, ROLLED_BACK
from metalflow.integrations.common.values import BadValue, parse_image, parse_secret_ref
from metalflow.integrations.common.vm import Vm
from metalflow.integrations.inventory import (
    ClaimConflict,
    ClaimInfo,
    HostInfo,
    HostNotFound,
    HostUnfit,
    Inventory,
    InventoryError,
    NoFreeHost,
)
from metalflow.integrations.prefectapi import FlowRun, PrefectApiError, PrefectBadRequest


class ActionError(MetalflowError):
    """The action cannot be done as asked; nothing was changed."""


class NotAvailable(ActionError):
    """A machine named for this VM is not this VM's: another VM holds or carries it, or there is
    no such machine. The message names neither the other VM nor whether the machine exists."""

    def __init__(self, where: str, vm_uuid: str):
        super().__init__(f"the machine named by {where} is not available to VM {vm_uuid}")


class FailingFast(ActionError):
    """The VM's provision failed ``create_failure_limit`` times in a row: not tried again."""


#: Where a tenant-writable ``metalflow_host`` and the operator's one come from.
VM_HOST_DETAIL = "externaldetails.virtualmachine.metalflow_host"
VM_SYSTEM_ID_DETAIL = "externaldetails.virtualmachine.maas_system_id"
HOST_DETAIL = "externaldetails.host.metalflow_host"
ROOT_REF_DETAIL = "externaldetails.virtualmachine.root_password_ref"
#: The detail ``prepare`` adds beside the machine it picked itself: the ``metalflow_host`` and
#: ``maas_system_id`` it answered come back in the next try's payload, and are then a
#: preference (the machine if it is still free), not a pin. Forging it only softens a pin.
PLACEMENT_DETAIL = "External:metalflow_placement"
AUTO, PINNED = "auto", "pinned"
CUSTOM = frozenset({"plugnetwork", "unplugnetwork", "reinstall"})


class Extension:
    def __init__(
        self,
        cfg: ExtensionConfig,
        payload: Payload,
        deadline: Deadline,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ):
        self.cfg = cfg
        self.p = payload
        self.deadline = deadline
        self.log = log

    # --- clients, made when first needed ----------------------------------------------------
    @cached_property
    def inventory(self) -> Inventory:
        return Inventory(self.cfg.inventory_url, write_deadline=min(30.0, max(1.0, self.deadline.remaining())))

    @cached_property
    def runs(self) -> Runs:
        api = ExtensionApi(
            self.cfg.prefect_api_url, auth_string=self.cfg.prefect_auth_string, timeout=self.cfg.request_timeout
        )
        return Runs(api, self.cfg.deployment)

    def close(self) -> None:
        if "inventory" in self.__dict__:
            self.inventory.dispose()

    # --- placement --------------------------------------------------------------------------
    def locate(self) -> HostInfo | None:
        """The VM's machine: its claim, the host that carries it, else the machine a detail
        names (what prepare saved in the VM's details, or the CloudStack host's server in the
        seed model) when that machine is free. ``NotAvailable`` when the detail names a machine
        that is not this VM's, or none at all (the same answer: a tenant learns nothing)."""
        uuid = self.p.require_vm()
        mine = self.inventory.claims.host_for_vm(uuid)
        if mine is not None:
            return mine
        for hint, where in (
            (self.p.virtualmachine.get("metalflow_host"), VM_HOST_DETAIL),
            (self.p.host.get("metalflow_host"), HOST_DETAIL),
        ):
            if hint:
                host = self.inventory.hosts.find(str(hint))
                if host is None or not self._free_for_me(host):
                    self.log.warning("%s names %s: not in the inventory or another VM's", where, hint)
                    raise NotAvailable(where, uuid)
                return host
        return None

    def _free_for_me(self, host: HostInfo) -> bool:
        """Whether ``host`` carries this VM, or carries none and no other VM holds its claim."""
        uuid = self.p.require_vm()
        if host.last_vm_uuid is not None:
            return host.last_vm_uuid == uuid
        return not any(c.host == host.name and c.vm_uuid != uuid for c in self.inventory.claims.all())

    def _holds(self, host: HostInfo) -> bool:
        """Whether this VM is installed on ``host`` or holds its claim."""
        uuid = self.p.require_vm()
        if host.last_vm_uuid == uuid:
            return True
        claim = self.inventory.claims.for_vm(uuid)
        return claim is not None and claim.host == host.name

    def auto_placed(self) -> bool:
        """Whether the machine in the VM's details is one ``prepare`` picked itself."""
        return self.p.detail("metalflow_placement") == AUTO

    def pin(self) -> tuple[HostInfo, str] | None:
        """The machine a pin names and where the pin is written: the operator's host detail
        ``metalflow_host`` (the seed's one server per CloudStack host), else the VM's details
        ``metalflow_host`` and ``maas_system_id`` (a deploy-time pin, as CloudStack's own
        maas.py honours ``maas_system_id``), unless ``prepare`` wrote them itself. A VM pin that
        names no machine, or two pins naming two machines, is ``NotAvailable``."""
        uuid = self.p.require_vm()
        operator = self.p.host.get("metalflow_host")
        if operator:
            return self._host_named(str(operator), HOST_DETAIL), HOST_DETAIL
        if self.auto_placed():
            return None
        found: HostInfo | None = None
        where = ""
        name, name_at = self.p.detail_at("metalflow_host")
        if name:
            found, where = self.inventory.hosts.find(name), name_at
            if found is None:
                raise NotAvailable(name_at, uuid)
        system_id, sid_at = self.p.detail_at("maas_system_id")
        if system_id:
            by_id = self.inventory.hosts.by_system_id(system_id)
            if by_id is None or (found is not None and by_id.name != found.name):
                raise NotAvailable(sid_at, uuid)
            found, where = by_id, where or sid_at
        return (found, where) if found is not None else None

    def _fit(self) -> dict[str, Any]:
        """The VM's size and architecture, as a claim checks them."""
        return {
            "min_cpus": self.p.cpus or 0,
            "min_memory_mb": self.p.min_memory_mb,
            "arch": self.p.architecture(),
        }

    def place_for_create(self, vm_name: str) -> HostInfo:
        uuid = self.p.require_vm()
        claim = self.inventory.claims.for_vm(uuid)
        pin = self.pin()
        if pin is not None:
            host, where = pin
            if claim is not None and claim.host != host.name:
                self._let_go_of(claim.host)
            return self._claim(host, vm_name, where)
        if claim is not None:
            return self.inventory.hosts.get(claim.host)
        chosen = self.p.detail("metalflow_host")
        if chosen:  # prepare's pick, its claim released after a failed create: CloudStack retried without prepare
            named = self.inventory.hosts.find(chosen)
            if named is None:  # the same answer as another VM's machine: nothing to learn
                raise NotAvailable(VM_HOST_DETAIL, uuid)
            return self._claim(named, vm_name, VM_HOST_DETAIL)
        raise ActionError(
            f"no machine for VM {uuid}: either create the extension with orchestratorrequirespreparevm=true "
            "(prepare picks a free machine) or give the CloudStack host the detail metalflow_host "
            "(one server per CloudStack host)"
        )

    def _claim(self, host: HostInfo, vm_name: str, where: str, *, fit: bool = False) -> HostInfo:
        """Claim ``host`` (named by a detail) for this VM, or ``NotAvailable`` when another VM
        holds or carries it; the inventory's own message, which names that VM, goes to the
        extension's log only. ``fit``: a machine that cannot take the VM is refused, saying
        why in words that name no other VM (a tenant may have written the pin)."""
        uuid = self.p.require_vm()
        if not self._free_for_me(host):
            self.log.warning("%s names %s, which another VM holds or carries", where, host.name)
            raise NotAvailable(where, uuid)
        try:
            return self.inventory.claims.claim(
                uuid,
                vm_name=vm_name,
                host=host.name,
                lease_seconds=self.cfg.lease_seconds,
                fit=fit,
                **(self._fit() if fit else {}),
            )
        except ClaimConflict as exc:  # claimed by another VM a moment ago
            self.log.warning("%s: %s", where, exc)
            raise NotAvailable(where, uuid) from None
        except HostUnfit as exc:
            self.log.warning("%s: %s", where, exc)
            told = str(exc) if where == HOST_DETAIL else exc.why  # the operator's own detail: every word
            raise ActionError(
                f"{where}: the machine pinned for VM {uuid} cannot take it ({told}); nothing was claimed: "
                "pin another machine or remove the pin"
            ) from None

    def _host_named(self, key: str, where: str) -> HostInfo:
        try:
            return self.inventory.hosts.get(key)
        except HostNotFound:
            raise ActionError(f"{where}: no host {key!r} in metalflow's inventory (by name or CloudStack id)") from None

    def _let_go_of(self, other: str) -> None:
        """CloudStack moved a VM whose earlier create did not finish to another host: release
        the old claim, unless the VM is (being) installed there."""
        uuid = self.p.require_vm()
        host = self.inventory.hosts.get(other)
        if host.last_vm_uuid == uuid or self.runs.live(uuid, "create", other, deadline=self._call_deadline()):
            raise ActionError(
                f"VM {uuid} is installed, or being installed, on {other}: delete it there first "
                "(CloudStack gave up waiting for that create)"
            )
        self.inventory.claims.release(uuid)
        self.log.info("released the claim on %s: CloudStack places the VM on another machine", other)

    def _call_deadline(self) -> Deadline:
        return Deadline(max(1.0, min(30.0, self.deadline.remaining())))

    # --- leases and failures ----------------------------------------------------------------
    def reap_leases(self) -> list[ClaimInfo]:
        """Free the machines whose lease ran out with no create running (CloudStack expunges a
        VM whose first start failed without calling the extension). Best effort: when Prefect
        or the inventory cannot say, nothing is released and prepare goes on."""
        try:
            released = self.inventory.claims.reap(self._create_live)
        except (InventoryError, PrefectApiError) as exc:
            self.log.warning("expired leases not checked: %s", exc)
            return []
        for claim in released:
            self.log.info("lease expired: released %s (VM %s, %s)", claim.host, claim.vm_uuid, claim.state)
        return released

    def drop_lease(self) -> None:
        """Release this VM's lease (never a provisioning claim or a placement)."""
        uuid = self.p.vm_uuid
        if not uuid:
            return
        claim = self.inventory.claims.for_vm(uuid)
        if claim is not None and claim.state == "leased":
            self.inventory.claims.release(uuid)
            self.log.info("released the lease on %s: the create cannot be done as asked", claim.host)

    def _create_live(self, claim: ClaimInfo) -> bool:
        return self.runs.live(claim.vm_uuid, "create", claim.host, deadline=self._call_deadline()) is not None

    def failures(self) -> list[FlowRun]:
        """The VM's provisions (creates) that failed in a row, newest first: since its last
        completed one. Crashed and cancelled runs are not the VM's failures and are skipped."""
        uuid = self.p.require_vm()
        streak: list[FlowRun] = []
        tags = [TAG, f"vm:{uuid}", "op:create"]
        deadline = Deadline(max(1.0, min(5.0, self.deadline.remaining())))
        for run in self.runs.api.runs_tagged(tags, limit=20, deadline=deadline):
            if run.state_type == "COMPLETED":
                break
            if run.state_type == "FAILED":
                streak.append(run)
        return streak

    def fail_fast(self, *, best_effort: bool = False) -> None:
        """``FailingFast`` when the VM's provision failed ``create_failure_limit`` times in a
        row; its lease (not its placement) is released first. ``best_effort``: when Prefect
        cannot say, go on (the run that follows needs Prefect, and says so)."""
        try:
            streak = self.failures()
        except PrefectApiError as exc:
            if not best_effort:
                raise
            self.log.warning("earlier failures not checked: %s", exc)
            return
        if len(streak) < self.cfg.create_failure_limit:
            return
        uuid = self.p.require_vm()
        claim = self.inventory.claims.for_vm(uuid)
        if claim is not None and claim.state != "placed":
            self.inventory.claims.release(uuid)
        first = streak[-1]
        host = str(first.parameters.get("host") or "?")
        raise FailingFast(
            f"VM {uuid}: its provision failed {len(streak)} times in a row, so metalflow does not run it again "
            f"(limit create_failure_limit={self.cfg.create_failure_limit}). First failure: {first.name or first.id} "
            f"on {host}: {first.message or 'no reason given'}. Fix the cause, then deploy the VM again"
        )

    def hold_if_failing(self, host: HostInfo, run: FlowRun) -> str:
        """After a failed provision: when it is the VM's ``create_failure_limit``-th in a row and
        it changed the machine (rolled back), hold the machine in maintenance so no prepare
        hands it out again until an operator clears it. A provision refused before any change
        (a bad image, the PXE VLAN) says nothing about the machine and holds nothing."""
        streak = self.failures()
        if len(streak) < self.cfg.create_failure_limit:
            return ""
        if not any(mark in run.message for mark in (ROLLED_BACK, ROLLBACK_INCOMPLETE)):
            return ""
        uuid = self.p.require_vm()
        reason = (
            f"held by the CloudStack extension: {len(streak)} provisions of VM {uuid} failed in a row "
            f"(last: {run.name}: {run.message})"
        )[:400] + f"; clear with `metalflow maintenance {host.name} --off`"
        try:
            self.inventory.power.set_maintenance(host.name, True, reason)
        except InventoryError as exc:
            self.log.warning("could not hold %s: %s", host.name, exc)
            return ""
        self.log.warning("%s held in maintenance: %s", host.name, reason)
        return f"; {host.name} is held in maintenance until an operator clears it"

    # --- runs -------------------------------------------------------------------------------
    def run(self, flow: str, params: dict[str, Any], *, label: str, host: str) -> FlowRun:
        uuid = self.p.require_vm()
        run, attached = self.runs.start_or_attach(
            flow, params, vm_uuid=uuid, label=label, host=host, deadline=self._call_deadline()
        )
        self.log.info(
            "%s run %s (%s) for %s on %s: %s",
            "re-attached to" if attached else "started",
            run.name or flow,
            run.id,
            label,
            host,
            run.state_name,
        )
        final = self.runs.wait(run, self.deadline, interval=self.cfg.poll_interval)
        self.log.info("run %s (%s): %s %s", final.name, final.id, final.state_name, final.message)
        return final

    def outcome(self, run: FlowRun, done: str, **extra: Any) -> Answer:
        info = {"run_id": run.id, "run_name": run.name, "state": run.state_name, **extra}
        if run.ok:
            return Answer.success(done, **info)
        if run.final:
            return Answer.error(
                f"{run.name or 'the run'} ended {run.state_name}: {run.message or 'no reason given'}", **info
            )
        hint = (
            " (nothing has picked it up: is `metalflow serve` or a worker running?)"
            if run.state_type == "SCHEDULED"
            else ""
        )
        return Answer.error(
            f"{run.name or 'the run'} is still {run.state_name} after {self.deadline.elapsed():.0f} s"
            f"{hint}; it goes on: the same call again re-attaches to run {run.id}",
            still_running=True,
            **info,
        )

    def record_power(self, host: str, state: str) -> None:
        """Store the state the flow just verified, so ``status`` does not answer from a
        reading taken before the change (best effort: the next power-poll stores it too)."""
        try:
            self.inventory.power.record(host, state)
        except Exception as exc:  # noqa: BLE001
            self.log.warning("could not record power %s for %s: %s", state, host, exc)

    def _carried(self, verb: str) -> HostInfo:
        uuid = self.p.require_vm()
        host = self.locate()
        if host is None:
            raise ActionError(f"cannot {verb} VM {uuid}: no machine holds it (was it created?)")
        if host.last_vm_uuid != uuid:
            raise ActionError(
                f"cannot {verb} VM {uuid}: it is not installed on {host.name} "
                f"({'another VM is' if host.last_vm_uuid else 'no VM installed'})"
            )
        return host

    # --- the VM, checked with the flow's own rules ------------------------------------------
    def vm_params(self, *, at_prepare: bool = False) -> dict[str, Any]:
        """The ``vm`` parameter of provision, from the payload, checked with the flow's model
        (``Vm``) so that nothing the flow would refuse is claimed or run. At ``prepare`` a NIC
        whose network is not implemented yet has no VLAN (CloudStack assigns it later): the
        other rules still hold."""
        vm: dict[str, Any] = {
            "name": self.p.vm_name(),
            "uuid": self.p.require_vm(),
            "image": self.p.image(),
            "nics": self.p.flow_nics(pending_ok=at_prepare),
            "owner": self.p.owner(),
        }
        arch = self.p.architecture()
        if arch:
            vm["architecture"] = arch
        ref = self.p.detail("root_password_ref")
        if ref:
            vm["root_password_ref"] = self.tenant_ref(ref)
        keys = self.p.ssh_keys()
        if keys:
            vm["ssh_keys"] = keys
        if at_prepare:
            return self.validated(vm, standing_in=True)
        return self.validated(vm)

    @staticmethod
    def validated(vm: dict[str, Any], *, standing_in: bool = False) -> dict[str, Any]:
        """``vm`` through the provision flow's ``Vm`` model: the same rules, the same words,
        nothing quoted (a field may hold a pasted secret). ``standing_in``: NICs whose VLAN is
        not known yet (None) are checked with a stand-in VLAN of their own."""
        checked = dict(vm)
        if standing_in:
            known = {n["vlan"] for n in vm["nics"] if n["vlan"] is not None}
            spare = (x for x in range(4094, 1, -1) if x not in known)
            checked["nics"] = [dict(n, vlan=next(spare)) if n["vlan"] is None else n for n in vm["nics"]]
        try:
            Vm.model_validate(checked)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(part) for part in first["loc"])
            raise PayloadError(
                f"{first['msg']} (the provision flow's rule; nothing was claimed or changed)",
                field=f"vm.{loc}" if loc else "vm",
            ) from None
        return vm  # the model changes no value: what it accepted is what the flow gets

    def tenant_ref(self, text: object) -> str:
        """A ``root_password_ref`` from VM details, checked against the operator's
        ``tenant_secret_scope``: a tenant may name only the secrets the operator set aside for
        tenants. The answer never quotes the reference (it may be a pasted secret) nor the
        scope."""
        try:
            ref = parse_secret_ref(text, ROOT_REF_DETAIL)
        except BadValue as exc:
            raise PayloadError(exc.reason, field=exc.field) from None
        if not self.cfg.tenant_secret_scope:
            raise ActionError(
                f"{ROOT_REF_DETAIL}: a secret reference in VM details is not accepted here (the operator "
                "allows none: tenant_secret_scope in the extension's configuration); nothing was done"
            )
        if not ref.within(self.cfg.tenant_secret_scope):
            raise ActionError(
                f"{ROOT_REF_DETAIL}: the reference is outside the scope the operator allows for VM details "
                "(tenant_secret_scope); nothing was done"
            )
        return str(ref)

    # --- actions ----------------------------------------------------------------------------
    def prepare(self) -> Answer:
        """Claim the machine (a pin's, else the smallest free one that fits) as a lease and
        tell CloudStack its MAC, so the virtual router's DHCP answers the real machine.
        Returns only the merge patch: every NIC echoed, the default NIC's ``mac`` replaced,
        and the machine as ``External:`` details."""
        uuid = self.p.require_vm()
        vm = self.vm_params(at_prepare=True)  # every rule the flow applies, before any claim
        if self.p.detail("metalflow_placement"):  # an earlier try's prepare: CloudStack is retrying
            self.fail_fast(best_effort=True)
        self.reap_leases()
        pin = self.pin()
        if pin is not None:
            host, where = pin
            mine = self.inventory.claims.for_vm(uuid)
            if mine is not None and mine.host != host.name:
                self._let_go_of(mine.host)
            host = self._claim(host, vm["name"], where, fit=True)
        else:
            host = self._auto_claim(vm["name"])
        self.log.info(
            "VM %s (%s) placed on %s (%s)%s", uuid, vm["name"], host.name, host.boot_mac, "" if pin else " (auto)"
        )
        patch: dict[str, Any] = {
            "details": {
                "External:metalflow_host": host.name,
                "External:maas_system_id": host.maas_system_id or "",
                "External:mac_address": host.boot_mac,
                PLACEMENT_DETAIL: PINNED if pin else AUTO,
            }
        }
        if self.p.nics:
            patch["nics"] = [dict(n.raw, mac=host.boot_mac) if n.default else dict(n.raw) for n in self.p.nics]
        return Answer(True, patch)

    def _auto_claim(self, vm_name: str) -> HostInfo:
        """The machine an earlier try's prepare picked, when it is still free and fit (the
        same host again, as CloudStack expects), else the smallest free one that fits."""
        uuid = self.p.require_vm()
        earlier = self.p.detail("metalflow_host") if self.auto_placed() else None
        if earlier:
            try:
                return self.inventory.claims.claim(
                    uuid, vm_name=vm_name, host=earlier, lease_seconds=self.cfg.lease_seconds, fit=True, **self._fit()
                )
            except (ClaimConflict, HostUnfit, HostNotFound) as exc:
                self.log.info("the machine of the earlier try (%s) is not free now: %s", earlier, exc)
        return self.inventory.claims.claim(uuid, vm_name=vm_name, lease_seconds=self.cfg.lease_seconds, **self._fit())

    def create(self) -> Answer:
        try:
            vm = self.vm_params()  # every payload check before anything changes
            erase = self.p.erase_mode(self.cfg.erase_default)
        except (PayloadError, ActionError):
            self.drop_lease()  # this payload cannot be created: the machine prepare set aside goes back
            raise
        host = self.place_for_create(vm["name"])
        if host.last_vm_uuid not in (None, vm["uuid"]):
            raise ActionError(f"{host.name} is not available to VM {vm['uuid']}: another VM is installed on it")
        if host.last_vm_uuid is None:
            self.fail_fast(best_effort=True)  # without Prefect the run cannot start anyway, and says so
        self.inventory.claims.begin(vm["uuid"], lease_seconds=self.cfg.lease_seconds)
        try:
            run = self.run(
                "provision", {"host": host.name, "vm": vm, "erase_on_failure": erase}, label="create", host=host.name
            )
        except PrefectBadRequest:
            # Prefect refused the run's parameters: no run exists, the claim must not outlive it.
            if host.last_vm_uuid is None:
                self.inventory.claims.release(vm["uuid"])
            raise
        held = ""
        if run.ok:
            self.record_power(host.name, "on")
            self.inventory.claims.place(vm["uuid"])
        elif run.state_type == "FAILED":
            # The flow undid its changes before failing: the machine is free for the retry
            # CloudStack makes (prepare may pick it again), unless it failed once too often.
            released = self.inventory.claims.release(vm["uuid"])
            self.log.info("create failed on %s; claim released: %s", host.name, bool(released))
            held = self.hold_if_failing(host, run)
        answer = self.outcome(run, f"{vm['name']} is running on {host.name} ({vm['image']})", host=host.name)
        if held:
            answer = Answer(False, dict(answer.body, message=str(answer.body["message"]) + held))
        return answer

    def start(self) -> Answer:
        """Power on, with the ports converged to the payload's NICs first: CloudStack lets a
        user add or remove NICs of a stopped VM, and only this start can bring the switch
        ports along (a network removed while stopped is off the ports before power-on)."""
        host = self._carried("start")
        params: dict[str, Any] = {"host": host.name}
        if self.p.nics:
            params["nics"] = self.p.flow_nics()
        run = self.run("start", params, label="start", host=host.name)
        if run.ok:
            self.record_power(host.name, "on")
        return self.outcome(run, f"{host.name} is on", host=host.name)

    def reboot(self) -> Answer:
        host = self._carried("reboot")
        run = self.run("reboot", {"host": host.name}, label="reboot", host=host.name)
        if run.ok:
            self.record_power(host.name, "on")
        return self.outcome(run, f"{host.name} rebooted", host=host.name)

    def stop(self) -> Answer:
        """Succeeds when there is nothing to stop: CloudStack calls stop to clean up after a
        failed prepare or create and expects success. A cleanup stop of a first deploy (VM
        state ``Starting``) powers nothing off: the create CloudStack retries next re-attaches
        to the install still running, or finds it done, and CloudStack then marks the VM
        Running; a power-off queued now would land after that."""
        uuid = self.p.require_vm()
        try:
            host = self.locate()
        except NotAvailable as exc:
            return Answer.success(f"{exc}: nothing to stop")
        if host is None:
            return Answer.success(f"no machine holds VM {uuid}: nothing to stop")
        first_deploy = self.p.vm_details.get("deployvm") == "true"
        if host.last_vm_uuid != uuid or (self.p.state == "Starting" and first_deploy):
            creating = self.runs.live(uuid, "create", host.name, deadline=self._call_deadline())
            if creating is not None:
                why = f"{creating.name} ({creating.id}) is still installing it; the next create re-attaches to that run"
            elif host.last_vm_uuid == uuid:
                why = "its first start is not over; the next create finds it installed"
            else:
                why = "it is not installed there"
            return Answer.success(
                f"VM {uuid} on {host.name}: nothing to stop, nothing powered off ({why})",
                host=host.name,
                run_id=creating.id if creating is not None else None,
            )
        params: dict[str, Any] = {"host": host.name}
        if self.cfg.stop_soft_timeout is not None:
            params["soft_timeout"] = self.cfg.stop_soft_timeout
        run = self.run("stop", params, label="stop", host=host.name)
        if run.ok:
            self.record_power(host.name, "off")
        return self.outcome(run, f"{host.name} is off", host=host.name)

    def delete(self) -> Answer:
        """Destroy (power off, VLANs back to PXE, release with erase) and free the machine.
        Succeeds when the VM never got a machine or it is already gone."""
        uuid = self.p.require_vm()
        try:
            host = self.locate()
        except NotAvailable as exc:
            return Answer.success(f"{exc}: nothing to delete")
        if host is None:
            return Answer.success(f"no machine holds VM {uuid}: nothing to delete")
        if host.last_vm_uuid not in (None, uuid):
            released = self.inventory.claims.release(uuid)
            return Answer.success(
                f"VM {uuid} is not on {host.name} (another VM is)" + ("; claim released" if released else ""),
                host=host.name,
            )
        last_create = (
            self.runs.latest(uuid, host.name, flow="provision", deadline=self._call_deadline())
            if host.last_vm_uuid is None
            else None
        )
        needs_destroy = host.last_vm_uuid == uuid or (
            last_create is not None and last_create.state_type not in ("COMPLETED", "FAILED")
        )
        if not needs_destroy:
            released = self.inventory.claims.release(uuid)
            return Answer.success(
                f"VM {uuid} was never installed on {host.name}: nothing to destroy"
                + ("; claim released" if released else ""),
                host=host.name,
            )
        erase = self.p.erase_mode(self.cfg.erase_default)
        run = self.run(
            "destroy",
            {"host": host.name, "erase": erase, "wait_for_erase": self.cfg.wait_for_erase},
            label="delete",
            host=host.name,
        )
        if run.ok:
            self.record_power(host.name, "off")
            self.inventory.claims.release(uuid)
        return self.outcome(run, f"{host.name} is free again (erase: {erase})", host=host.name)

    def nic(self, plug: bool) -> Answer:
        name = "PlugNetwork" if plug else "UnplugNetwork"
        raw = self.p.parameters.get("vlan")
        vlan = parse_vlan(raw, "parameters.vlan")
        if vlan is None:
            raise PayloadError(
                "missing: give the network's VLAN id, e.g. parameters[0].vlan=200", field="parameters.vlan"
            )
        host = self._carried(name)
        flow = "plug-nic" if plug else "unplug-nic"
        run = self.run(flow, {"host": host.name, "vlan": vlan}, label=name, host=host.name)
        return self.outcome(
            run,
            f"VLAN {vlan} {'plugged on' if plug else 'unplugged from'} {host.name}",
            host=host.name,
            vlan=vlan,
        )

    def reinstall(self) -> Answer:
        """Destroy, then provision the same VM again on the same machine: name, owner and
        image as it was installed (the image may be changed with the parameter ``image``, the
        name with the VM detail ``vm_name``), networks as the ports carry them now (plugged
        NICs included). Every value is checked with provision's own rules before the destroy."""
        uuid = self.p.require_vm()
        host = self.locate()
        if host is None or not self._holds(host):
            raise ActionError(f"cannot reinstall VM {uuid}: no machine holds it")
        going = self.runs.live(uuid, "Reinstall-provision", host.name, deadline=self._call_deadline())
        if going is not None:
            final = self.runs.wait(going, self.deadline, interval=self.cfg.poll_interval)
            return self._reinstalled(final, host)
        vm = self._reinstall_vm(host)  # refused here, before the destroy, if provision would refuse it
        if host.last_vm_uuid == uuid:
            erase = self.p.erase_mode(self.cfg.erase_default)
            destroyed = self.run(
                "destroy",
                {"host": host.name, "erase": erase, "wait_for_erase": True},
                label="Reinstall-destroy",
                host=host.name,
            )
            if not destroyed.ok:
                return self.outcome(destroyed, "", host=host.name)
        elif host.last_vm_uuid is not None:
            raise ActionError(f"cannot reinstall VM {uuid}: {host.name} carries another VM")
        run = self.run("provision", {"host": host.name, "vm": vm}, label="Reinstall-provision", host=host.name)
        return self._reinstalled(run, host)

    def _reinstalled(self, run: FlowRun, host: HostInfo) -> Answer:
        if run.ok:
            self.record_power(host.name, "on")
        return self.outcome(run, f"{host.name} reinstalled", host=host.name)

    def _reinstall_vm(self, host: HostInfo) -> dict[str, Any]:
        uuid = self.p.require_vm()
        last = self.runs.latest(uuid, host.name, flow="provision", completed=True, deadline=self._call_deadline())
        before = dict(last.parameters.get("vm") or {}) if last is not None else {}
        keep = ("name", "image", "architecture", "owner", "nics", "root_password_ref", "ssh_keys")
        vm: dict[str, Any] = {k: v for k, v in before.items() if k in keep}
        vm["uuid"] = uuid
        given, _ = self.p.detail_at("vm_name", "hostname")
        vm["name"] = self.p.vm_name() if given else (vm.get("name") or host.last_vm_name or self.p.vm_name())
        image = self.p.parameters.get("image")
        if image not in (None, ""):
            vm["image"] = parse_payload_image(image)
        elif "image" not in vm:
            vm["image"] = self.p.image()
        if host.last_vm_uuid == uuid:
            vlans = self.inventory.ports.desired_vlans(host.name)
            guest = sorted({v.vlan for v in vlans if v.purpose == "guest"})
            extra = sorted({v.vlan for v in vlans if v.purpose == "extra"})
            if len(guest) == 1:
                vm["nics"] = [{"vlan": guest[0], "default": True}] + [{"vlan": v, "default": False} for v in extra]
        if not vm.get("nics"):
            raise ActionError(
                f"cannot reinstall VM {uuid}: its networks are unknown (no completed create "
                f"and no guest VLAN recorded for {host.name})"
            )
        vm.setdefault("owner", self.p.owner())
        if vm.get("root_password_ref"):  # checked again: the operator may have narrowed the scope since
            vm["root_password_ref"] = self.tenant_ref(vm["root_password_ref"])
        return self.validated(vm)

    def getconsole(self) -> Answer:
        return no_console()


def parse_payload_image(value: Any) -> str:
    """The custom action's parameter ``image``, by the vocabulary's rule."""
    try:
        return parse_image(value, "parameters.image")
    except BadValue as exc:
        raise PayloadError(exc.reason, field="parameters.image") from None


def for_the_ui(answer: Answer) -> Answer:
    """A custom action's answer as CloudStack's UI shows it: with ``printmessage`` the string
    ``"true"``, RunCustomAction.vue renders a ``message`` that is an object (as a table) and
    never a string (reference notes, section 7). So the message becomes an object saying what
    was done (or why not), on which host, by which run and how it ended; the top-level keys
    stay for scripts reading the API's ``details``."""
    body = dict(answer.body)
    text = body.get("message")
    if not isinstance(text, (dict, list)):
        shown: dict[str, Any] = {"result": "done" if answer.ok else "failed", "detail": text or ""}
        for key, label in (
            ("host", "host"),
            ("vlan", "vlan"),
            ("run_name", "run"),
            ("run_id", "run id"),
            ("state", "state"),
        ):
            if body.get(key) not in (None, ""):
                shown[label] = body[key]
        body["message"] = shown
    body["printmessage"] = "true"
    return Answer(answer.ok, body)


def dispatch(ext: Extension, action: str) -> Answer:
    table: dict[str, Callable[[], Answer]] = {
        "prepare": ext.prepare,
        "create": ext.create,
        "start": ext.start,
        "stop": ext.stop,
        "reboot": ext.reboot,
        "delete": ext.delete,
        "getconsole": ext.getconsole,
        "plugnetwork": lambda: ext.nic(True),
        "unplugnetwork": lambda: ext.nic(False),
        "reinstall": ext.reinstall,
    }
    key = action.lower()
    try:
        answer = table[key]()
    except (PayloadError, ActionError, NoFreeHost) as exc:
        answer = Answer.error(str(exc))
    except ClaimConflict as exc:  # raced for a machine named by a detail: its message names the other VM
        ext.log.warning("claim conflict: %s", exc)
        answer = Answer.error(f"the machine is not available to VM {ext.p.vm_uuid}")
    except InventoryError as exc:
        answer = Answer.error(f"inventory: {exc}")
    return for_the_ui(answer) if key in CUSTOM else answer
