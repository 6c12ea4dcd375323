"""What a lab is made of: hosts, their BMCs and NICs, switches and the cabling between them.

One ``LabSpec`` describes the whole physical world. Every simulator is built from it and
``metalflow lab up`` writes it out as the manifest that clients and tests read.

Addresses: each lab lives in its own loopback block ``127.<100+block>.0.0/16`` so that several
labs (the demo, a test run) can run side by side on one machine:

- BMC *i* (0-based) listens on ``127.<100+block>.<1 + i // 250>.<1 + i % 250>`` port 623
  (16230 when not root, since ports below 1024 need root);
- switch *j* on ``127.<100+block>.200.<1 + j>`` port 22 (10022 when not root);
- MAAS on ``127.<100+block>.250.1`` port 5240 and the lab control API on the same address,
  port 5241.

A package of its own, not a module of ``metalflow.lab``: the simulators (``lab.bmc``,
``lab.maas``, ``lab.switch``) are built from it, and the lab's top level (``runner``, ``world``)
composes those simulators, so the spec must sit below both for the lab's packages to form a DAG.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass, field

PXE_VLAN_DEFAULT = 10
DEFAULT_VLAN = 1


def _privileged() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Timing:
    """Durations of the simulated phases, in seconds (short defaults, for tests)."""

    commission: float = 1.0
    deploy: float = 2.0
    release: float = 0.3
    erase: float = 1.0
    quick_erase: float = 0.5
    secure_erase: float = 1.5
    node_timeout: float = 15.0  # MAAS's node_timeout: a phase without a netboot fails after it
    soft_off: float = 0.5  # how long an OS takes to honour an ACPI soft-off request
    boot: float = 0.2  # power-on to the first DHCP request


@dataclass(frozen=True)
class BmcSpec:
    host: str  # the host's name, the key for state and faults
    address: str
    port: int
    username: str
    password: str


@dataclass(frozen=True)
class NicSpec:
    mac: str  # lower-case, colon separated
    switch: str  # switch name
    port: str  # port name in the switch's dialect, e.g. "1/1/3" or "GigabitEthernet1/0/3"


@dataclass(frozen=True)
class HostSpec:
    name: str  # e.g. "host-001"
    cloudstack_id: int
    bmc: BmcSpec
    nics: tuple[NicSpec, ...]  # nics[0] is the boot (PXE) NIC
    cpu_count: int = 16
    memory_mb: int = 65536
    arch: str = "amd64/generic"

    @property
    def boot_mac(self) -> str:
        return self.nics[0].mac

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(n.mac for n in self.nics)


@dataclass(frozen=True)
class SwitchSpec:
    name: str  # e.g. "tor-1"
    dialect: str  # "force10" (Dell OS9, the seed's "Force10") or "cisco_ios"
    address: str
    port: int
    username: str
    password: str
    enable_secret: str
    ports: tuple[str, ...]  # every port name the switch has


# The rack-config "type" (seed format) and the netmiko device type of each simulated dialect.
DIALECTS = {
    "force10": {"rack_type": "Force10", "netmiko": "dell_force10"},
    "cisco_ios": {"rack_type": "CiscoIOS", "netmiko": "cisco_ios"},
}


def port_name(dialect: str, index: int) -> str:
    """The name of front-panel port ``index`` (1-based) in a dialect."""
    if dialect == "force10":
        return f"1/1/{index}"
    if dialect == "cisco_ios":
        return f"GigabitEthernet1/0/{index}"
    raise ValueError(f"unknown dialect {dialect!r}")


@dataclass(frozen=True)
class MaasSpec:
    address: str
    port: int
    consumer_key: str
    token_key: str
    token_secret: str
    preseed_dir: str
    pxe_vlan: int = PXE_VLAN_DEFAULT
    images: tuple[str, ...] = ("ubuntu/jammy", "ubuntu/noble", "centos/centos70", "custom/centos7")

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/MAAS/"

    @property
    def api_key(self) -> str:
        return f"{self.consumer_key}:{self.token_key}:{self.token_secret}"

    @property
    def settings(self) -> str:
        """CloudStack's ``external.baremetal.system.url`` in the seed's format, plus the port."""
        return (
            f"MaasIP={self.address};MaasPort={self.port};MaasKey={self.token_key};"
            f"MaasSecret={self.token_secret};MaasConsumerKey={self.consumer_key}"
        )


@dataclass(frozen=True)
class LabSpec:
    block: int
    maas: MaasSpec
    hosts: tuple[HostSpec, ...]
    switches: tuple[SwitchSpec, ...]
    control_address: str
    control_port: int
    timing: Timing = field(default_factory=Timing)
    workdir: str = ""
    bmc_processes: int = 0  # 0: chosen from the host count

    @property
    def control_url(self) -> str:
        return f"http://{self.control_address}:{self.control_port}/"

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def switch(self, name: str) -> SwitchSpec:
        for s in self.switches:
            if s.name == name:
                return s
        raise KeyError(name)

    def rack_config(self) -> dict:
        """The seed's rack config JSON: one rack per switch, its hosts by MAC and port."""
        racks = []
        for sw in self.switches:
            cabled = [{"mac": nic.mac, "port": nic.port} for h in self.hosts for nic in h.nics if nic.switch == sw.name]
            racks.append(
                {
                    "l2Switch": {
                        "ip": sw.address,
                        "port": sw.port,
                        "username": sw.username,
                        "password": sw.password,
                        "type": DIALECTS[sw.dialect]["rack_type"],
                    },
                    "hosts": cabled,
                }
            )
        return {"racks": racks}

    def manifest(self) -> dict:
        """Everything a client needs to use this lab (written by ``metalflow lab up``)."""
        return {
            "lab": {"block": self.block, "workdir": self.workdir, "control_url": self.control_url},
            "maas": {
                "url": self.maas.url,
                "api_key": self.maas.api_key,
                "settings": self.maas.settings,
                "preseed_dir": self.maas.preseed_dir,
                "pxe_vlan": self.maas.pxe_vlan,
                "images": list(self.maas.images),
            },
            "rack_config": self.rack_config(),
            "switches": [
                {
                    "name": s.name,
                    "type": DIALECTS[s.dialect]["rack_type"],
                    "netmiko_device_type": DIALECTS[s.dialect]["netmiko"],
                    "address": s.address,
                    "port": s.port,
                    "username": s.username,
                    "password": s.password,
                    "enable_secret": s.enable_secret,
                }
                for s in self.switches
            ],
            "hosts": [
                {
                    "name": h.name,
                    "cloudstack_id": h.cloudstack_id,
                    "ipmi": {
                        "address": h.bmc.address,
                        "port": h.bmc.port,
                        "username": h.bmc.username,
                        "password": h.bmc.password,
                    },
                    "macs": list(h.macs),
                    "nics": [asdict(n) for n in h.nics],
                    "cpu_count": h.cpu_count,
                    "memory_mb": h.memory_mb,
                    "arch": h.arch,
                }
                for h in self.hosts
            ],
            "timing": asdict(self.timing),
        }


def _mac(block: int, host: int, nic: int) -> str:
    # Locally administered unicast prefix 02:..., unique per block, host and NIC.
    octets = (0x02, block & 0xFF, (host >> 8) & 0xFF, host & 0xFF, 0x10 + nic, 0x01)
    return ":".join(f"{o:02x}" for o in octets)


def generate(
    hosts: int = 4,
    switches: int = 1,
    *,
    block: int = 0,
    nics_per_host: int | tuple[int, ...] = (1, 2),
    dialects: tuple[str, ...] = ("force10", "cisco_ios"),
    pxe_vlan: int = PXE_VLAN_DEFAULT,
    timing: Timing | None = None,
    workdir: str = "",
    privileged: bool | None = None,
    seed_secrets: str | None = None,
) -> LabSpec:
    """A lab of ``hosts`` hosts spread over ``switches`` switches.

    ``nics_per_host`` cycles: with the default ``(1, 2)`` every second host has two cabled NICs
    (so bonding is exercised). Switch *j* speaks ``dialects[j % len(dialects)]``. Credentials are
    random per lab unless ``seed_secrets`` is given (tests use it for reproducible runs).
    """
    if not 0 <= block <= 99:
        raise ValueError("block must be between 0 and 99")
    if hosts < 1 or switches < 1:
        raise ValueError("a lab needs at least one host and one switch")
    if hosts > 250 * 199:
        raise ValueError("at most 49,750 hosts per lab")
    priv = _privileged() if privileged is None else privileged
    bmc_port = 623 if priv else 16230
    ssh_port = 22 if priv else 10022
    net = f"127.{100 + block}"
    rnd = secrets.SystemRandom() if seed_secrets is None else None

    def secret(label: str, n: int = 16) -> str:
        if rnd is None:
            import hashlib

            return hashlib.sha256(f"{seed_secrets}:{label}".encode()).hexdigest()[:n]
        return secrets.token_hex(n // 2)

    cycle = (nics_per_host,) if isinstance(nics_per_host, int) else tuple(nics_per_host)
    # Cable hosts round-robin onto switches; each switch numbers its ports from 1.
    next_port = [1] * switches
    host_specs = []
    bmc_user = "admin"
    for i in range(hosts):
        sw = i % switches
        dialect = dialects[sw % len(dialects)]
        nics = []
        for k in range(cycle[(i // switches) % len(cycle)]):
            nics.append(NicSpec(_mac(block, i, k), f"tor-{sw + 1}", port_name(dialect, next_port[sw])))
            next_port[sw] += 1
        host_specs.append(
            HostSpec(
                name=f"host-{i + 1:03d}",
                cloudstack_id=1000 + i + 1,
                bmc=BmcSpec(
                    host=f"host-{i + 1:03d}",
                    address=f"{net}.{1 + i // 250}.{1 + i % 250}",
                    port=bmc_port,
                    username=bmc_user,
                    password=secret(f"bmc-{i}"),
                ),
                nics=tuple(nics),
            )
        )
    switch_specs = []
    for j in range(switches):
        dialect = dialects[j % len(dialects)]
        switch_password = secret(f"switch-{j}")
        n_ports = max(48, next_port[j] - 1)
        switch_specs.append(
            SwitchSpec(
                name=f"tor-{j + 1}",
                dialect=dialect,
                address=f"{net}.200.{1 + j}",
                port=ssh_port,
                username="admin",
                password=switch_password,
                # The rack config (seed format) carries one password per switch; like many
                # sites, the lab uses it for enable too.
                enable_secret=switch_password,
                ports=tuple(port_name(dialect, p) for p in range(1, n_ports + 1)),
            )
        )
    maas = MaasSpec(
        address=f"{net}.250.1",
        port=5240,
        consumer_key=secret("ck", 18),
        token_key=secret("tk", 18),
        token_secret=secret("ts", 32),
        preseed_dir=os.path.join(workdir, "preseeds") if workdir else "",
        pxe_vlan=pxe_vlan,
    )
    return LabSpec(
        block=block,
        maas=maas,
        hosts=tuple(host_specs),
        switches=tuple(switch_specs),
        control_address=f"{net}.250.1",
        control_port=5241,
        timing=timing or Timing(),
        workdir=workdir,
    )
