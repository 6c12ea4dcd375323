"""Typed MAAS objects: frozen dataclasses, each built by one ``from_api`` constructor.

They are snapshots of what MAAS answered; nothing here talks to MAAS or tracks changes. MAAS
is the truth: the client returns a fresh object after every call. ``from_api`` needs only the
identifying keys and tolerates missing optional ones (MAAS versions differ; the lab's
simulator sends a subset), and nested objects MAAS sometimes sends as a name, an id or ``null``
(``zone``, ``vlan``, ``subnet``) are accepted in each form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any, overload


class NodeStatus(IntEnum):
    """MAAS's node status numbers (``maascommon/enums/node.py``)."""

    NEW = 0
    COMMISSIONING = 1
    FAILED_COMMISSIONING = 2
    MISSING = 3
    READY = 4
    RESERVED = 5
    DEPLOYED = 6
    RETIRED = 7
    BROKEN = 8
    DEPLOYING = 9
    ALLOCATED = 10
    FAILED_DEPLOYMENT = 11
    RELEASING = 12
    FAILED_RELEASING = 13
    DISK_ERASING = 14
    FAILED_DISK_ERASING = 15
    RESCUE_MODE = 16
    ENTERING_RESCUE_MODE = 17
    FAILED_ENTERING_RESCUE_MODE = 18
    EXITING_RESCUE_MODE = 19
    FAILED_EXITING_RESCUE_MODE = 20
    TESTING = 21
    FAILED_TESTING = 22

    @property
    def label(self) -> str:
        """MAAS's ``status_name`` spelling, e.g. 13 -> "Releasing failed"."""
        return _LABELS.get(self, self.name.replace("_", " ").capitalize())

    @classmethod
    def parse(cls, value: NodeStatus | int | str) -> NodeStatus:
        """A status from its number, its enum name (``failed_deployment``, as the ``status``
        filter spells it) or its label ("Releasing failed")."""
        if isinstance(value, NodeStatus):
            return value
        if isinstance(value, int):
            return cls(value)
        text = str(value).strip()
        if text.isdigit():
            return cls(int(text))
        key = text.upper().replace(" ", "_").replace("-", "_")
        if key in cls.__members__:
            return cls[key]
        for status in cls:
            if status.label.lower() == text.lower():
                return status
        raise ValueError(f"unknown MAAS node status {value!r}")


# Labels that are not simply the capitalised enum name.
_LABELS = MappingProxyType(
    {
        NodeStatus.FAILED_RELEASING: "Releasing failed",
        NodeStatus.FAILED_ENTERING_RESCUE_MODE: "Failed to enter rescue mode",
        NodeStatus.FAILED_EXITING_RESCUE_MODE: "Failed to exit rescue mode",
    }
)

#: The FAILED_* states: a phase ended in failure.
FAILED_STATES = frozenset(s for s in NodeStatus if s.name.startswith("FAILED_"))

#: States that end a wait at once unless they are the target: FAILED_* and BROKEN.
WAIT_FAILURE_STATES = FAILED_STATES | {NodeStatus.BROKEN}


def _name_of(value: Any) -> str:
    """``zone``/``pool``/``domain`` come as objects with a ``name`` (or, in some answers, a
    bare name)."""
    if isinstance(value, Mapping):
        return str(value.get("name") or "")
    return "" if value is None else str(value)


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


@dataclass(frozen=True)
class Vlan:
    """A VLAN. ``id`` is MAAS's database id (what ``PUT interfaces/{id}/ vlan=`` takes);
    ``vid`` is the 802.1Q tag (0 = untagged)."""

    id: int
    vid: int
    name: str = ""
    fabric: str = ""
    fabric_id: int | None = None
    mtu: int = 1500
    dhcp_on: bool = False
    primary_rack: str | None = None
    space: str = ""

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Vlan:
        return cls(
            id=int(d["id"]),
            vid=int(d.get("vid", 0)),
            name=str(d.get("name") or ""),
            fabric=_name_of(d.get("fabric")),
            fabric_id=d.get("fabric_id"),
            mtu=int(d.get("mtu") or 1500),
            dhcp_on=bool(d.get("dhcp_on", False)),
            primary_rack=d.get("primary_rack"),
            space=_name_of(d.get("space")),
        )


def _vlan_or_none(value: Any) -> Vlan | None:
    return Vlan.from_api(value) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Subnet:
    id: int
    cidr: str
    name: str = ""
    vlan: Vlan | None = None
    gateway_ip: str | None = None
    dns_servers: tuple[str, ...] = ()
    managed: bool = True
    space: str = ""

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Subnet:
        return cls(
            id=int(d["id"]),
            cidr=str(d.get("cidr") or ""),
            name=str(d.get("name") or ""),
            vlan=_vlan_or_none(d.get("vlan")),
            gateway_ip=d.get("gateway_ip") or None,
            dns_servers=_tuple_of_str(d.get("dns_servers")),
            managed=bool(d.get("managed", True)),
            space=_name_of(d.get("space")),
        )


@dataclass(frozen=True)
class Fabric:
    id: int
    name: str
    vlans: tuple[Vlan, ...] = ()
    class_type: str | None = None

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Fabric:
        return cls(
            id=int(d["id"]),
            name=str(d.get("name") or ""),
            vlans=tuple(Vlan.from_api(v) for v in d.get("vlans") or ()),
            class_type=d.get("class_type"),
        )


@dataclass(frozen=True)
class Link:
    """One address binding of an interface. ``mode`` is lowercase: auto, dhcp, static or
    link_up; ``ip_address`` is present only once assigned."""

    id: int
    mode: str
    subnet: Subnet | None = None
    ip_address: str | None = None

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Link:
        subnet = d.get("subnet")
        return cls(
            id=int(d["id"]),
            mode=str(d.get("mode") or "").lower(),
            subnet=Subnet.from_api(subnet) if isinstance(subnet, Mapping) else None,
            ip_address=d.get("ip_address") or None,
        )


@dataclass(frozen=True)
class Interface:
    id: int
    name: str
    type: str  # physical, bond, bridge, vlan, alias, unknown
    mac_address: str
    system_id: str = ""
    parents: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    vlan: Vlan | None = None
    links: tuple[Link, ...] = ()
    enabled: bool = True
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)  # bond_mode, ...
    tags: tuple[str, ...] = ()
    effective_mtu: int | None = None
    link_connected: bool | None = None

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Interface:
        params = d.get("params")
        return cls(
            id=int(d["id"]),
            name=str(d["name"]),
            type=str(d.get("type") or "unknown"),
            mac_address=str(d.get("mac_address") or "").lower(),
            system_id=str(d.get("system_id") or ""),
            parents=_tuple_of_str(d.get("parents")),
            children=_tuple_of_str(d.get("children")),
            vlan=_vlan_or_none(d.get("vlan")),
            links=tuple(Link.from_api(link) for link in d.get("links") or ()),
            enabled=bool(d.get("enabled", True)),
            params=dict(params) if isinstance(params, Mapping) else {},  # MAAS sends "" for none
            tags=_tuple_of_str(d.get("tags")),
            effective_mtu=d.get("effective_mtu"),
            link_connected=d.get("link_connected"),
        )


@dataclass(frozen=True)
class Machine:
    system_id: str
    hostname: str
    status: NodeStatus
    status_name: str = ""
    status_message: str | None = None
    fqdn: str = ""
    power_state: str = "unknown"  # on, off, unknown, error
    power_type: str = ""
    owner: str | None = None
    osystem: str = ""
    distro_series: str = ""
    architecture: str = ""
    cpu_count: int = 0
    memory: int = 0  # MiB
    tag_names: tuple[str, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    boot_interface: Interface | None = None
    zone: str = ""
    pool: str = ""
    domain: str = ""
    netboot: bool = True
    locked: bool = False
    hwe_kernel: str | None = None
    error_description: str = ""
    ip_addresses: tuple[str, ...] = ()
    description: str = ""
    node_type: int = 0  # 0 machine; controllers (2-4) have no status and are not Machines

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Machine:
        if d.get("status") is None:
            raise ValueError(
                f"node {d.get('system_id', '?')} ({d.get('node_type_name') or 'node_type ' + str(d.get('node_type'))}) "
                "has no status: not a machine"
            )
        status = NodeStatus(int(d["status"]))
        boot = d.get("boot_interface")
        return cls(
            system_id=str(d["system_id"]),
            hostname=str(d["hostname"]),
            status=status,
            status_name=str(d.get("status_name") or status.label),
            status_message=d.get("status_message") or None,
            fqdn=str(d.get("fqdn") or ""),
            power_state=str(d.get("power_state") or "unknown"),
            power_type=str(d.get("power_type") or ""),
            owner=d.get("owner") or None,
            osystem=str(d.get("osystem") or ""),
            distro_series=str(d.get("distro_series") or ""),
            architecture=str(d.get("architecture") or ""),
            cpu_count=int(d.get("cpu_count") or 0),
            memory=int(d.get("memory") or 0),
            tag_names=_tuple_of_str(d.get("tag_names")),
            interfaces=tuple(Interface.from_api(i) for i in d.get("interface_set") or ()),
            boot_interface=Interface.from_api(boot) if isinstance(boot, Mapping) else None,
            zone=_name_of(d.get("zone")),
            pool=_name_of(d.get("pool")),
            domain=_name_of(d.get("domain")),
            netboot=bool(d.get("netboot", True)),
            locked=bool(d.get("locked", False)),
            hwe_kernel=d.get("hwe_kernel") or None,
            error_description=str(d.get("error_description") or ""),
            ip_addresses=_tuple_of_str(d.get("ip_addresses")),
            description=str(d.get("description") or ""),
            node_type=int(d.get("node_type") or 0),
        )

    @property
    def macs(self) -> tuple[str, ...]:
        """The MAC addresses of the physical interfaces."""
        return tuple(i.mac_address for i in self.interfaces if i.type == "physical")

    def interface(self, name: str) -> Interface:
        for i in self.interfaces:
            if i.name == name:
                return i
        raise KeyError(f"{self.system_id} has no interface {name!r}")

    def interface_by_mac(self, mac: str) -> Interface | None:
        mac = mac.lower()
        physical = [i for i in self.interfaces if i.mac_address == mac]
        # A bond inherits its first parent's MAC: prefer the physical NIC.
        physical.sort(key=lambda i: i.type != "physical")
        return physical[0] if physical else None


# Bootloader resources share boot-resources/ with OS images; they are never deploy targets.
_BOOTLOADERS = ("grub-efi-signed", "grub-efi", "grub-ieee1275", "pxelinux", "u-boot", "open-firmware")


@dataclass(frozen=True)
class BootResource:
    """An OS image (or bootloader) MAAS holds. Synced names are ``os/release``
    (``ubuntu/jammy``); uploaded custom images are a bare name (``alma9``) or ``custom/<n>``,
    both of which MAAS deploys as osystem ``custom``, release ``<n>``."""

    id: int
    type: str  # Synced, Uploaded (Generated on old MAAS)
    name: str
    architecture: str
    subarches: tuple[str, ...] = ()
    title: str = ""
    base_image: str = ""

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> BootResource:
        return cls(
            id=int(d["id"]),
            type=str(d.get("type") or ""),
            name=str(d["name"]),
            architecture=str(d.get("architecture") or ""),
            subarches=_tuple_of_str(d.get("subarches")),
            title=str(d.get("title") or ""),
            base_image=str(d.get("base_image") or ""),
        )

    @property
    def osystem(self) -> str:
        return split_image_name(self.name, bare_os="custom")[0]

    @property
    def release(self) -> str:
        return split_image_name(self.name, bare_os="custom")[1]

    @property
    def is_bootloader(self) -> bool:
        return self.name.split("/", 1)[0] in _BOOTLOADERS


@overload
def split_image_name(name: str, *, bare_os: str) -> tuple[str, str]: ...
@overload
def split_image_name(name: str, *, bare_os: None = None) -> tuple[str | None, str]: ...
def split_image_name(name: str, *, bare_os: str | None = None) -> tuple[str | None, str]:
    """``"ubuntu/jammy"`` -> ``("ubuntu", "jammy")``; a bare ``"alma9"`` -> ``(bare_os,
    "alma9")`` (``None`` when unknown: ``jammy`` and ``alma9`` look alike)."""
    name = name.strip()
    if "/" in name:
        osystem, release = name.split("/", 1)
        return osystem, release
    return bare_os, name


@dataclass(frozen=True)
class Tag:
    """A MAAS tag (``GET tags/``: name, comment, definition, kernel_opts). A manual tag has an
    empty ``definition``; metalflow's carry the comment ``TAG_COMMENT``."""

    name: str
    comment: str = ""
    definition: str = ""

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> Tag:
        return cls(str(d["name"]), str(d.get("comment") or ""), str(d.get("definition") or ""))


#: The comment metalflow gives the tags it creates: what tells them from an operator's.
TAG_COMMENT = "created by metalflow"
