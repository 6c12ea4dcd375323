"""The region's data: machines with their interfaces, the network, images and tags, and the
JSON MAAS renders for each (same keys and value types as real MAAS answers, checked against
the gomaasclient fixtures). Mutable on purpose: this is the simulator's database, guarded
by the simulator's lock; nothing here does I/O."""

from __future__ import annotations

import ipaddress
import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from metalflow.lab.maas.status import NodeStatus

API = "/MAAS/api/2.0"
USER = "admin"
RACK_ID = "rack01"
DOMAIN = {
    "authoritative": True,
    "ttl": None,
    "name": "maas",
    "resource_record_count": 0,
    "id": 0,
    "is_default": True,
    "resource_uri": f"{API}/domains/0/",
}
ZONE = {"name": "default", "description": "", "id": 1, "resource_uri": f"{API}/zones/default/"}
POOL = {"name": "default", "description": "Default pool", "id": 0, "resource_uri": f"{API}/resourcepool/0/"}

MAC_RE = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb")
UBUNTU_VERSIONS = {"focal": "20.04", "jammy": "22.04", "noble": "24.04", "bionic": "18.04"}

# Script result statuses MAAS shows as commissioning_status / *_test_status.
SCRIPT_UNKNOWN, SCRIPT_RUNNING, SCRIPT_PASSED, SCRIPT_FAILED = -1, 1, 2, 3
SCRIPT_NAMES = {-1: "Unknown", 1: "Running", 2: "Passed", 3: "Failed"}

_ADJECTIVES = (
    "able",
    "brave",
    "calm",
    "clever",
    "eager",
    "fair",
    "gentle",
    "happy",
    "jolly",
    "keen",
    "lively",
    "noble",
    "proud",
    "quick",
    "sharp",
    "smart",
    "steady",
    "swift",
    "tidy",
    "witty",
    "causal",
    "bold",
    "crisp",
    "fresh",
)
_ANIMALS = (
    "ant",
    "bat",
    "cat",
    "crab",
    "deer",
    "eagle",
    "fox",
    "gnu",
    "hare",
    "ibis",
    "koala",
    "lark",
    "mole",
    "newt",
    "otter",
    "quagga",
    "robin",
    "seal",
    "toad",
    "vole",
    "wren",
    "yak",
    "zebra",
    "lynx",
)
_SID_CHARS = "abcdefghkmnpqrstwxy345678"


def normalize_mac(mac: str) -> str:
    return mac.strip().lower().replace("-", ":")


def valid_mac(mac: str) -> bool:
    return bool(MAC_RE.match(mac.strip()))


@dataclass
class Fabric:
    id: int
    name: str
    default_vlan_id: int = 0


@dataclass
class Vlan:
    id: int
    vid: int
    fabric_id: int
    name: str
    dhcp_on: bool = False
    mtu: int = 1500


@dataclass
class Subnet:
    id: int
    cidr: str
    vlan_id: int
    gateway_ip: str | None
    name: str = ""
    dns_servers: list[str] = field(default_factory=list)
    # Addresses at or above this host index are the dynamic (DHCP) range; AUTO/STATIC below it.
    dynamic_from: int = 200

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


@dataclass
class Link:
    id: int
    mode: str  # auto, dhcp, static, link_up
    subnet_id: int | None
    ip: str | None = None
    default_gateway: bool = False


@dataclass
class Interface:
    id: int
    name: str
    type: str  # physical, bond
    mac: str
    vlan_id: int | None
    parents: list[int] = field(default_factory=list)
    params: dict[str, Any] | str = ""
    links: list[Link] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    enabled: bool = True
    mtu: int = 1500
    link_connected: bool = True


@dataclass
class Machine:
    id: int
    system_id: str
    hostname: str
    architecture: str
    power_type: str
    power_parameters: dict[str, str]
    status: NodeStatus = NodeStatus.NEW
    owner: str | None = None
    power_state: str = "unknown"
    osystem: str = ""
    distro_series: str = ""
    hwe_kernel: str | None = None
    cpu_count: int = 0
    memory: int = 0
    description: str = ""
    interfaces: dict[int, Interface] = field(default_factory=dict)
    boot_interface_id: int | None = None
    tags: set[str] = field(default_factory=set)
    netboot: bool = True
    status_message: str | None = None
    error_description: str = ""
    agent_name: str = ""
    user_data: str = ""
    previous_status: NodeStatus | None = None
    commissioning_status: int = SCRIPT_UNKNOWN
    # Phase bookkeeping (lifecycle.py): a generation number that every status change bumps, so
    # a stale timer or power callback of an older phase does nothing.
    gen: int = 0
    phase: Any = None

    @property
    def fqdn(self) -> str:
        return f"{self.hostname}.{DOMAIN['name']}"

    @property
    def boot_mac(self) -> str | None:
        iface = self.interfaces.get(self.boot_interface_id or -1)
        return iface.mac if iface else None

    def physical(self) -> list[Interface]:
        return [i for i in self.interfaces.values() if i.type == "physical"]


@dataclass(frozen=True)
class Image:
    """A boot resource: ``os/release`` as MAAS names it, and how deploy refers to it."""

    id: int
    osystem: str
    release: str

    @property
    def uploaded(self) -> bool:
        return self.osystem == "custom"

    @property
    def name(self) -> str:
        """Synced: ``ubuntu/jammy``; uploaded custom images: the bare name (``centos7``)."""
        return self.release if self.uploaded else f"{self.osystem}/{self.release}"

    @property
    def series(self) -> str:
        """The distro_series choice MAAS lists: ``os/release``."""
        return f"{self.osystem}/{self.release}"

    def aliases(self) -> set[str]:
        names = {self.series, self.release}
        version = UBUNTU_VERSIONS.get(self.release) if self.osystem == "ubuntu" else None
        if version:
            names |= {version, f"ubuntu/{version}"}
        return names

    @property
    def architecture(self) -> str:
        version = UBUNTU_VERSIONS.get(self.release) if self.osystem == "ubuntu" else None
        return f"amd64/ga-{version}" if version else "amd64/generic"


@dataclass
class Tag:
    name: str
    comment: str = ""
    definition: str = ""
    kernel_opts: str = ""


class State:
    """The region database. Every method expects the simulator's lock to be held."""

    def __init__(self, *, pxe_vid: int, images: tuple[str, ...], seed: int | None = None):
        self.machines: dict[str, Machine] = {}
        self.by_mac: dict[str, str] = {}
        self.tags: dict[str, Tag] = {}
        self.fabrics: dict[int, Fabric] = {}
        self.vlans: dict[int, Vlan] = {}
        self.subnets: dict[int, Subnet] = {}
        self.images: list[Image] = []
        self._ids = itertools.count(1)
        self._iface_ids = itertools.count(1)
        self._link_ids = itertools.count(1)
        self._rnd = random.Random(seed)
        self._build_network(pxe_vid)
        for n, spec in enumerate(images, start=1):
            osystem, _, release = spec.partition("/")
            if not release:
                osystem, release = "custom", osystem
            self.images.append(Image(n, osystem, release))

    # --- network -------------------------------------------------------------------------
    def _build_network(self, pxe_vid: int) -> None:
        """One fabric: its untagged VLAN, the PXE VLAN (DHCP on, with a subnet and gateway) and
        two guest VLANs with subnets, as a small site would have it."""
        self.fabrics[0] = Fabric(0, "fabric-0", default_vlan_id=5001)
        self.vlans[5001] = Vlan(5001, 0, 0, "untagged")
        guest = [v for v in (100, 101, 102) if v != pxe_vid][:2]
        for n, vid in enumerate([pxe_vid, *guest]):
            vlan_id = 5002 + n
            self.vlans[vlan_id] = Vlan(vlan_id, vid, 0, str(vid), dhcp_on=(n == 0))
            octet = vid % 256
            cidr = f"10.{octet}.0.0/24"
            self.subnets[n + 1] = Subnet(n + 1, cidr, vlan_id, f"10.{octet}.0.1", name=cidr, dns_servers=[])
        self.pxe_vlan_id = 5002
        self.pxe_subnet_id = 1

    def vlan_by_vid(self, fabric_id: int, vid: int) -> Vlan | None:
        for v in self.vlans.values():
            if v.fabric_id == fabric_id and v.vid == vid:
                return v
        return None

    def subnet_from_spec(self, spec: str) -> Subnet | None:
        """MAAS's subnet specifiers: an id, a CIDR, ``cidr:``, ``vid:``, ``vlan:``, ``ip:``,
        ``name:``, ``fabric:`` (the first match)."""
        spec = spec.strip()
        kind, sep, value = spec.partition(":")
        if not sep or kind not in ("cidr", "vid", "vlan", "ip", "name", "fabric", "id"):
            kind, value = ("id", spec) if spec.isdigit() else ("cidr" if "/" in spec else "name", spec)
        for s in self.subnets.values():
            vlan = self.vlans[s.vlan_id]
            if kind == "id" and value.isdigit() and s.id == int(value):
                return s
            if kind == "cidr" and _same_net(s.cidr, value):
                return s
            if kind in ("vid", "vlan") and value.isdigit() and vlan.vid == int(value):
                return s
            if kind == "name" and s.name == value:
                return s
            if kind == "fabric" and self.fabrics[vlan.fabric_id].name == value:
                return s
            if kind == "ip":
                try:
                    if ipaddress.ip_address(value) in s.network:
                        return s
                except ValueError:
                    return None
        return None

    def allocate_ip(self, subnet: Subnet) -> str | None:
        """A free address below the dynamic range (what AUTO links get at deploy)."""
        used = self.used_ips(subnet)
        for n, host in enumerate(subnet.network.hosts(), start=1):
            if n >= subnet.dynamic_from:
                break
            ip = str(host)
            if ip != subnet.gateway_ip and ip not in used:
                return ip
        return None

    def used_ips(self, subnet: Subnet) -> set[str]:
        return {
            link.ip
            for m in self.machines.values()
            for i in m.interfaces.values()
            for link in i.links
            if link.subnet_id == subnet.id and link.ip
        }

    # --- ids -----------------------------------------------------------------------------
    def new_id(self) -> int:
        return next(self._ids)

    def new_iface_id(self) -> int:
        return next(self._iface_ids)

    def new_link_id(self) -> int:
        return next(self._link_ids)

    def new_system_id(self) -> str:
        while True:
            sid = "".join(self._rnd.choice(_SID_CHARS) for _ in range(6))
            if sid not in self.machines:
                return sid

    def new_hostname(self) -> str:
        while True:
            name = f"{self._rnd.choice(_ADJECTIVES)}-{self._rnd.choice(_ANIMALS)}"
            if not self.hostname_taken(name):
                return name

    def hostname_taken(self, hostname: str, *, other_than: str | None = None) -> bool:
        return any(m.hostname == hostname and m.system_id != other_than for m in self.machines.values())

    # --- images --------------------------------------------------------------------------
    def find_image(self, distro_series: str) -> Image | None:
        """Resolve deploy's ``distro_series`` (``ubuntu/jammy``, ``jammy``, ``22.04``,
        ``custom/centos7``, ``centos7``); Ubuntu wins when a bare name is ambiguous."""
        matches = [img for img in self.images if distro_series in img.aliases()]
        matches.sort(key=lambda img: img.osystem != "ubuntu")
        return matches[0] if matches else None

    def usable_architectures(self) -> list[str]:
        return sorted({"amd64/generic"} | {img.architecture for img in self.images})


def _same_net(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return False


# --- JSON renderers -----------------------------------------------------------------------


def vlan_json(state: State, vlan: Vlan) -> dict[str, Any]:
    fabric = state.fabrics[vlan.fabric_id]
    return {
        "id": vlan.id,
        "vid": vlan.vid,
        "name": vlan.name,
        "fabric": fabric.name,
        "fabric_id": fabric.id,
        "mtu": vlan.mtu,
        "dhcp_on": vlan.dhcp_on,
        "external_dhcp": None,
        "relay_vlan": None,
        "primary_rack": RACK_ID if vlan.dhcp_on else None,
        "secondary_rack": None,
        "space": "undefined",
        "resource_uri": f"{API}/vlans/{vlan.id}/",
    }


def subnet_json(state: State, subnet: Subnet) -> dict[str, Any]:
    return {
        "id": subnet.id,
        "name": subnet.name,
        "description": "",
        "cidr": subnet.cidr,
        "vlan": vlan_json(state, state.vlans[subnet.vlan_id]),
        "rdns_mode": 2,
        "gateway_ip": subnet.gateway_ip,
        "dns_servers": list(subnet.dns_servers),
        "allow_dns": True,
        "allow_proxy": True,
        "active_discovery": False,
        "managed": True,
        "disabled_boot_architectures": [],
        "space": "undefined",
        "resource_uri": f"{API}/subnets/{subnet.id}/",
    }


def fabric_json(state: State, fabric: Fabric) -> dict[str, Any]:
    vlans = [vlan_json(state, v) for v in state.vlans.values() if v.fabric_id == fabric.id]
    return {
        "id": fabric.id,
        "name": fabric.name,
        "class_type": None,
        "vlans": vlans,
        "resource_uri": f"{API}/fabrics/{fabric.id}/",
    }


def link_json(state: State, link: Link) -> dict[str, Any]:
    out: dict[str, Any] = {"id": link.id, "mode": link.mode}
    if link.subnet_id is not None:
        out["subnet"] = subnet_json(state, state.subnets[link.subnet_id])
    if link.ip:
        out["ip_address"] = link.ip
    return out


def interface_json(state: State, m: Machine, iface: Interface) -> dict[str, Any]:
    by_id = m.interfaces
    children = sorted(c.name for c in by_id.values() if iface.id in c.parents)
    vlan = state.vlans.get(iface.vlan_id) if iface.vlan_id is not None else None
    return {
        "id": iface.id,
        "name": iface.name,
        "type": iface.type,
        "mac_address": iface.mac,
        "system_id": m.system_id,
        "vlan": vlan_json(state, vlan) if vlan else None,
        "parents": sorted(by_id[p].name for p in iface.parents if p in by_id),
        "children": children,
        "params": dict(iface.params) if isinstance(iface.params, dict) else iface.params,
        "links": [link_json(state, link) for link in iface.links],
        "tags": list(iface.tags),
        "enabled": iface.enabled,
        "discovered": [],
        "effective_mtu": iface.mtu,
        "vendor": None,
        "product": None,
        "firmware_version": None,
        "link_connected": iface.link_connected,
        "link_speed": 1000 if iface.type == "physical" else 0,
        "interface_speed": 1000 if iface.type == "physical" else 0,
        "numa_node": 0,
        "sriov_max_vf": 0,
        "resource_uri": f"{API}/nodes/{m.system_id}/interfaces/{iface.id}/",
    }


def _disk(m: Machine) -> dict[str, Any]:
    size = 500107862016
    return {
        "id": m.id,
        "name": "sda",
        "model": "LABDISK",
        "serial": f"LAB{m.id:08d}",
        "id_path": f"/dev/disk/by-id/wwn-0x5000c500{m.id:08x}",
        "path": "/dev/disk/by-dname/sda",
        "size": size,
        "block_size": 512,
        "available_size": size,
        "used_size": 0,
        "used_for": "Unused",
        "type": "physical",
        "tags": ["ssd"],
        "partitions": [],
        "filesystem": None,
        "partition_table_type": None,
        "uuid": None,
        "storage_pool": None,
        "firmware_version": "1.0",
        "system_id": m.system_id,
        "resource_uri": f"{API}/nodes/{m.system_id}/blockdevices/{m.id}/",
    }


def _hardware_info() -> dict[str, str]:
    keys = (
        "system_vendor",
        "system_product",
        "system_version",
        "system_serial",
        "cpu_model",
        "mainboard_vendor",
        "mainboard_product",
        "mainboard_firmware_version",
        "mainboard_firmware_date",
    )
    return {k: "Unknown" for k in keys}


def machine_json(state: State, m: Machine) -> dict[str, Any]:
    disk = _disk(m)
    boot = m.interfaces.get(m.boot_interface_id or -1)
    ips = [link.ip for i in m.interfaces.values() for link in i.links if link.ip]
    gw_link = next((link for i in m.interfaces.values() for link in i.links if link.default_gateway), None)
    gw_ip = state.subnets[gw_link.subnet_id].gateway_ip if gw_link and gw_link.subnet_id else None
    cstat = m.commissioning_status
    return {
        "system_id": m.system_id,
        "hostname": m.hostname,
        "fqdn": m.fqdn,
        "description": m.description,
        "domain": dict(DOMAIN),
        "zone": dict(ZONE),
        "pool": dict(POOL),
        "node_type": 0,
        "node_type_name": "Machine",
        "status": int(m.status),
        "status_name": m.status.label,
        "status_message": m.status_message,
        "status_action": "",
        "error_description": m.error_description,
        "owner": m.owner,
        "owner_data": {},
        "locked": False,
        "netboot": m.netboot,
        "architecture": m.architecture,
        "min_hwe_kernel": "",
        "hwe_kernel": m.hwe_kernel,
        "osystem": m.osystem,
        "distro_series": m.distro_series,
        "power_state": m.power_state,
        "power_type": m.power_type,
        "cpu_count": m.cpu_count,
        "cpu_speed": 2400,
        "memory": m.memory,
        "storage": round(disk["size"] / 1e6, 6),
        "swap_size": None,
        "tag_names": sorted(m.tags),
        "interface_set": [interface_json(state, m, i) for i in m.interfaces.values()],
        "boot_interface": interface_json(state, m, boot) if boot else None,
        "ip_addresses": ips,
        "default_gateways": {
            "ipv4": {"gateway_ip": gw_ip, "link_id": gw_link.id if gw_link else None},
            "ipv6": {"gateway_ip": None, "link_id": None},
        },
        "disable_ipv4": False,
        "address_ttl": None,
        "boot_disk": disk,
        "blockdevice_set": [disk],
        "physicalblockdevice_set": [disk],
        "virtualblockdevice_set": [],
        "iscsiblockdevice_set": [],
        "volume_groups": [],
        "raids": [],
        "bcaches": [],
        "cache_sets": [],
        "special_filesystems": [],
        "hardware_info": _hardware_info(),
        "pod": None,
        "commissioning_status": cstat,
        "commissioning_status_name": SCRIPT_NAMES[cstat],
        "testing_status": cstat,
        "testing_status_name": SCRIPT_NAMES[cstat],
        "cpu_test_status": SCRIPT_UNKNOWN,
        "cpu_test_status_name": SCRIPT_NAMES[SCRIPT_UNKNOWN],
        "memory_test_status": SCRIPT_UNKNOWN,
        "memory_test_status_name": SCRIPT_NAMES[SCRIPT_UNKNOWN],
        "storage_test_status": SCRIPT_UNKNOWN,
        "storage_test_status_name": SCRIPT_NAMES[SCRIPT_UNKNOWN],
        "other_test_status": SCRIPT_UNKNOWN,
        "other_test_status_name": SCRIPT_NAMES[SCRIPT_UNKNOWN],
        "current_commissioning_result_id": m.id if cstat != SCRIPT_UNKNOWN else None,
        "current_testing_result_id": m.id if cstat != SCRIPT_UNKNOWN else None,
        "current_installation_result_id": m.id if m.osystem else None,
        "resource_uri": f"{API}/machines/{m.system_id}/",
    }


def image_json(img: Image, *, with_sets: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": img.id,
        "type": "Uploaded" if img.uploaded else "Synced",
        "name": img.name,
        "architecture": img.architecture,
        "subarches": "generic"
        if not img.architecture.startswith("amd64/ga-")
        else f"generic,{img.architecture.split('/')[1]}",
        "last_deployed": None,
        "resource_uri": f"{API}/boot-resources/{img.id}/",
    }
    if img.uploaded:
        out["title"] = img.release
        out["base_image"] = ""
    if with_sets:
        size = 935047294
        out["sets"] = {
            "20240101": {
                "version": "20240101",
                "label": "uploaded" if img.uploaded else "stable",
                "size": size,
                "complete": True,
                "files": {
                    "root.tgz": {
                        "filename": "root.tgz",
                        "filetype": "root-tgz",
                        "sha256": f"{img.id:064x}",
                        "size": size,
                        "complete": True,
                    }
                },
            }
        }
    return out


def tag_json(tag: Tag) -> dict[str, Any]:
    return {
        "name": tag.name,
        "definition": tag.definition,
        "comment": tag.comment,
        "kernel_opts": tag.kernel_opts,
        "resource_uri": f"{API}/tags/{tag.name}/",
    }
