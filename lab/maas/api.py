"""The ``/MAAS/api/2.0/`` resources: routing on (path, method, ``op``) and the handlers.

Shapes, status codes and messages follow MAAS (``src/maasserver/api/*.py``) as recorded in the
project's ``maas-api.md``; where a message is MAAS's own it is quoted verbatim. Handlers run
under the simulator's lock and never do I/O, except ``query_power_state`` which waits (outside
the lock) for a live BMC query, as MAAS does.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import yaml

from metalflow.lab.maas import model
from metalflow.lab.maas.lifecycle import ERASE_MODES, Lifecycle
from metalflow.lab.maas.model import (
    API,
    BOND_MODES,
    USER,
    Interface,
    Link,
    Machine,
    State,
    Tag,
    normalize_mac,
    valid_mac,
)
from metalflow.lab.maas.preseed import PreseedError
from metalflow.lab.maas.status import ACTIONS, RELEASABLE, NodeStatus, can_move

S = NodeStatus
MAAS_VERSION = "3.5.0"
CAPABILITIES = [
    "networks-management",
    "static-ipaddresses",
    "ipv6-deployment-ubuntu",
    "devices-management",
    "storage-deployment-ubuntu",
    "network-deployment-ubuntu",
    "bridging-interface-ubuntu",
    "bridging-automatic-ubuntu",
    "authenticate-api",
]
POWER_TYPES = ("ipmi", "manual")
DEFAULT_DISTRO = "ubuntu/jammy"
QUERY_POWER_TIMEOUT = 60.0


# --- request / response ------------------------------------------------------------------


class Params:
    """A multi-valued form (Django's QueryDict): ``get`` gives the last value, ``getlist`` all."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()):
        self.pairs = list(pairs)

    def get(self, key: str, default: str | None = None) -> str | None:
        values = self.getlist(key)
        return values[-1] if values else default

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self.pairs if k == key]

    def keys(self) -> list[str]:
        return list(dict.fromkeys(k for k, _ in self.pairs))

    def __contains__(self, key: object) -> bool:
        return any(k == key for k, _ in self.pairs)


@dataclass
class Request:
    method: str
    path: str  # relative to /MAAS/api/2.0/, with its trailing slash
    query: Params
    body: Params

    @property
    def data(self) -> Params:
        """What MAAS handlers read: the query string for GET/DELETE, the body otherwise."""
        return self.query if self.method in ("GET", "DELETE") else self.body


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode(), "application/json; charset=utf-8")

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8", dict(headers))


class ApiError(Exception):
    """An error answer: text (a single message) or JSON (form errors, ``{"field": [msg]}``)."""

    def __init__(self, status: int, message: str | dict[str, list[str]]):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message

    def response(self) -> Response:
        if isinstance(self.message, dict):
            return Response.json(self.message, self.status)
        return Response.text(self.status, self.message)


def bad_request(message: str | dict[str, list[str]]) -> ApiError:
    return ApiError(400, message)


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"No {what} matches the given query.")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def parse_bool(value: str | None, name: str, default: bool = False) -> bool:
    if value is None:
        return default
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise bad_request({name: [f"'{value}' is not a valid boolean value."]})


def parse_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request({name: ["Enter a whole number."]}) from None


def _choice_error(value: str) -> list[str]:
    return [f"Select a valid choice. {value} is not one of the available choices."]


# --- routing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # e.g. "machines/{system_id}/"
    actions: dict[tuple[str, str | None], str]  # (method, op) -> handler method name
    anon: bool = False
    doc: str = ""

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        rx = re.escape(self.template)
        rx = re.sub(r"\\\{spec\\\}", r"(?P<spec>.+)", rx)
        rx = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", rx)
        return re.compile(rx)


ROUTES: tuple[Route, ...] = (
    Route(
        "VersionHandler", "version/", {("GET", None): "version"}, anon=True, doc="Information about this MAAS instance."
    ),
    Route("DescribeHandler", "describe/", {("GET", None): "describe"}, anon=True, doc="Describe the API."),
    Route("UsersHandler", "users/", {("GET", "whoami"): "whoami"}, doc="Manage the user accounts."),
    Route(
        "MachinesHandler",
        "machines/",
        {
            ("GET", None): "machines_read",
            ("POST", None): "machines_create",
            ("POST", "allocate"): "machines_allocate",
            ("POST", "release"): "machines_release",
            ("GET", "list_allocated"): "machines_list_allocated",
            ("GET", "power_parameters"): "machines_power_parameters",
        },
        doc="Manage the collection of all machines in the MAAS.",
    ),
    Route(
        "MachineHandler",
        "machines/{system_id}/",
        {
            ("GET", None): "machine_read",
            ("PUT", None): "machine_update",
            ("DELETE", None): "machine_delete",
            ("POST", "deploy"): "machine_deploy",
            ("POST", "release"): "machine_release",
            ("POST", "commission"): "machine_commission",
            ("POST", "abort"): "machine_abort",
            ("POST", "power_on"): "machine_power_on",
            ("POST", "power_off"): "machine_power_off",
            ("GET", "query_power_state"): "machine_query_power_state",
            ("POST", "mark_broken"): "machine_mark_broken",
            ("POST", "mark_fixed"): "machine_mark_fixed",
            ("GET", "get_curtin_config"): "machine_get_curtin_config",
            ("GET", "power_parameters"): "machine_power_parameters",
        },
        doc="Manage an individual machine.",
    ),
    Route(
        "InterfacesHandler",
        "nodes/{system_id}/interfaces/",
        {
            ("GET", None): "interfaces_read",
            ("POST", "create_bond"): "interfaces_create_bond",
        },
        doc="Manage interfaces on a node.",
    ),
    Route(
        "InterfaceHandler",
        "nodes/{system_id}/interfaces/{id}/",
        {
            ("GET", None): "interface_read",
            ("PUT", None): "interface_update",
            ("DELETE", None): "interface_delete",
            ("POST", "link_subnet"): "interface_link_subnet",
            ("POST", "unlink_subnet"): "interface_unlink_subnet",
            ("POST", "disconnect"): "interface_disconnect",
        },
        doc="Manage a node's or device's interface.",
    ),
    Route("SubnetsHandler", "subnets/", {("GET", None): "subnets_read"}, doc="Manage subnets."),
    Route("SubnetHandler", "subnets/{spec}/", {("GET", None): "subnet_read"}, doc="Manage a subnet."),
    Route("FabricsHandler", "fabrics/", {("GET", None): "fabrics_read"}, doc="Manage fabrics."),
    Route("FabricHandler", "fabrics/{fabric_id}/", {("GET", None): "fabric_read"}, doc="Manage a fabric."),
    Route(
        "VlansHandler",
        "fabrics/{fabric_id}/vlans/",
        {("GET", None): "fabric_vlans_read"},
        doc="Manage VLANs on a fabric.",
    ),
    Route(
        "VlanHandler",
        "fabrics/{fabric_id}/vlans/{vid}/",
        {("GET", None): "fabric_vlan_read"},
        doc="Manage a VLAN on a fabric (by VID).",
    ),
    Route("VlanByIdHandler", "vlans/{vlan_id}/", {("GET", None): "vlan_read"}, doc="Manage a VLAN (by database id)."),
    Route(
        "BootResourcesHandler",
        "boot-resources/",
        {("GET", None): "boot_resources_read"},
        doc="Manage the boot resources.",
    ),
    Route(
        "BootResourceHandler",
        "boot-resources/{id}/",
        {("GET", None): "boot_resource_read"},
        doc="Manage a boot resource.",
    ),
    Route(
        "TagsHandler",
        "tags/",
        {("GET", None): "tags_read", ("POST", None): "tags_create"},
        doc="Manage all tags known to MAAS.",
    ),
    Route(
        "TagHandler",
        "tags/{name}/",
        {
            ("GET", None): "tag_read",
            ("PUT", None): "tag_update",
            ("DELETE", None): "tag_delete",
            ("POST", "update_nodes"): "tag_update_nodes",
            ("GET", "machines"): "tag_machines",
            ("GET", "nodes"): "tag_machines",
        },
        doc="Tags are properties that can be associated with a Node.",
    ),
    Route("ZonesHandler", "zones/", {("GET", None): "zones_read"}, doc="Manage physical zones."),
    Route("ResourcePoolsHandler", "resourcepools/", {("GET", None): "pools_read"}, doc="Manage resource pools."),
    Route("DomainsHandler", "domains/", {("GET", None): "domains_read"}, doc="Manage domains."),
)

_CRUD = {"GET": "read", "POST": "create", "PUT": "update", "DELETE": "delete"}


def match_route(path: str) -> tuple[Route, dict[str, str]] | None:
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m:
            return route, m.groupdict()
    return None


def describe_document(base_url: str) -> dict[str, Any]:
    handlers = []
    for r in ROUTES:
        actions = [
            {"name": op or _CRUD[method], "method": method, "op": op, "restful": op is None, "doc": ""}
            for (method, op) in r.actions
        ]
        params = re.findall(r"\{(\w+)\}", r.template)
        handlers.append(
            {
                "name": r.name,
                "doc": r.doc,
                "params": params,
                "path": f"{API}/{r.template}",
                "uri": f"{base_url.rstrip('/')}/api/2.0/{r.template}",
                "actions": actions,
            }
        )
    resources = [
        {"name": h["name"], "anon": h if r.anon else None, "auth": None if r.anon else h}
        for h, r in zip(handlers, ROUTES)
    ]
    doc = {"doc": "MAAS API", "handlers": handlers, "resources": resources}
    doc["hash"] = api_hash()
    return doc


def api_hash() -> str:
    """The API description's hash, independent of the host the API is reached on (MAAS sends
    it as ``X-MAAS-API-Hash`` so that clients notice an API change)."""
    shape = [(r.name, r.template, sorted((m, o or "") for m, o in r.actions), r.anon) for r in ROUTES]
    return hashlib.sha1(json.dumps(shape).encode()).hexdigest()


# --- the handlers --------------------------------------------------------------------------


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


class Api:
    """The handlers. ``lock`` guards ``state``; ``dispatch`` holds it around each handler."""

    def __init__(self, state: State, lock: threading.RLock, lifecycle: Lifecycle, base_url: Callable[[], str]):
        self.state = state
        self.lock = lock
        self.life = lifecycle
        self.base_url = base_url
        self.api_hash = api_hash()

    def dispatch(self, route: Route, req: Request, args: dict[str, str]) -> Response:
        op = req.query.get("op") or (req.body.get("op") if req.method in ("POST", "PUT") else None)
        name = route.actions.get((req.method, op or None))
        if name is None:
            raise bad_request(f"Unrecognised signature: method={req.method} op={op}")
        handler = getattr(self, name)
        if name == "machine_query_power_state":  # waits on the BMC: not under the lock
            result = handler(req, **args)
        else:
            with self.lock:
                result = handler(req, **args)
        return result if isinstance(result, Response) else Response.json(result)

    # --- lookups -----------------------------------------------------------------------------
    def _machine(self, system_id: str, what: str = "Machine") -> Machine:
        m = self.state.machines.get(system_id)
        if m is None:
            raise not_found(what)
        return m

    def _interface(self, system_id: str, iface_id: str) -> tuple[Machine, Interface]:
        m = self.state.machines.get(system_id)
        iid = int(iface_id) if iface_id.isdigit() else None
        iface = m.interfaces.get(iid) if m is not None and iid is not None else None
        if m is None or iface is None:
            # MAAS also accepts the interface name in place of its id.
            iface = next((i for i in m.interfaces.values() if i.name == iface_id), None) if m else None
            if m is None or iface is None:
                raise not_found("Interface")
        return m, iface

    def _mj(self, m: Machine) -> dict[str, Any]:
        return model.machine_json(self.state, m)

    def _ij(self, m: Machine, iface: Interface) -> dict[str, Any]:
        return model.interface_json(self.state, m, iface)

    # --- anonymous -----------------------------------------------------------------------------
    def version(self, req: Request) -> Any:
        return {"capabilities": CAPABILITIES, "version": MAAS_VERSION, "subversion": "lab"}

    def describe(self, req: Request) -> Any:
        return describe_document(self.base_url())

    def whoami(self, req: Request) -> Any:
        return {
            "username": USER,
            "email": f"{USER}@example.com",
            "is_superuser": True,
            "is_local": True,
            "sshkeys_count": 0,
            "resource_uri": f"{API}/users/{USER}/",
        }

    # --- machines/ ---------------------------------------------------------------------------
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
                raise bad_request({"status": _choice_error(value)})
            statuses.update(match)
        ids = set(q.getlist("id")) | set(q.getlist("system_id"))
        hostnames = set(q.getlist("hostname"))
        mac_set = {normalize_mac(mac) for mac in macs}
        agents = set(q.getlist("agent_name"))
        tags = _multi(q.getlist("tags"))
        not_tags = _multi(q.getlist("not_tags"))
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
            errors["power_type"] = _choice_error(power_type)
        try:
            commission = parse_bool(d.get("commission"), "commission", default=True)
            deployed = parse_bool(d.get("deployed"), "deployed", default=False)
            skip_networking = parse_bool(d.get("skip_networking"), "skip_networking")
        except ApiError as exc:
            errors.update(exc.message if isinstance(exc.message, dict) else {"__all__": [exc.message]})
            commission = deployed = skip_networking = False
        if errors:
            raise bad_request(errors)
        m = self.create_machine(
            hostname=hostname or self.state.new_hostname(),
            macs=macs,
            architecture=arch,
            power_type=power_type,
            power_parameters=_power_params(d),
            description=d.get("description") or "",
        )
        if deployed:  # an already-installed machine MAAS adopts as Deployed
            self.life.place(m, S.DEPLOYED, "Deployed")
            m.owner, m.netboot = USER, False
        elif commission:
            self.life.start_commissioning(m, skip_networking=skip_networking)
        return self._mj(m)

    def create_machine(
        self,
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
        st = self.state
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
        self.life.reset_networking(m)
        st.machines[m.system_id] = m
        return m

    def machines_allocate(self, req: Request) -> Any:
        d = req.body
        unknown = [k for k in d.keys() if k not in ALLOCATE_CONSTRAINTS and k not in ALLOCATE_IGNORED]
        if unknown:
            raise bad_request({k: ["No such constraint."] for k in unknown})
        system_id = d.get("system_id") or d.get("id")
        name = d.get("name")
        tags = _multi(d.getlist("tags"))
        not_tags = _multi(d.getlist("not_tags"))
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

    # --- machines/{id}/ ------------------------------------------------------------------------
    def machine_read(self, req: Request, system_id: str) -> Any:
        return self._mj(self._machine(system_id))

    def machine_update(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        errors: dict[str, list[str]] = {}
        hostname = d.get("hostname")
        if hostname is not None:
            hostname = hostname.strip().split(".", 1)[0]
            if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", hostname):
                errors["hostname"] = [f"Invalid hostname: {hostname}"]
            elif self.state.hostname_taken(hostname, other_than=m.system_id):
                errors["hostname"] = ["Node with this Hostname already exists."]
        power_type = d.get("power_type")
        if power_type is not None and power_type not in POWER_TYPES:
            errors["power_type"] = _choice_error(power_type)
        if errors:
            raise bad_request(errors)
        if hostname is not None:
            m.hostname = hostname
        if power_type is not None:
            m.power_type = power_type
        if d.get("description") is not None:
            m.description = d.get("description") or ""
        m.power_parameters.update(_power_params(d))
        return self._mj(m)

    def machine_delete(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        m.gen += 1  # ends any phase
        for iface in m.interfaces.values():
            self.state.by_mac.pop(iface.mac, None)
        del self.state.machines[system_id]
        return Response(204)

    def machine_deploy(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        if m.status == S.READY:
            if m.owner is not None and m.owner != USER:
                raise conflict("Can't allocate a machine belonging to another user.")
            self.life.allocate(m, agent_name=d.get("agent_name") or "")
        elif d.get("agent_name"):
            m.agent_name = d.get("agent_name") or ""
        if not can_move(m.status, S.DEPLOYING):
            raise conflict(f"Can't deploy a machine that is in the '{m.status.label}' state")
        series = d.get("distro_series") or DEFAULT_DISTRO
        image = self.state.find_image(series)
        if image is None:
            choices = ", ".join(f"'{c}'" for c in ["", *sorted(i.series for i in self.state.images)])
            raise bad_request(
                {"distro_series": [f"'{series}' is not a valid distro_series.  It should be one of: {choices}."]}
            )
        m.osystem, m.distro_series = image.osystem, image.release
        version = model.UBUNTU_VERSIONS.get(image.release) if image.osystem == "ubuntu" else None
        m.hwe_kernel = f"ga-{version}" if version else None
        if d.get("user_data") is not None:
            m.user_data = d.get("user_data") or ""
        try:
            self.life.render_preseed(m)
        except PreseedError as exc:
            raise bad_request(f"Failed to render preseed: {exc}") from None
        self.life.start_deploying(m, image.series)
        return self._mj(m)

    def machine_release(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        erase = parse_bool(d.get("erase"), "erase")
        secure = parse_bool(d.get("secure_erase"), "secure_erase")
        quick = parse_bool(d.get("quick_erase"), "quick_erase")
        parse_bool(d.get("force"), "force")
        if m.status in (S.RELEASING, S.READY):
            return self._mj(m)  # MAAS: already released (or releasing) is success
        if m.status not in RELEASABLE:
            raise conflict(f"Machine cannot be released in its current state ('{m.status.label}').")
        # The lab's disks support secure erase, so secure wins; quick alone is quick.
        mode = "secure_erase" if secure else "quick_erase" if quick else "erase" if erase else None
        assert mode is None or mode in ERASE_MODES
        self.life.start_release(m, erase_mode=mode)
        return self._mj(m)

    def machine_commission(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        skip_networking = parse_bool(d.get("skip_networking"), "skip_networking")
        for flag in ("enable_ssh", "skip_bmc_config", "skip_storage"):
            parse_bool(d.get(flag), flag)
        if m.status not in ACTIONS["commission"]:
            raise bad_request({"__all__": ["Commission is not available because of the current state of the node."]})
        self.life.start_commissioning(m, skip_networking=skip_networking)
        return self._mj(m)

    def machine_abort(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.status not in ACTIONS["abort"] or m.status == S.TESTING:
            raise conflict(f"Cannot abort in current state: node {m.system_id} is in state {m.status.label}.")
        self.life.abort(m)
        return self._mj(m)

    def machine_power_on(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.owner is None:
            raise conflict("Can't start node: it hasn't been allocated.")
        if m.status == S.ALLOCATED:  # MAAS's Machine.start(): an allocated machine deploys
            return self.machine_deploy(req, system_id)
        if d := req.body.get("user_data"):
            m.user_data = d
        self.life.power_action(m, "on")
        return self._mj(m)

    def machine_power_off(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        mode = (req.body.get("stop_mode") or "hard").strip().lower()
        if mode not in ("soft", "hard"):
            raise bad_request({"stop_mode": _choice_error(mode)})
        self.life.power_action(m, "off", soft=(mode == "soft"))
        return self._mj(m)

    def machine_query_power_state(self, req: Request, system_id: str) -> Any:
        with self.lock:
            m = self._machine(system_id)
            fut = self.life.query_power(m)
        try:
            state = fut.result(timeout=QUERY_POWER_TIMEOUT)
        except FutureTimeout:
            return Response.text(503, "Timed out waiting for power response in Machine.power_state.")
        if state == "error":
            return Response.text(503, "Failed to query node's BMC: no valid answer from the BMC.")
        return {"state": state}

    def machine_mark_broken(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.owner != USER:
            raise ApiError(
                403,
                "You do not have permission to mark this machine broken: "
                "only its owner can (MAAS checks ownership even for admins).",
            )
        comment = req.body.get("comment") or req.body.get("error_description") or ""
        self.life.mark_broken(m, comment)
        return self._mj(m)

    def machine_mark_fixed(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.status not in ACTIONS["mark_fixed"]:
            raise conflict("Can't mark a non-broken node as 'Ready'.")
        self.life.mark_fixed(m)
        return self._mj(m)

    def machine_get_curtin_config(self, req: Request, system_id: str) -> Any:
        """MAAS answers ``text/plain``: ``yaml.safe_dump(config, default_flow_style=False)``."""
        m = self._machine(system_id)
        if m.status not in (S.DEPLOYING, S.DEPLOYED, S.FAILED_DEPLOYMENT):
            raise bad_request(f"Machine {m.hostname} is not in a deployment state.")
        try:
            rendered = self.life.render_preseed(m)
        except PreseedError as exc:
            return Response.text(500, f"Failed to render preseed: {exc}")
        config = dict(rendered.config)
        config.setdefault("network", self._network_config(m))
        return Response.text(200, yaml.safe_dump(config, default_flow_style=False))

    def _network_config(self, m: Machine) -> dict[str, Any]:
        """The part of the merged curtin config MAAS generates from the interfaces (netplan v1)."""
        entries = []
        for iface in m.interfaces.values():
            subnets = []
            for link in iface.links:
                if link.mode == "link_up" or link.subnet_id is None:
                    subnets.append({"type": "manual"})
                    continue
                sn = self.state.subnets[link.subnet_id]
                if link.mode == "dhcp":
                    subnets.append({"type": "dhcp4"})
                else:
                    entry = {"type": "static", "address": f"{link.ip or ''}/{sn.network.prefixlen}"}
                    if link.default_gateway and sn.gateway_ip:
                        entry["gateway"] = sn.gateway_ip
                    subnets.append(entry)
            e: dict[str, Any] = {
                "id": iface.name,
                "name": iface.name,
                "type": iface.type,
                "mac_address": iface.mac,
                "mtu": iface.mtu,
                "subnets": subnets,
            }
            if iface.type == "bond":
                e["bond_interfaces"] = sorted(m.interfaces[p].name for p in iface.parents)
                e["params"] = {k.replace("_", "-"): v for k, v in dict(iface.params).items()}
            entries.append(e)
        return {"version": 1, "config": entries}

    def machine_power_parameters(self, req: Request, system_id: str) -> Any:
        return dict(self._machine(system_id).power_parameters)

    # --- interfaces ------------------------------------------------------------------------------
    def _check_editable(self, m: Machine, operation: str, extra: tuple[NodeStatus, ...] = ()) -> None:
        if m.status not in ACTIONS["edit_interfaces"] and m.status not in extra:
            raise conflict(f"Cannot {operation} interface because the machine is not New, Ready, Allocated, or Broken.")

    def interfaces_read(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id, "Node")
        return [self._ij(m, i) for i in m.interfaces.values()]

    def interfaces_create_bond(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        self._check_editable(m, "create bond")
        d = req.body
        errors: dict[str, list[str]] = {}
        name = (d.get("name") or "").strip()
        if not name:
            errors["name"] = ["This field is required."]
        elif any(i.name == name for i in m.interfaces.values()):
            errors["name"] = [f"Interface with name '{name}' already exists on this machine."]
        parent_ids: list[int] = []
        for raw in d.getlist("parents"):
            iface = m.interfaces.get(int(raw)) if raw.strip().isdigit() else None
            if iface is None:
                errors.setdefault("parents", []).append(
                    f"Select a valid choice. {raw} is not one of the available choices."
                )
                continue
            if iface.type != "physical":
                errors.setdefault("parents", []).append(f"{iface.name} is not a physical interface.")
            elif any(iface.id in other.parents for other in m.interfaces.values()):
                errors.setdefault("parents", []).append(
                    f"Interface {iface.name} is already in use by another interface."
                )
            parent_ids.append(iface.id)
        if not d.getlist("parents"):
            errors["parents"] = ["A bond interface must have one or more parents."]
        mode = (d.get("bond_mode") or "active-backup").strip()
        if mode not in BOND_MODES:
            errors["bond_mode"] = _choice_error(mode)
        mac = d.get("mac_address")
        if mac is not None and not valid_mac(mac):
            errors["mac_address"] = [f"'{mac}' is not a valid MAC address."]
        vlan_id = None
        if d.get("vlan"):
            vlan_id = parse_int(d.get("vlan"), "vlan")
            if vlan_id not in self.state.vlans:
                errors["vlan"] = ["Select a valid choice. That choice is not one of the available choices."]
        if errors:
            raise bad_request(errors)
        parents = [m.interfaces[p] for p in parent_ids]
        if vlan_id is None:
            vlan_id = parents[0].vlan_id
        params = {
            "bond_mode": mode,
            "bond_miimon": parse_int(d.get("bond_miimon"), "bond_miimon") or 100,
            "bond_downdelay": parse_int(d.get("bond_downdelay"), "bond_downdelay") or 0,
            "bond_updelay": parse_int(d.get("bond_updelay"), "bond_updelay") or 0,
            "bond_lacp_rate": d.get("bond_lacp_rate") or "slow",
            "bond_xmit_hash_policy": d.get("bond_xmit_hash_policy") or "layer2",
            "bond_num_grat_arp": parse_int(d.get("bond_num_grat_arp"), "bond_num_grat_arp") or 1,
        }
        for p in parents:
            p.links = []
            p.vlan_id = vlan_id
        iid = self.state.new_iface_id()
        bond = Interface(
            iid,
            name,
            "bond",
            normalize_mac(mac) if mac else parents[0].mac,
            vlan_id,
            parents=parent_ids,
            params=params,
            mtu=parse_int(d.get("mtu"), "mtu") or 1500,
        )
        bond.tags = sorted(_multi(d.getlist("tags")))
        m.interfaces[iid] = bond
        return self._ij(m, bond)

    def interface_read(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        return self._ij(m, iface)

    def interface_update(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "update interface", extra=(S.DEPLOYED,))
        d = req.body
        errors: dict[str, list[str]] = {}
        name = d.get("name")
        if name is not None and any(i.name == name and i.id != iface.id for i in m.interfaces.values()):
            errors["name"] = [f"Interface with name '{name}' already exists on this machine."]
        mac = d.get("mac_address")
        if mac is not None:
            if not valid_mac(mac):
                errors["mac_address"] = [f"'{mac}' is not a valid MAC address."]
            elif self.state.by_mac.get(normalize_mac(mac), m.system_id) != m.system_id:
                errors["mac_address"] = [f"MAC address {mac} already in use."]
        deployed = m.status == S.DEPLOYED  # DeployedInterfaceForm: name and mac_address only
        vlan_id: int | None | str = "unchanged"
        if not deployed and "vlan" in d:
            raw = d.get("vlan") or ""
            if raw.strip() in ("", "null", "None"):
                vlan_id = None
            else:
                vlan_id = parse_int(raw, "vlan")
                if vlan_id not in self.state.vlans:
                    errors["vlan"] = ["Select a valid choice. That choice is not one of the available choices."]
        bond_mode = d.get("bond_mode")
        if not deployed and bond_mode is not None and iface.type == "bond" and bond_mode not in BOND_MODES:
            errors["bond_mode"] = _choice_error(bond_mode)
        mtu = None if deployed else parse_int(d.get("mtu"), "mtu")
        link_connected = None
        if not deployed and d.get("link_connected") is not None:
            link_connected = parse_bool(d.get("link_connected"), "link_connected")
        if errors:
            raise bad_request(errors)
        if name is not None:
            iface.name = name
        if mac is not None:
            new_mac = normalize_mac(mac)
            if iface.type == "physical":
                self.state.by_mac.pop(iface.mac, None)
                self.state.by_mac[new_mac] = m.system_id
            iface.mac = new_mac
        if deployed:
            return self._ij(m, iface)
        if vlan_id != "unchanged" and vlan_id != iface.vlan_id:
            iface.vlan_id = vlan_id  # type: ignore[assignment]
            iface.links = [
                link
                for link in iface.links
                if link.subnet_id is not None and self.state.subnets[link.subnet_id].vlan_id == vlan_id
            ]
        if mtu is not None:
            iface.mtu = mtu
        if link_connected is not None:
            iface.link_connected = link_connected
        if d.get("tags") is not None:
            iface.tags = sorted(_multi(d.getlist("tags")))
        if iface.type == "bond" and isinstance(iface.params, dict):
            for key in ("bond_mode", "bond_lacp_rate", "bond_xmit_hash_policy"):
                if d.get(key) is not None:
                    iface.params[key] = d.get(key)
            for key in ("bond_miimon", "bond_downdelay", "bond_updelay", "bond_num_grat_arp"):
                if d.get(key) is not None:
                    iface.params[key] = parse_int(d.get(key), key)
        return self._ij(m, iface)

    def interface_delete(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "delete interface")
        del m.interfaces[iface.id]
        if iface.type == "physical":
            self.state.by_mac.pop(iface.mac, None)
        for other in m.interfaces.values():
            if iface.id in other.parents:
                other.parents.remove(iface.id)
        if m.boot_interface_id == iface.id:
            m.boot_interface_id = next((i.id for i in m.physical()), None)
        return Response(204)

    def interface_link_subnet(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "link subnet")
        d = req.body
        errors: dict[str, list[str]] = {}
        force = parse_bool(d.get("force"), "force")
        raw_mode = d.get("mode")
        mode = (raw_mode or "").strip().lower()
        if not raw_mode:
            errors["mode"] = ["This field is required."]
        elif mode not in ("auto", "dhcp", "static", "link_up"):
            errors["mode"] = _choice_error(raw_mode)
        subnet = None
        spec = d.get("subnet")
        if spec:
            subnet = self.state.subnet_from_spec(spec)
            if subnet is None:
                errors["subnet"] = ["Select a valid choice. That choice is not one of the available choices."]
        elif mode in ("auto", "static"):
            errors["subnet"] = ["This field is required."]
        if subnet is not None and not force and iface.vlan_id is not None and subnet.vlan_id != iface.vlan_id:
            errors["subnet"] = [f"Subnet {subnet.cidr} is not on the same VLAN as the interface."]
        if mode == "link_up" and iface.links and not force:
            errors["mode"] = [
                "Cannot configure interface to link up (with no IP address) while other "
                "links are already configured. Specify force=True to override this "
                "behavior and delete all links."
            ]
        if mode == "dhcp" and not force and any(link.mode == "dhcp" for link in iface.links):
            errors["mode"] = ["Interface already has a link to DHCP."]
        ip = d.get("ip_address")
        if ip and mode == "static" and subnet is not None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                errors["ip_address"] = ["Enter a valid IPv4 or IPv6 address."]
            else:
                hosts = list(subnet.network.hosts())
                if addr not in subnet.network:
                    errors["ip_address"] = [f"IP address is not in the given subnet '{subnet.cidr}'."]
                elif addr in hosts[subnet.dynamic_from - 1 :]:
                    errors["ip_address"] = [
                        f"IP address is inside a dynamic range {hosts[subnet.dynamic_from - 1]} to {hosts[-1]}."
                    ]
                elif ip in self.state.used_ips(subnet) or ip == subnet.gateway_ip:
                    errors["ip_address"] = [f"IP address {ip} is already in use."]
        default_gw = parse_bool(d.get("default_gateway"), "default_gateway")
        if default_gw:
            if mode not in ("auto", "static"):
                errors["default_gateway"] = [f"Cannot use in mode '{mode}'."]
            elif subnet is not None and not subnet.gateway_ip:
                errors["default_gateway"] = ["Subnet has no gateway IP address."]
        if errors:
            raise bad_request(errors)
        if mode == "static" and subnet is not None and not ip:
            ip = self.state.allocate_ip(subnet)
            if ip is None:
                return Response.text(503, f"No more IPs available in subnet: {subnet.cidr}.")
        if force:
            iface.links = []
        if subnet is not None and (force or iface.vlan_id is None):
            iface.vlan_id = subnet.vlan_id
        if mode != "link_up":
            iface.links = [link for link in iface.links if link.mode != "link_up"]
        link = Link(
            self.state.new_link_id(),
            mode,
            subnet.id if subnet else None,
            ip if mode == "static" else None,
            default_gateway=default_gw,
        )
        if default_gw:
            for other in m.interfaces.values():
                for lk in other.links:
                    lk.default_gateway = False
        iface.links.append(link)
        return self._ij(m, iface)

    def interface_unlink_subnet(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "unlink subnet")
        raw = req.body.get("id")
        if not raw:
            raise bad_request({"id": ["This field is required."]})
        link = next((lk for lk in iface.links if str(lk.id) == raw.strip()), None)
        if link is None:
            raise bad_request({"id": _choice_error(raw)})
        iface.links.remove(link)
        if not iface.links and iface.vlan_id is not None:
            iface.links.append(Link(self.state.new_link_id(), "link_up", None))  # ensure_link_up
        return self._ij(m, iface)

    def interface_disconnect(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "disconnect")
        iface.links = []
        iface.vlan_id = None
        return self._ij(m, iface)

    # --- network ---------------------------------------------------------------------------------
    def subnets_read(self, req: Request) -> Any:
        return [model.subnet_json(self.state, s) for s in self.state.subnets.values()]

    def subnet_read(self, req: Request, spec: str) -> Any:
        s = self.state.subnet_from_spec(spec)
        if s is None:
            raise not_found("Subnet")
        return model.subnet_json(self.state, s)

    def fabrics_read(self, req: Request) -> Any:
        return [model.fabric_json(self.state, f) for f in self.state.fabrics.values()]

    def _fabric(self, fabric_id: str):
        f = self.state.fabrics.get(int(fabric_id)) if fabric_id.isdigit() else None
        if f is None:
            f = next((x for x in self.state.fabrics.values() if x.name == fabric_id), None)
        if f is None:
            raise not_found("Fabric")
        return f

    def fabric_read(self, req: Request, fabric_id: str) -> Any:
        return model.fabric_json(self.state, self._fabric(fabric_id))

    def fabric_vlans_read(self, req: Request, fabric_id: str) -> Any:
        f = self._fabric(fabric_id)
        return [model.vlan_json(self.state, v) for v in self.state.vlans.values() if v.fabric_id == f.id]

    def fabric_vlan_read(self, req: Request, fabric_id: str, vid: str) -> Any:
        f = self._fabric(fabric_id)
        v = self.state.vlan_by_vid(f.id, int(vid)) if vid.isdigit() else None
        if v is None:
            raise not_found("VLAN")
        return model.vlan_json(self.state, v)

    def vlan_read(self, req: Request, vlan_id: str) -> Any:
        v = self.state.vlans.get(int(vlan_id)) if vlan_id.isdigit() else None
        if v is None:
            raise not_found("VLAN")
        return model.vlan_json(self.state, v)

    def boot_resources_read(self, req: Request) -> Any:
        kind = (req.query.get("type") or "").lower()
        if kind and kind not in ("synced", "uploaded", "generated"):
            raise bad_request(f"'{kind}' is not a valid type.")
        return [
            model.image_json(i)
            for i in self.state.images
            if not kind or (kind == "uploaded") == i.uploaded and kind != "generated"
        ]

    def boot_resource_read(self, req: Request, id: str) -> Any:
        img = next((i for i in self.state.images if str(i.id) == id), None)
        if img is None:
            raise not_found("BootResource")
        return model.image_json(img, with_sets=True)

    def zones_read(self, req: Request) -> Any:
        return [dict(model.ZONE)]

    def pools_read(self, req: Request) -> Any:
        return [dict(model.POOL)]

    def domains_read(self, req: Request) -> Any:
        return [dict(model.DOMAIN)]

    # --- tags -------------------------------------------------------------------------------------
    def tags_read(self, req: Request) -> Any:
        return [model.tag_json(t) for t in sorted(self.state.tags.values(), key=lambda t: t.name)]

    def tags_create(self, req: Request) -> Any:
        d = req.body
        name = (d.get("name") or "").strip()
        if not name:
            raise bad_request({"name": ["This field is required."]})
        if not re.fullmatch(r"[\w-]+", name):
            raise bad_request({"name": ["Invalid character in tag name."]})
        if name in self.state.tags:
            raise bad_request({"name": ["Tag with this Name already exists."]})
        tag = Tag(
            name,
            comment=d.get("comment") or "",
            definition=d.get("definition") or "",
            kernel_opts=d.get("kernel_opts") or "",
        )
        self.state.tags[name] = tag
        return model.tag_json(tag)

    def _tag(self, name: str) -> Tag:
        tag = self.state.tags.get(name)
        if tag is None:
            raise not_found("Tag")
        return tag

    def tag_read(self, req: Request, name: str) -> Any:
        return model.tag_json(self._tag(name))

    def tag_update(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        for key in ("comment", "definition", "kernel_opts"):
            if req.body.get(key) is not None:
                setattr(tag, key, req.body.get(key) or "")
        return model.tag_json(tag)

    def tag_delete(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        del self.state.tags[tag.name]
        for m in self.state.machines.values():
            m.tags.discard(tag.name)
        return Response(204)

    def tag_update_nodes(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        add, remove = req.body.getlist("add"), req.body.getlist("remove")
        unknown = [sid for sid in add + remove if sid not in self.state.machines]
        if unknown:
            raise bad_request(f"Unknown node(s): {', '.join(unknown)}.")
        added = removed = 0
        for sid in add:
            m = self.state.machines[sid]
            if tag.name not in m.tags:
                m.tags.add(tag.name)
                added += 1
        for sid in remove:
            m = self.state.machines[sid]
            if tag.name in m.tags:
                m.tags.discard(tag.name)
                removed += 1
        return {"added": added, "removed": removed}

    def tag_machines(self, req: Request, name: str) -> Any:
        tag = self._tag(name)
        return [self._mj(m) for m in sorted(self.state.machines.values(), key=lambda m: m.id) if tag.name in m.tags]


def _multi(values: list[str]) -> set[str]:
    """Repeated keys and comma-separated values alike (``tags=a&tags=b`` or ``tags=a,b``)."""
    return {v.strip() for value in values for v in value.split(",") if v.strip()}


def _arch_matches(architecture: str, wanted: str) -> bool:
    return architecture == wanted or architecture.split("/")[0] == wanted


def _power_params(d: Params) -> dict[str, str]:
    prefix = "power_parameters_"
    return {k[len(prefix) :]: d.get(k) or "" for k in d.keys() if k.startswith(prefix)}
