"""Routing on (path, method, ``op``) to the resources' handlers, in one table; and the API's
description of itself (``version/``, ``describe/``, the ``X-MAAS-API-Hash``) built from that
table, so that what the simulator answers and what it says it answers cannot drift apart."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from metalflow.lab.maas.api.base import Request, Resource, Response, bad_request
from metalflow.lab.maas.api.boot_resources import BootResources
from metalflow.lab.maas.api.interfaces import Interfaces
from metalflow.lab.maas.api.machine import OneMachine
from metalflow.lab.maas.api.machines import Machines
from metalflow.lab.maas.api.network import Network
from metalflow.lab.maas.api.placement import Placement
from metalflow.lab.maas.api.tags import Tags
from metalflow.lab.maas.api.users import Users
from metalflow.lab.maas.lifecycle import Lifecycle
from metalflow.lab.maas.model import API, State

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


class ApiInfo(Resource):
    """``version/`` and ``describe/``: anonymous, what any client may ask first."""

    def version(self, req: Request) -> Any:
        return {"capabilities": CAPABILITIES, "version": MAAS_VERSION, "subversion": "lab"}

    def describe(self, req: Request) -> Any:
        return describe_document(self.base_url())


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # e.g. "machines/{system_id}/"
    resource: type[Resource]  # the class whose methods handle it
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
        "VersionHandler",
        "version/",
        ApiInfo,
        {("GET", None): "version"},
        anon=True,
        doc="Information about this MAAS instance.",
    ),
    Route("DescribeHandler", "describe/", ApiInfo, {("GET", None): "describe"}, anon=True, doc="Describe the API."),
    Route("UsersHandler", "users/", Users, {("GET", "whoami"): "whoami"}, doc="Manage the user accounts."),
    Route(
        "MachinesHandler",
        "machines/",
        Machines,
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
        OneMachine,
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
        Interfaces,
        {
            ("GET", None): "interfaces_read",
            ("POST", "create_bond"): "interfaces_create_bond",
        },
        doc="Manage interfaces on a node.",
    ),
    Route(
        "InterfaceHandler",
        "nodes/{system_id}/interfaces/{id}/",
        Interfaces,
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
    Route("SubnetsHandler", "subnets/", Network, {("GET", None): "subnets_read"}, doc="Manage subnets."),
    Route("SubnetHandler", "subnets/{spec}/", Network, {("GET", None): "subnet_read"}, doc="Manage a subnet."),
    Route("FabricsHandler", "fabrics/", Network, {("GET", None): "fabrics_read"}, doc="Manage fabrics."),
    Route("FabricHandler", "fabrics/{fabric_id}/", Network, {("GET", None): "fabric_read"}, doc="Manage a fabric."),
    Route(
        "VlansHandler",
        "fabrics/{fabric_id}/vlans/",
        Network,
        {("GET", None): "fabric_vlans_read"},
        doc="Manage VLANs on a fabric.",
    ),
    Route(
        "VlanHandler",
        "fabrics/{fabric_id}/vlans/{vid}/",
        Network,
        {("GET", None): "fabric_vlan_read"},
        doc="Manage a VLAN on a fabric (by VID).",
    ),
    Route(
        "VlanByIdHandler",
        "vlans/{vlan_id}/",
        Network,
        {("GET", None): "vlan_read"},
        doc="Manage a VLAN (by database id).",
    ),
    Route(
        "BootResourcesHandler",
        "boot-resources/",
        BootResources,
        {("GET", None): "boot_resources_read"},
        doc="Manage the boot resources.",
    ),
    Route(
        "BootResourceHandler",
        "boot-resources/{id}/",
        BootResources,
        {("GET", None): "boot_resource_read"},
        doc="Manage a boot resource.",
    ),
    Route(
        "TagsHandler",
        "tags/",
        Tags,
        {("GET", None): "tags_read", ("POST", None): "tags_create"},
        doc="Manage all tags known to MAAS.",
    ),
    Route(
        "TagHandler",
        "tags/{name}/",
        Tags,
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
    Route("ZonesHandler", "zones/", Placement, {("GET", None): "zones_read"}, doc="Manage physical zones."),
    Route(
        "ResourcePoolsHandler", "resourcepools/", Placement, {("GET", None): "pools_read"}, doc="Manage resource pools."
    ),
    Route("DomainsHandler", "domains/", Placement, {("GET", None): "domains_read"}, doc="Manage domains."),
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


class Api:
    """The router: one instance of each resource class over the simulator's state. ``lock``
    guards ``state``; ``dispatch`` holds it around each handler."""

    def __init__(self, state: State, lock: threading.RLock, lifecycle: Lifecycle, base_url: Callable[[], str]):
        self.lock = lock
        self.api_hash = api_hash()
        self._resources = {r.resource: r.resource(state, lock, lifecycle, base_url) for r in ROUTES}

    def dispatch(self, route: Route, req: Request, args: dict[str, str]) -> Response:
        op = req.query.get("op") or (req.body.get("op") if req.method in ("POST", "PUT") else None)
        name = route.actions.get((req.method, op or None))
        if name is None:
            raise bad_request(f"Unrecognised signature: method={req.method} op={op}")
        handler: Callable[..., Any] = getattr(self._resources[route.resource], name)
        if name == "machine_query_power_state":  # waits on the BMC: not under the lock
            result = handler(req, **args)
        else:
            with self.lock:
                result = handler(req, **args)
        return result if isinstance(result, Response) else Response.json(result)
