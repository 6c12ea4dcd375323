"""A real SQLite inventory with hosts of different sizes, registered and polled."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from metalflow.integrations.config import load_rack_config
from metalflow.integrations.inventory import HostRecord, Inventory
from metalflow.lab.spec import generate

# name -> (cpus, memory MB)
SIZES = {
    "host-001": (32, 131072),
    "host-002": (8, 16384),
    "host-003": (16, 65536),
    "host-004": (16, 32768),
    "host-005": (8, 16384),
}


def make_inventory(url: str, *, registered: bool = True, polled: bool = True) -> Inventory:
    spec = generate(hosts=len(SIZES), switches=2, seed_secrets="cloudstack-claims", privileged=True)
    records = []
    for h in spec.hosts:
        cpus, mem = SIZES[h.name]
        records.append(
            replace(
                HostRecord(
                    name=h.name,
                    cloudstack_id=h.cloudstack_id,
                    ipmi_address=h.bmc.address,
                    ipmi_port=h.bmc.port,
                    ipmi_username=h.bmc.username,
                    ipmi_credential_ref=f"block:ipmi-{h.name}",
                    macs=h.macs,
                    cpu_count=cpus,
                    memory_mb=mem,
                )
            )
        )
    inv = Inventory(url)
    inv.upgrade()
    inv.hosts.import_rack_config(load_rack_config(spec.rack_config()), records)
    polled_at = datetime.now(UTC) - timedelta(seconds=60)
    for i, name in enumerate(SIZES):
        if registered:
            inv.hosts.set_maas_system_id(name, f"sys{i:03d}")
        if polled:
            inv.power.record(name, "off", at=polled_at)
    return inv
