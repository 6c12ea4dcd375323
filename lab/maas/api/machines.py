"""``machines/``: the collection: list with filters, enlist, allocate, release many."""

from __future__ import annotations

import re
from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import (
    ApiError,
    Params,
    Request,
    Resource,
    bad_request,
    choice_error,
    conflict,
    multi,
    parse_bool,
    parse_int,
)
from metalflow.lab.maas.lifecycle import Lifecycle
from metalflow.lab.maas.model import USER, Interface, Machine, State, normalize_mac, valid_mac
from metalflow.lab.maas.status import ACTIONS, RELEASABLE, NodeStatus

S = NodeStatus
POWER_TYPES = ("ipmi", "manual")

MACHINE_FILTERS = {
    "id",
    "system_id",
    "hostname",
    "mac_address",
    "status",
    "agent_name",
    "tags",
    "not_tags",
    "domain",
    "zone",
    "pool",
    "arch",
    "owner",
}


ALLOCATE_CONSTRAINTS = {
    "name",
    "system_id",
    "arch",
    "cpu_count",
    "mem",
    "tags",
    "not_tags",
    "zone",
    "not_in_zone",
    "pool",
    "not_in_pool",
    "pod",
    "not_pod",
    "pod_type",
    "not_pod_type",
    "subnets",
    "not_subnets",
    "vlans",
    "not_vlans",
    "fabrics",
    "not_fabrics",
    "fabric_classes",
    "not_fabric_classes",
    "interfaces",
    "storage",
    "devices",
    "id",
}


ALLOCATE_IGNORED = {
    "op",
    "agent_name",
    "comment",
    "bridge_all",
    "bridge_type",
    "bridge_stp",
    "bridge_fd",
    "dry_run",
    "verbose",
}


class Machines(Resource):
    def machines_read(self, req: Request) -> Any:
        q = req.query
        unknown = [k for k in q.keys() if k not in MACHINE_FILTERS and k != "op"]
        if unknown:
            raise bad_request({k: ["No such constraint."] for k in unknown})
        macs = q.getlist("mac_address")
        bad = [mac for mac in macs if not valid_mac(mac)]
        if bad:
            raise bad_request(f"Invalid MAC address(es): {', '.join(bad)}")
        statuses: set[NodeStatus] = set()
        for value in q.getlist("status"):
            match = [s for s in S if s.filter_name == value.strip().lower()]
            if not match:
                raise bad_request({"status": choice_error(value)})
            statuses.update(match)
        ids = set(q.getlist("id")) | set(q.getlist("system_id"))
        hostnames = set(q.getlist("hostname"))
        mac_set = {normalize_mac(mac) for mac in macs}
        agents = set(q.getlist("agent_name"))
        tags = multi(q.getlist("tags"))
        not_tags = multi(q.getlist("not_tags"))
        archs = set(q.getlist("arch"))
        owners = set(q.getlist("owner"))
        out = []
        for m in sorted(self.state.machines.values(), key=lambda m: m.id):
            if ids and m.system_id not in ids:
                continue
            if hostnames and m.hostname not in hostnames and m.fqdn not in hostnames:
                continue
            if mac_set and not mac_set & {i.mac for i in m.interfaces.values()}:
                continue
            if statuses and m.status not in statuses:
                continue
            if agents and m.agent_name not in agents:
                continue
            if tags and not tags <= m.tags:
                continue
            if not_tags and not_tags & m.tags:
                continue
            if archs and not any(_arch_matches(m.architecture, a) for a in archs):
                continue
            if owners and m.owner not in owners:
                continue
            if q.getlist("zone") and model.ZONE["name"] not in q.getlist("zone"):
                continue
            if q.getlist("pool") and model.POOL["name"] not in q.getlist("pool"):
                continue
            if q.getlist("domain") and model.DOMAIN["name"] not in q.getlist("domain"):
                continue
            out.append(self._mj(m))
        return out

    def machines_create(self, req: Request) -> Any:
        d = req.body
        errors: dict[str, list[str]] = {}
        arch = (d.get("architecture") or "amd64/generic").strip()
        if "/" not in arch:
            arch += "/generic"
        usable = self.state.usable_architectures()
        if arch not in usable:
            errors["architecture"] = [
                f"'{arch}' is not a valid architecture.  It should be one of: "
                + ", ".join(f"'{a}'" for a in ["", *usable])
                + "."
            ]
        macs = [m for m in d.getlist("mac_addresses") if m.strip()]
        mac_errors = []
        if not macs:
            errors["mac_addresses"] = ["This field is required."]
        for mac in macs:
            if not valid_mac(mac):
                mac_errors.append(f"'{mac}' is not a valid MAC address.")
                continue
            owner_sid = self.state.by_mac.get(normalize_mac(mac))
            if owner_sid is not None:
                mac_errors.append(f"MAC address {mac} already in use on {self.state.machines[owner_sid].hostname}.")
        if len({normalize_mac(m) for m in macs}) != len(macs):
            mac_errors.append("Duplicate MAC addresses in the request.")
        if mac_errors:
            errors["mac_addresses"] = (
                mac_errors if len(macs) == 1 else [f"One or more MAC addresses is invalid. ({' '.join(mac_errors)})"]
            )
        hostname = (d.get("hostname") or "").strip()
        if hostname:
            hostname = hostname.split(".", 1)[0]
            if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", hostname):
                errors["hostname"] = [f"Invalid hostname: {hostname}"]
            elif self.state.hostname_taken(hostname):
                errors["hostname"] = ["Node with this Hostname already exists."]
        power_type = (d.get("power_type") or "manual").strip()
        if power_type not in POWER_TYPES:
            errors["power_type"] = choice_error(power_type)
        try:
            commission = parse_bool(d.get("commission"), "commission", default=True)
            deployed = parse_bool(d.get("deployed"), "deployed", default=False)
            skip_networking = parse_bool(d.get("skip_networking"), "skip_networking")
        except ApiError as exc:
            errors.update(exc.message if isinstance(exc.message, dict) else {"__all__": [exc.message]})
            commission = deployed = skip_networking = False
        if errors:
            raise bad_request(errors)
        m = create_machine(
            self.state,
            self.life,
            hostname=hostname or self.state.new_hostname(),
            macs=macs,
            architecture=arch,
            power_type=power_type,
            power_parameters=power_params(d),
            description=d.get("description") or "",
        )
        if deployed:  # an already-installed machine MAAS adopts as Deployed
            self.life.place(m, S.DEPLOYED, "Deployed")
            m.owner, m.netboot = USER, False
        elif commission:
            self.life.start_commissioning(m, skip_networking=skip_networking)
        return self._mj(m)

    def machines_allocate(self, req: Request) -> Any:
        d = req.body
        unknown = [k for k in d.keys() if k not in ALLOCATE_CONSTRAINTS and k not in ALLOCATE_IGNORED]
        if unknown:
            raise bad_request({k: ["No such constraint."] for k in unknown})
        system_id = d.get("system_id") or d.get("id")
        name = d.get("name")
        tags = multi(d.getlist("tags"))
        not_tags = multi(d.getlist("not_tags"))
        arch = d.get("arch")
        cpu = parse_int(d.get("cpu_count"), "cpu_count")
        mem = parse_int(d.get("mem"), "mem")
        unknown_tags = sorted(t for t in tags if t not in self.state.tags)
        if unknown_tags:
            raise bad_request({"tags": [f"No such tag(s): {', '.join(repr(t) for t in unknown_tags)}."]})
        for m in sorted(self.state.machines.values(), key=lambda m: m.id):
            if m.status not in ACTIONS["allocate"]:
                continue
            if system_id and m.system_id != system_id:
                continue
            if name and name not in (m.hostname, m.fqdn):
                continue
            if tags and not tags <= m.tags:
                continue
            if not_tags and not_tags & m.tags:
                continue
            if arch and not _arch_matches(m.architecture, arch):
                continue
            if cpu is not None and m.cpu_count < cpu:
                continue
            if mem is not None and m.memory < mem:
                continue
            self.life.allocate(m, agent_name=d.get("agent_name") or "")
            return self._mj(m)
        if system_id:
            raise conflict(f"No machine with system ID {system_id} available.")
        described = " ".join(f"{k}={','.join(d.getlist(k))}" for k in d.keys() if k in ALLOCATE_CONSTRAINTS)
        raise conflict(f'No available machine matches constraints: {described} (resolved to "{described}")')

    def machines_release(self, req: Request) -> Any:
        ids = req.body.getlist("machines")
        unknown = [sid for sid in ids if sid not in self.state.machines]
        if unknown:
            raise bad_request(f"Unknown machine(s): {', '.join(unknown)}.")
        machines = [self.state.machines[sid] for sid in ids]
        stuck = [m.system_id for m in machines if m.status not in RELEASABLE and m.status not in (S.READY, S.RELEASING)]
        if stuck:
            raise conflict(f"Machine(s) cannot be released in their current state: {', '.join(stuck)}.")
        for m in machines:
            if m.status in RELEASABLE:
                self.life.start_release(m, erase_mode=None)
        return [m.system_id for m in machines]

    def machines_list_allocated(self, req: Request) -> Any:
        return [self._mj(m) for m in sorted(self.state.machines.values(), key=lambda m: m.id) if m.owner == USER]

    def machines_power_parameters(self, req: Request) -> Any:
        ids = set(req.query.getlist("id"))
        return {
            m.system_id: dict(m.power_parameters) for m in self.state.machines.values() if not ids or m.system_id in ids
        }


def create_machine(
    st: State,
    life: Lifecycle,
    *,
    hostname: str,
    macs: list[str],
    architecture: str,
    power_type: str,
    power_parameters: dict[str, str],
    description: str = "",
    cpu_count: int = 0,
    memory: int = 0,
) -> Machine:
    """A machine in the state with its physical interfaces (the first is the boot one); the
    caller places it in its first status. Also how the lab adds machines behind the API's back."""
    m = Machine(
        id=st.new_id(),
        system_id=st.new_system_id(),
        hostname=hostname,
        architecture=architecture,
        power_type=power_type,
        power_parameters=dict(power_parameters),
        description=description,
        cpu_count=cpu_count,
        memory=memory,
    )
    for n, mac in enumerate(macs):
        iid = st.new_iface_id()
        mac = normalize_mac(mac)
        m.interfaces[iid] = Interface(iid, f"eth{n}", "physical", mac, st.pxe_vlan_id)
        st.by_mac[mac] = m.system_id
        if n == 0:
            m.boot_interface_id = iid
    life.reset_networking(m)
    st.machines[m.system_id] = m
    return m


def _arch_matches(architecture: str, wanted: str) -> bool:
    return architecture == wanted or architecture.split("/")[0] == wanted


def power_params(d: Params) -> dict[str, str]:
    prefix = "power_parameters_"
    return {k[len(prefix) :]: d.get(k) or "" for k in d.keys() if k.startswith(prefix)}
