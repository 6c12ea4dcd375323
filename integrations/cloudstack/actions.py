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
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from metalflow.integrations.cloudstack.answer import Answer, no_console
from metalflow.integrations.cloudstack.extension_config import ExtensionConfig
from metalflow.integrations.cloudstack.payload import Payload, PayloadError, parse_vlan
from metalflow.integrations.cloudstack.runs import ExtensionApi, Runs
from metalflow.integrations.common import Deadline, MetalflowError
from metalflow.integrations.common.values import parse_secret_ref
from metalflow.integrations.inventory import (
    ClaimConflict,
    HostInfo,
    HostNotFound,
    Inventory,
    InventoryError,
    NoFreeHost,
)
from metalflow.integrations.prefectapi import FlowRun


class ActionError(MetalflowError):
    """The action cannot be done as asked; nothing was changed."""


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
        """The VM's machine: its claim, the machine prepare saved in the VM's details, the
        CloudStack host's server (seed model), or the host that carries the VM."""
        uuid = self.p.require_vm()
        claim = self.inventory.claims.for_vm(uuid)
        if claim is not None:
            return self.inventory.hosts.get(claim.host)
        for hint, where in (
            (self.p.virtualmachine.get("metalflow_host"), "externaldetails.virtualmachine.metalflow_host"),
            (self.p.host.get("metalflow_host"), "externaldetails.host.metalflow_host"),
        ):
            if hint:
                host = self.inventory.hosts.find(str(hint))
                if host is None:
                    self.log.warning("%s names %s, which is not in the inventory", where, hint)
                return host
        return self.inventory.claims.host_for_vm(uuid)

    def place_for_create(self, vm_name: str) -> HostInfo:
        uuid = self.p.require_vm()
        pinned = self.p.host.get("metalflow_host")
        claim = self.inventory.claims.for_vm(uuid)
        if pinned:
            host = self._host_named(str(pinned), "externaldetails.host.metalflow_host")
            if claim is not None and claim.host != host.name:
                self._let_go_of(claim.host)
            return self.inventory.claims.claim(uuid, vm_name=vm_name, host=host.name)
        if claim is not None:
            return self.inventory.hosts.get(claim.host)
        chosen = self.p.virtualmachine.get("metalflow_host")
        if chosen:  # claim released after a failed create; CloudStack retried without prepare
            host = self._host_named(str(chosen), "externaldetails.virtualmachine.metalflow_host")
            return self.inventory.claims.claim(uuid, vm_name=vm_name, host=host.name)
        raise ActionError(
            f"no machine for VM {uuid}: either create the extension with orchestratorrequirespreparevm=true "
            "(prepare picks a free machine) or give the CloudStack host the detail metalflow_host "
            "(one server per CloudStack host)"
        )

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
        self.log.info("released the claim on %s: CloudStack retries the VM on another host", other)

    def _call_deadline(self) -> Deadline:
        return Deadline(max(1.0, min(30.0, self.deadline.remaining())))

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
                f"({'carries ' + (host.last_vm_name or host.last_vm_uuid) if host.last_vm_uuid else 'no VM installed'})"
            )
        return host

    # --- actions ----------------------------------------------------------------------------
    def prepare(self) -> Answer:
        """Claim the machine (pool: the smallest free one that fits; seed: the CloudStack
        host's server) and tell CloudStack its MAC, so the virtual router's DHCP answers the
        real machine. Returns only the merge patch: every NIC echoed, the default NIC's
        ``mac`` replaced, and the machine as ``External:`` details."""
        uuid = self.p.require_vm()
        vm_name = self.p.vm_name()
        pinned = self.p.host.get("metalflow_host")
        if pinned:
            host = self._host_named(str(pinned), "externaldetails.host.metalflow_host")
            claim = self.inventory.claims.for_vm(uuid)
            if claim is not None and claim.host != host.name:
                self._let_go_of(claim.host)
            host = self.inventory.claims.claim(uuid, vm_name=vm_name, host=host.name)
        else:
            host = self.inventory.claims.claim(
                uuid, vm_name=vm_name, min_cpus=self.p.cpus or 0, min_memory_mb=self.p.min_memory_mb
            )
        self.log.info("VM %s (%s) placed on %s (%s)", uuid, vm_name, host.name, host.boot_mac)
        patch: dict[str, Any] = {
            "details": {
                "External:metalflow_host": host.name,
                "External:maas_system_id": host.maas_system_id or "",
                "External:mac_address": host.boot_mac,
            }
        }
        if self.p.nics:
            patch["nics"] = [dict(n.raw, mac=host.boot_mac) if n.default else dict(n.raw) for n in self.p.nics]
        return Answer(True, patch)

    def vm_params(self, host: HostInfo | None = None) -> dict[str, Any]:
        vm: dict[str, Any] = {
            "name": self.p.vm_name(),
            "uuid": self.p.require_vm(),
            "image": self.p.image(),
            "nics": self.p.flow_nics(),
            "owner": self.p.owner(),
        }
        ref = self.p.detail("root_password_ref")
        if ref:
            # Checked here, before any run exists: a secret pasted where its reference belongs
            # would otherwise be stored as a flow-run parameter (the error never quotes it).
            vm["root_password_ref"] = str(parse_secret_ref(ref, "root_password_ref"))
        keys = self.p.ssh_keys()
        if keys:
            vm["ssh_keys"] = keys
        return vm

    def create(self) -> Answer:
        vm = self.vm_params()  # every payload check before anything changes
        erase = self.p.erase_mode(self.cfg.erase_default)
        host = self.place_for_create(vm["name"])
        if host.last_vm_uuid not in (None, vm["uuid"]):
            raise ActionError(f"{host.name} carries VM {host.last_vm_name or host.last_vm_uuid}")
        run = self.run(
            "provision", {"host": host.name, "vm": vm, "erase_on_failure": erase}, label="create", host=host.name
        )
        if run.ok:
            self.record_power(host.name, "on")
        elif run.state_type == "FAILED":
            # The flow undid its changes before failing: the machine is free for the retry
            # CloudStack makes (prepare may pick it again).
            released = self.inventory.claims.release(vm["uuid"])
            self.log.info("create failed on %s; claim released: %s", host.name, bool(released))
        return self.outcome(run, f"{vm['name']} is running on {host.name} ({vm['image']})", host=host.name)

    def start(self) -> Answer:
        host = self._carried("start")
        run = self.run("start", {"host": host.name}, label="start", host=host.name)
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
        failed prepare or create and expects success."""
        uuid = self.p.require_vm()
        host = self.locate()
        if host is None:
            return Answer.success(f"no machine holds VM {uuid}: nothing to stop")
        params: dict[str, Any] = {"host": host.name}
        if self.cfg.stop_soft_timeout is not None:
            params["soft_timeout"] = self.cfg.stop_soft_timeout
        if host.last_vm_uuid == uuid:
            run = self.run("stop", params, label="stop", host=host.name)
            if run.ok:
                self.record_power(host.name, "off")
            return self.outcome(run, f"{host.name} is off", host=host.name)
        creating = self.runs.live(uuid, "create", host.name, deadline=self._call_deadline())
        if creating is not None:
            run, _ = self.runs.start_or_attach(
                "stop", params, vm_uuid=uuid, label="stop", host=host.name, deadline=self._call_deadline()
            )
            return Answer.success(
                f"{host.name} is still being installed by {creating.name} ({creating.id}); "
                f"stop run {run.id} powers it off after that",
                host=host.name,
                run_id=run.id,
            )
        return Answer.success(f"VM {uuid} is not installed on {host.name}: nothing to stop", host=host.name)

    def delete(self) -> Answer:
        """Destroy (power off, VLANs back to PXE, release with erase) and free the machine.
        Succeeds when the VM never got a machine or it is already gone."""
        uuid = self.p.require_vm()
        host = self.locate()
        if host is None:
            return Answer.success(f"no machine holds VM {uuid}: nothing to delete")
        if host.last_vm_uuid not in (None, uuid):
            released = self.inventory.claims.release(uuid)
            return Answer.success(
                f"VM {uuid} is not on {host.name} (it carries {host.last_vm_name or host.last_vm_uuid})"
                + ("; claim released" if released else ""),
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
            printmessage="true",
        )

    def reinstall(self) -> Answer:
        """Destroy, then provision the same VM again on the same machine: name, owner and
        image as it was installed (the image may be changed with the parameter ``image``),
        networks as the ports carry them now (plugged NICs included)."""
        uuid = self.p.require_vm()
        host = self.locate()
        if host is None:
            raise ActionError(f"cannot reinstall VM {uuid}: no machine holds it")
        going = self.runs.live(uuid, "Reinstall-provision", host.name, deadline=self._call_deadline())
        if going is not None:
            final = self.runs.wait(going, self.deadline, interval=self.cfg.poll_interval)
            return self._reinstalled(final, host)
        vm = self._reinstall_vm(host)
        if host.last_vm_uuid == uuid:
            erase = self.p.erase_mode(self.cfg.erase_default)
            destroyed = self.run(
                "destroy",
                {"host": host.name, "erase": erase, "wait_for_erase": True},
                label="Reinstall-destroy",
                host=host.name,
            )
            if not destroyed.ok:
                return self.outcome(destroyed, "", host=host.name, printmessage="true")
        elif host.last_vm_uuid is not None:
            raise ActionError(f"cannot reinstall VM {uuid}: {host.name} carries another VM")
        run = self.run("provision", {"host": host.name, "vm": vm}, label="Reinstall-provision", host=host.name)
        return self._reinstalled(run, host)

    def _reinstalled(self, run: FlowRun, host: HostInfo) -> Answer:
        if run.ok:
            self.record_power(host.name, "on")
        return self.outcome(run, f"{host.name} reinstalled", host=host.name, printmessage="true")

    def _reinstall_vm(self, host: HostInfo) -> dict[str, Any]:
        uuid = self.p.require_vm()
        last = self.runs.latest(uuid, host.name, flow="provision", completed=True, deadline=self._call_deadline())
        before = dict(last.parameters.get("vm") or {}) if last is not None else {}
        vm: dict[str, Any] = {
            k: v for k, v in before.items() if k in ("name", "image", "owner", "nics", "root_password_ref", "ssh_keys")
        }
        vm["uuid"] = uuid
        vm["name"] = self.p.detail("vm_name", "hostname") or vm.get("name") or host.last_vm_name or self.p.vm_name()
        image = self.p.parameters.get("image")
        if image:
            vm["image"] = str(image)
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
        return vm

    def getconsole(self) -> Answer:
        return no_console()


def dispatch(ext: Extension, action: str) -> Answer:
    table = {
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
    try:
        return table[action.lower()]()
    except (PayloadError, ActionError, NoFreeHost, ClaimConflict) as exc:
        return Answer.error(str(exc))
    except InventoryError as exc:
        return Answer.error(f"inventory: {exc}")
