"""Point metalflow at a running lab: secrets into Prefect Secret blocks, settings into
``$METALFLOW_HOME/config.json``, the lab's rack config and hosts into the inventory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from metalflow.integrations.config import load_rack_config
from metalflow.integrations.inventory import HostRecord, ImportSummary, Inventory
from metalflow.tasks.settings import metalflow_home

CREDENTIALS_BLOCK = "lab-credentials"
MAAS_BLOCK = "metalflow-maas"


def lab_settings(manifest: dict, inventory_url: str) -> dict:
    t = manifest.get("timing", {})
    phase = max(
        60.0, 4 * max(t.get("deploy", 2), t.get("commission", 1), t.get("erase", 1), 1) + t.get("node_timeout", 15)
    )
    return {
        "inventory_url": inventory_url,
        "maas_settings_ref": f"block:{MAAS_BLOCK}",
        "preseed_target": manifest["maas"]["preseed_dir"],
        "pxe_vlan": manifest["maas"]["pxe_vlan"],
        "commission_timeout": phase,
        "deploy_timeout": phase,
        "erase_timeout": phase,
        "stop_soft_timeout": 10.0,
    }


def save_secret(name: str, value: str) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)  # type: ignore[arg-type]  # pydantic coerces str


def setup_lab(manifest_path: Path, *, inventory_url: str | None = None, home: Path | None = None) -> ImportSummary:
    manifest = json.loads(Path(manifest_path).read_text())
    home = home or metalflow_home()
    home.mkdir(parents=True, exist_ok=True)
    inventory_url = inventory_url or os.environ.get("METALFLOW_INVENTORY_URL") or f"sqlite:///{home / 'inventory.db'}"
    creds = {h["name"]: h["ipmi"]["password"] for h in manifest["hosts"]}
    creds.update({s["name"]: s["password"] for s in manifest["switches"]})
    save_secret(CREDENTIALS_BLOCK, json.dumps(creds))
    save_secret(MAAS_BLOCK, manifest["maas"]["settings"])
    config = home / "config.json"
    existing = json.loads(config.read_text()) if config.exists() else {}
    existing.update(lab_settings(manifest, inventory_url))
    config.write_text(json.dumps(existing, indent=2))
    os.chmod(config, 0o600)
    rack = load_rack_config(manifest["rack_config"])
    records = [
        HostRecord(
            name=h["name"],
            cloudstack_id=str(h["cloudstack_id"]),
            ipmi_address=h["ipmi"]["address"],
            ipmi_port=h["ipmi"]["port"],
            ipmi_username=h["ipmi"]["username"],
            ipmi_credential_ref=f"block:{CREDENTIALS_BLOCK}#{h['name']}",
            macs=tuple(h["macs"]),
            cpu_count=h["cpu_count"],
            memory_mb=h["memory_mb"],
            arch=h["arch"],
        )
        for h in manifest["hosts"]
    ]
    names = {s["address"]: s["name"] for s in manifest["switches"]}
    inv = Inventory(inventory_url)
    inv.upgrade()
    return inv.hosts.import_rack_config(
        rack,
        records,
        switch_names=names,
        pxe_vlan=manifest["maas"]["pxe_vlan"],
        switch_credential_ref=lambda name: f"block:{CREDENTIALS_BLOCK}#{name}",
    )
