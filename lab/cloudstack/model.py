"""What the simulated management server knows: configuration, hosts, networks, templates, custom
actions and VMs, as JSON-friendly dataclasses (the state file holds them as plain dicts)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

VERSIONS = ("4.21", "4.22")
PARAMETER_TYPES = ("STRING", "NUMBER", "BOOLEAN", "DATE")
ACTION_NAME = re.compile(r"^[a-zA-Z0-9 _-]+$")  # addCustomAction's rule
EXTERNAL = "External:"  # the prefix of a VM/host detail that the extension sees

# VM states (VirtualMachine.State) this simulator uses; an expunged VM is removed.
STOPPED, STARTING, RUNNING, STOPPING = "Stopped", "Starting", "Running", "Stopping"
ERROR, DESTROYED, EXPUNGING = "Error", "Destroyed", "Expunging"
VM_STATES = (STOPPED, STARTING, RUNNING, STOPPING, ERROR, DESTROYED, EXPUNGING)

# Power states a status answer is read as.
POWER_ON, POWER_OFF, POWER_UNKNOWN = "PowerOn", "PowerOff", "PowerUnknown"

# Who calls (4.22 ``caller``): an admin making the API calls, and the system account for pings.
ADMIN_CALLER = {
    "id": "b4f1a0c2-6a4e-4c0e-9a59-2f1d7e3c0a01",
    "name": "admin",
    "type": "ADMIN",
    "roleid": "5e6e8b1c-1d2f-4f7a-9a0b-0c1d2e3f4a01",
    "rolename": "Root Admin",
    "roletype": "Admin",
}
SYSTEM_CALLER = {
    "id": "7d4e2c1a-0b9f-4e8d-8c7b-6a5f4e3d2c01",
    "name": "system",
    "type": "ADMIN",
    "roleid": ADMIN_CALLER["roleid"],
    "rolename": "Root Admin",
    "roletype": "Admin",
}

T = TypeVar("T")


def _from(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Extension:
    """An Orchestrator extension: its name, its executable, its details and its environment."""

    name: str
    path: str
    details: dict[str, str] = field(default_factory=dict)  # shown as externaldetails.extension
    requires_prepare: bool = True  # orchestratorrequirespreparevm
    env: dict[str, str] = field(default_factory=dict)  # added to the orchestrator's environment
    workdir: str | None = None  # the child's cwd (None: the state directory)


@dataclass
class Config:
    extension: Extension
    version: str = "4.22"
    start_retry: int = 10  # start.retry
    wait: int = 1800  # the global ``wait`` setting
    caller: dict[str, str] = field(default_factory=lambda: dict(ADMIN_CALLER))
    planner_seed: int = 0
    resourcemap: dict[str, str] = field(default_factory=dict)  # the cluster mapping's details
    vlan_on_implement: int = 1000  # first VLAN a not-yet-implemented network gets
    data_dir: str | None = None  # payload files (None: <state dir>/extensions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        data = dict(data)
        data["extension"] = _from(Extension, data["extension"])
        return _from(cls, data)


@dataclass
class Host:
    id: int
    name: str
    uuid: str
    details: dict[str, str] = field(default_factory=dict)  # the External: details, prefix stripped
    state: str = "Up"


@dataclass
class Network:
    id: int
    name: str
    uuid: str
    vlan: int | None  # None: not implemented yet, gets its VLAN before the first create/start
    cidr: str
    gateway: str
    mtu: int = 1500
    #: A fault: implementing the network fails with this text (after prepare, before create),
    #: as when CloudStack runs out of VLANs or its virtual router does not start.
    implement_error: str | None = None


@dataclass
class Template:
    name: str
    details: dict[str, str] = field(default_factory=dict)  # externaldetails, copied to the VM


@dataclass
class Parameter:
    name: str
    type: str = "STRING"  # STRING, NUMBER, BOOLEAN or DATE
    required: bool = False
    validation: str | None = None  # e.g. DECIMAL for a NUMBER sent as a float


@dataclass
class CustomAction:
    name: str
    parameters: list[Parameter] = field(default_factory=list)
    timeout: int | None = None  # None: 3 s when run (EMI addCustomAction's default)
    details: dict[str, str] = field(default_factory=dict)  # externaldetails.action

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CustomAction:
        action = _from(cls, data)
        action.parameters = [p if isinstance(p, Parameter) else _from(Parameter, p) for p in action.parameters]
        return action


@dataclass
class Nic:
    device_id: int
    default: bool
    network: str  # the network's uuid
    nic_uuid: str
    mac: str
    ip: str
    ip6: str | None = None


@dataclass
class VM:
    id: int
    uuid: str
    name: str  # the internal name i-2-<id>-VM
    display_name: str
    state: str
    template: str
    cpus: int
    ram: int  # bytes
    speed: int
    vnc_password: str
    details: dict[str, str] = field(default_factory=dict)
    nics: list[Nic] = field(default_factory=list)
    host_id: int | None = None
    last_host_id: int | None = None
    created_at: str = ""

    @property
    def external_details(self) -> dict[str, str]:
        """The ``External:`` details, prefix stripped (externaldetails.virtualmachine)."""
        return {k[len(EXTERNAL) :]: v for k, v in self.details.items() if k.startswith(EXTERNAL)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VM:
        vm = _from(cls, data)
        vm.nics = [n if isinstance(n, Nic) else _from(Nic, n) for n in vm.nics]
        return vm


@dataclass
class State:
    config: Config
    hosts: list[Host] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    templates: list[Template] = field(default_factory=list)
    actions: list[CustomAction] = field(default_factory=list)
    vms: list[VM] = field(default_factory=list)
    expunged: list[dict[str, str]] = field(default_factory=list)  # uuid and display name, for `calls`
    next_vm_id: int = 100
    next_host_id: int = 1
    next_network_id: int = 204
    next_mac: int = 1
    next_vlan: int | None = None
    planner_picks: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"format": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        state = _from(cls, data)
        state.config = Config.from_dict(data["config"])
        state.hosts = [_from(Host, h) for h in data.get("hosts", [])]
        state.networks = [_from(Network, n) for n in data.get("networks", [])]
        state.templates = [_from(Template, t) for t in data.get("templates", [])]
        state.actions = [CustomAction.from_dict(a) for a in data.get("actions", [])]
        state.vms = [VM.from_dict(v) for v in data.get("vms", [])]
        return state
