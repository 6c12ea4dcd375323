"""Payload files built the way CloudStack 4.21 and 4.22 write them (see
/work/shared/reference/cloudstack-extension.md, §3 and §6, and docs/cloudstack.md):

- Gson output: camelCase VirtualMachineTO/NicTO, nulls left out, RAM in bytes, and
  ``= < > & '`` inside strings written as ``\\u003d`` ... ;
- ``externaldetails``: ``extension``, ``resourcemap`` and ``host`` left out when empty,
  ``virtualmachine`` always there (possibly ``{}``) except in 4.21 custom actions, and
  ``cloudstack.vlan`` in it only for create/start;
- NICs only for prepare/create/start; ``[]`` otherwise; a NIC's ``uuid`` is its network's;
- ``caller`` only in 4.22; custom actions add ``action`` and ``parameters``; an agent command
  CloudStack does not route is just ``{"action": "<Java class name>"}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GIB = 1024**3
NETWORK_GUEST = "3f2a61c2-4bb7-4c57-9d3e-0a6f6f1a7b01"
NETWORK_EXTRA = "9e8d7c6b-5a49-4e3d-8c2b-1a0f9e8d7c6b"
CALLER = {
    "id": "c7a1f9d2-0000-4000-8000-00000000a001",
    "name": "admin",
    "type": "ADMIN",
    "roleid": "r-1",
    "rolename": "Root Admin",
    "roletype": "Admin",
}
HOST_API_KEY = "consumer:tokenkey:tokensecret-DO-NOT-ECHO"
VNC_PASSWORD = "vnc-secret-DO-NOT-ECHO"
WITH_NICS = ("prepare", "create", "start")


def gson(doc: Any) -> str:
    """JSON as Gson writes it: HTML-safe escapes inside strings (never structural characters)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("=", "\\u003d"), ("'", "\\u0027")):
        text = text.replace(ch, esc)
    return text


def nic(index: int, vlan: str | None, *, default: bool, network: str, mac: str) -> dict:
    n = {
        "deviceId": index,
        "networkRateMbps": 200,
        "defaultNic": default,
        "pxeDisable": False,
        "nicUuid": f"5b1c9a40-0000-4000-8000-00000000{index:04d}",
        "uuid": network,
        "ip": f"10.1.{index + 1}.23",
        "netmask": "255.255.255.0",
        "gateway": f"10.1.{index + 1}.1",
        "mac": mac,
        "dns1": "10.1.1.1",
        "broadcastType": "Vlan",
        "type": "Guest",
        "isSecurityGroupEnabled": False,
        "networkId": 204 + index,
        "mtu": 1500,
    }
    if vlan is not None:
        n["broadcastUri"] = vlan
    return n


def payload(
    action: str,
    vm_uuid: str,
    *,
    version: str = "4.22",
    internal_name: str = "i-2-100-VM",
    nics: list[dict] | None = None,
    vm_ext: dict | None = None,
    host_ext: dict | None = None,
    extension_ext: dict | None = None,
    resourcemap: dict | None = None,
    details: dict | None = None,
    parameters: dict | None = None,
    cpus: int = 2,
    ram: int = 2 * GIB,
    state: str | None = None,
    caller: bool = True,
    custom: bool = False,
) -> dict:
    """One payload. ``nics`` default to a guest NIC on VLAN 100; they are sent only for
    prepare/create/start. ``vm_ext`` are the VM's External: details (prefix stripped)."""
    if nics is None:
        nics = [nic(0, "vlan://100", default=True, network=NETWORK_GUEST, mac="02:00:5a:00:00:01")]
    vm_ext = dict(vm_ext or {})
    if action in ("create", "start"):
        default = next((n for n in nics if n.get("defaultNic")), None)
        uri = (default or {}).get("broadcastUri", "")
        if isinstance(uri, str) and uri.startswith("vlan://") and uri != "vlan://untagged":
            vm_ext.setdefault("cloudstack.vlan", uri[len("vlan://") :])
    ext: dict[str, Any] = {}
    if extension_ext:
        ext["extension"] = extension_ext
    if resourcemap:
        ext["resourcemap"] = resourcemap
    if host_ext:
        ext["host"] = host_ext
    if not (custom and version == "4.21"):
        ext["virtualmachine"] = vm_ext
    if custom:
        ext["action"] = {}
    vm_details = {"deployvm": "true"} if action in ("prepare", "create") else {}
    vm_details.update({f"External:{k}": v for k, v in vm_ext.items() if k != "cloudstack.vlan"})
    if action == "delete":
        vm_details["expunge.external.vm"] = "true"
    vm_details.update(details or {})
    vm = {
        "id": 100,
        "name": internal_name,
        "uuid": vm_uuid,
        "type": "User",
        "state": state or {"delete": "Expunging", "status": "Running", "stop": "Running"}.get(action, "Starting"),
        "bootloader": "External",
        "cpus": cpus,
        "minSpeed": 1000,
        "maxSpeed": 1000,
        "minRam": ram,
        "maxRam": ram,
        "arch": "x86_64",
        "vncPassword": VNC_PASSWORD,
        "details": vm_details,
        "nics": nics if action in WITH_NICS else [],
        "disks": [],
        "enableDynamicallyScaleVm": False,
    }
    doc: dict[str, Any] = {
        "externaldetails": ext,
        "virtualmachineid": vm_uuid,
        "virtualmachinename": internal_name,
        "cloudstack.vm.details": vm,
    }
    if version == "4.22" and caller:
        doc["caller"] = CALLER
    if custom:
        doc["action"] = action
        if parameters is not None:
            doc["parameters"] = parameters
    return doc


def write(tmp: Path, doc: dict, name: str = "payload") -> Path:
    """Write as CloudStack does: ``<uuid>.json`` with Gson's escaping."""
    path = tmp / f"{name}.json"
    path.write_text(gson(doc))
    return path


def after_prepare(doc: dict, answer: dict) -> dict:
    """What CloudStack sends after merging a prepare answer into the VM: the answer's
    ``External:`` details come back as ``externaldetails.virtualmachine`` and the default
    NIC carries the new MAC (create's payload is built from the saved VM)."""
    merged = json.loads(json.dumps(doc))
    details = answer.get("details", {})
    merged["cloudstack.vm.details"]["details"].update(details)
    vm_ext = merged["externaldetails"].setdefault("virtualmachine", {})
    vm_ext.update({k[len("External:") :]: v for k, v in details.items() if k.startswith("External:")})
    by_nic = {n.get("nicUuid"): n for n in answer.get("nics", [])}
    for n in merged["cloudstack.vm.details"]["nics"]:
        if n.get("nicUuid") in by_nic and "mac" in by_nic[n["nicUuid"]]:
            n["mac"] = by_nic[n["nicUuid"]]["mac"]
    return merged
