"""Import a rack config and host records into the inventory, idempotently.

The rack config is the truth about cabling (which MAC is on which switch port); the host
records are the truth about the hosts they name. A repeated import changes nothing and says
so; a changed field is updated and reported.

Import takes only what MAAS and the switches will accept later: host names are MAAS hostnames
(``values.parse_hostname``), the PXE VLAN is one every dialect in the rack may configure,
CloudStack ids, MACs, ports and credential references are parsed by the one vocabulary
(``integrations.common.values``). Every record is checked before anything is written, and a
failed import (the caller's one transaction) writes nothing. Hosts not in the records are left alone (their
NICs are re-cabled from the rack config like every other NIC). Passwords never enter: each
switch gets a credential reference instead, and the summary says which, so the operator can
put the password there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from metalflow.integrations.common.values import (
    BadValue,
    parse_hostname,
    parse_ident,
    parse_mac,
    parse_tcp_port,
    parse_vlan,
    show,
)
from metalflow.integrations.config import RackConfig, address_key, valid_address
from metalflow.integrations.inventory.models import Host, HostNic, Switch
from metalflow.integrations.inventory.records import (
    HostRecord,
    ImportSummary,
    InventoryError,
    credential_ref,
    problems_error,
)

DEFAULT_SWITCH_CREDENTIAL_REF = "env:METALFLOW_SWITCH_{NAME}_PASSWORD"
CredentialRefSource = str | Callable[[str], str]

#: A MAAS architecture, ``arch/subarch`` (amd64/generic, arm64/xgene-uboot).
_ARCH = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}(?:/[a-z0-9][a-z0-9._-]{0,31})?", re.ASCII)
#: BMC user names as IPMI takes them: printable ASCII, at most 16 bytes (IPMI 2.0's limit is
#: checked again by the IPMI client; 128 here keeps room for other power drivers).
_BMC_USER = re.compile(r"[!-~](?:[ -~]{0,126}[!-~])?", re.ASCII)
_CHUNK = 500  # bound the IN (...) lists (SQLite's host-parameter limit)
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _host_fields(h: HostRecord) -> dict[str, Any]:
    """The host row's columns from a validated record (``macs[0]`` is the boot NIC)."""
    return {
        "cloudstack_id": h.cloudstack_id,
        "ipmi_address": h.ipmi_address,
        "ipmi_port": h.ipmi_port,
        "ipmi_username": h.ipmi_username,
        "ipmi_credential_ref": h.ipmi_credential_ref,
        "boot_mac": h.macs[0],
        "cpu_count": h.cpu_count,
        "memory_mb": h.memory_mb,
        "arch": h.arch,
    }


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_records(records: Sequence[HostRecord]) -> list[HostRecord]:
    """Check every record (collecting every problem) and return them normalised: MACs as
    ``00:18:8b:52:79:80``, the CloudStack id as text. Host names must be MAAS hostnames (the
    name the machine gets in MAAS; ``host_3`` or a 64-character name would pass here and be
    refused by MAAS after ``register-host`` had already changed the switch)."""
    problems: list[tuple[str, str]] = []
    out: list[HostRecord] = []
    seen_names: dict[str, str] = {}
    seen_ids: dict[str, str] = {}
    seen_macs: dict[str, str] = {}

    def parsed(parse: Callable[..., T], value: object, field: str, *more: str) -> T | None:
        """``parse(value, field, *more)``, or None with the problem collected."""
        try:
            return parse(value, field, *more)
        except BadValue as exc:
            problems.append((exc.field, exc.reason))
        except InventoryError as exc:
            problems.append((exc.field, exc.message.split(": ", 1)[-1]))
        return None

    for i, r in enumerate(records):
        p = f"hosts[{i}]"
        if not isinstance(r, HostRecord):
            problems.append((p, f"expected a HostRecord, got {type(r).__name__}"))
            continue
        before = len(problems)
        name = parsed(parse_hostname, r.name, f"{p}.name")
        if name is not None and name in seen_names:
            problems.append((f"{p}.name", f"{name!r} is already used by {seen_names[name]}"))
        elif name is not None:
            seen_names[name] = p
        cs_id = r.cloudstack_id
        if isinstance(cs_id, int) and not isinstance(cs_id, bool) and cs_id >= 0:
            cs_id = str(cs_id)  # CloudStack's numeric host ids; the inventory stores text
        if cs_id is not None:
            cs_id = parsed(parse_ident, cs_id, f"{p}.cloudstack_id", "a CloudStack host id (a number or UUID)")
            if cs_id is not None and cs_id in seen_ids:
                problems.append((f"{p}.cloudstack_id", f"{cs_id} is already used by {seen_ids[cs_id]}"))
            elif cs_id is not None:
                seen_ids[cs_id] = p
        if not valid_address(r.ipmi_address):
            problems.append(
                (
                    f"{p}.ipmi_address",
                    f"{show(r.ipmi_address)} is not an IP address or host name: write the bare BMC address "
                    "(no spaces, port or scheme; the port goes in ipmi_port)",
                )
            )
        parsed(parse_tcp_port, r.ipmi_port, f"{p}.ipmi_port")
        if not isinstance(r.ipmi_username, str) or not _BMC_USER.fullmatch(r.ipmi_username):
            problems.append(
                (f"{p}.ipmi_username", "expected the BMC user name: 1-128 printable ASCII characters, no outer spaces")
            )
        parsed(credential_ref, r.ipmi_credential_ref, f"{p}.ipmi_credential_ref")
        macs: list[str] = []
        if not isinstance(r.macs, (tuple, list)) or not r.macs:
            problems.append((f"{p}.macs", "expected at least one MAC address; the first is the boot NIC"))
        else:
            for k, m in enumerate(r.macs):
                mac = parsed(parse_mac, m, f"{p}.macs[{k}]")
                if mac is None:
                    continue
                if mac in seen_macs:
                    problems.append((f"{p}.macs[{k}]", f"{mac} is already listed at {seen_macs[mac]}"))
                    continue
                seen_macs[mac] = f"{p}.macs[{k}]"
                macs.append(mac)
        if not _positive_int(r.cpu_count):
            problems.append((f"{p}.cpu_count", f"{show(r.cpu_count)} is not a positive number of CPUs"))
        if not _positive_int(r.memory_mb):
            problems.append((f"{p}.memory_mb", f"{show(r.memory_mb)} is not a positive amount of memory in MiB"))
        if not isinstance(r.arch, str) or not _ARCH.fullmatch(r.arch):
            problems.append((f"{p}.arch", f"{show(r.arch)} is not a MAAS architecture (e.g. amd64/generic)"))
        if len(problems) == before:
            out.append(replace(r, cloudstack_id=cs_id, macs=tuple(macs)))
    if problems:
        raise problems_error("host records", problems)
    return out


def check_pxe_vlan(pxe_vlan: object, rack: RackConfig) -> int:
    """``pxe_vlan`` if it is a VLAN id (an int: ``True`` is not VLAN 1) that every switch of
    the rack may carry: each rack's dialect checks it, so a VLAN one switch OS refuses is
    refused here, before it is stored and every later provision fails on it."""
    if isinstance(pxe_vlan, bool) or not isinstance(pxe_vlan, int):
        raise InventoryError(
            f"expected a VLAN id as a number (2-4094), got {type(pxe_vlan).__name__}", field="pxe_vlan"
        )
    try:
        parse_vlan(pxe_vlan, "pxe_vlan")
    except BadValue as exc:
        raise InventoryError(exc.reason, field=exc.field) from exc
    from metalflow.integrations.switches import InvalidVlan, dialect_for  # lazy: pulls in netmiko

    for i, r in enumerate(rack.racks):
        try:
            dialect_for(r.switch.type).validate_vlan(pxe_vlan)
        except InvalidVlan as exc:
            raise InventoryError(
                f"the {r.switch.type} switch {r.switch.ip} refuses it: {exc.message}; choose a PXE VLAN every "
                "switch in the rack accepts",
                field="pxe_vlan",
                target=f"racks[{i}]",
            ) from exc
    return pxe_vlan


def switch_credential_ref(source: CredentialRefSource, name: str) -> str:
    """The reference for switch ``name``: a template with ``{name}`` / ``{NAME}``
    (``NAME`` is upper-case with ``-`` as ``_``: tor-1 -> TOR_1) or a callable."""
    if callable(source):
        ref = source(name)
    else:
        ref = source.format(name=name, NAME=re.sub(r"[^A-Za-z0-9]", "_", name).upper())
    return credential_ref(ref, "switch_credential_ref")


def _update(row: Any, values: Mapping[str, Any], label: str, details: list[str]) -> bool:
    changed = False
    for key, new in values.items():
        old = getattr(row, key)
        if old != new:
            setattr(row, key, new)
            details.append(f"{label}: {key} {old!r} -> {new!r}")
            changed = True
    return changed


def import_rack(
    s: Session,
    rack: RackConfig,
    records: Sequence[HostRecord],
    *,
    credential_ref: CredentialRefSource = DEFAULT_SWITCH_CREDENTIAL_REF,
    switch_names: Mapping[str, str] | None = None,
    pxe_vlan: int | None = None,
) -> ImportSummary:
    """Do the import inside the caller's (write) transaction; see the module docstring."""
    if not isinstance(rack, RackConfig):
        raise InventoryError("expected a RackConfig from integrations.config.load_rack_config", field="rack")
    if pxe_vlan is not None:
        check_pxe_vlan(pxe_vlan, rack)
    hosts = validate_records(records)
    switch_names = dict(switch_names or {})
    for ip, name in switch_names.items():
        try:
            parse_ident(name, f"switch_names[{show(ip)}]", "a switch name (e.g. tor-1)")
        except BadValue as exc:
            raise InventoryError(exc.reason, field=exc.field) from exc
    details: list[str] = []
    warnings: list[str] = []
    try:
        switches, sw_added, sw_updated, refs = _import_switches(
            s, rack, credential_ref, switch_names, pxe_vlan, details, warnings
        )
        rows, h_added, h_updated = _import_hosts(s, hosts, details)
        n_added, n_updated, n_removed = _import_nics(s, rack, hosts, rows, switches, details)
    except IntegrityError as exc:
        raise InventoryError(
            f"the import conflicts with rows already in the inventory ({str(exc.orig)[:200]})", field="hosts"
        ) from None

    known = set(s.scalars(select(HostNic.mac)))
    unclaimed = tuple(m for m in rack.macs() if m not in known)
    by_mac = {c.mac for r in rack.racks for c in r.hosts}
    for h in hosts:
        if h.macs[0] not in by_mac:
            warnings.append(f"{h.name}: boot NIC {h.macs[0]} is not in the rack config; its VLANs cannot be set")
    return ImportSummary(
        switches_added=sw_added,
        switches_updated=sw_updated,
        hosts_added=h_added,
        hosts_updated=h_updated,
        nics_added=n_added,
        nics_updated=n_updated,
        nics_removed=n_removed,
        details=tuple(details),
        unclaimed_macs=unclaimed,
        switch_credential_refs=tuple(refs),
        warnings=tuple(warnings),
    )


def _import_switches(
    s: Session,
    rack: RackConfig,
    credential_ref: CredentialRefSource,
    switch_names: Mapping[str, str],
    pxe_vlan: int | None,
    details: list[str],
    warnings: list[str],
) -> tuple[dict[str, Switch], int, int, list[tuple[str, str]]]:
    existing = {address_key(sw.address): sw for sw in s.scalars(select(Switch).with_for_update())}
    by_name = {sw.name: sw for sw in existing.values()}
    result: dict[str, Switch] = {}
    added = updated = 0
    refs: list[tuple[str, str]] = []
    for i, r in enumerate(rack.racks):
        sc = r.switch
        key = address_key(sc.ip)
        row = existing.get(key)
        wanted = switch_names.get(sc.ip)
        if row is None:
            name = wanted or _free_name(i, by_name)
        else:
            name = wanted or row.name
        holder = by_name.get(name)
        if holder is not None and holder is not row:
            raise InventoryError(
                f"{name!r} is already the name of switch {holder.address}; choose another in switch_names",
                field=f"racks[{i}].l2Switch",
            )
        ref = switch_credential_ref(credential_ref, name)
        values: dict[str, Any] = {
            "name": name,
            "address": sc.ip,
            "port": sc.port,
            "type": sc.type,
            "username": sc.username,
            "credential_ref": ref,
        }
        if pxe_vlan is not None or row is None:
            values["pxe_vlan"] = pxe_vlan
        if row is None:
            row = Switch(**values)
            s.add(row)
            details.append(f"switch {name}: added ({sc.ip}:{sc.port}, {sc.type})")
            added += 1
        else:
            if row.name != name:
                by_name.pop(row.name, None)
            if _update(row, values, f"switch {name}", details):
                updated += 1
        by_name[name] = row
        result[key] = row
        refs.append((name, ref))
    for key, known in existing.items():
        if key not in result:
            warnings.append(f"switch {known.name} ({known.address}) is not in the rack config; its NICs are uncabled")
    s.flush()
    return result, added, updated, refs


def _free_name(index: int, taken: Mapping[str, Any]) -> str:
    name = f"tor-{index + 1}"
    n = index + 1
    while name in taken:
        n += 1
        name = f"tor-{n}"
    return name


def _import_hosts(s: Session, hosts: list[HostRecord], details: list[str]) -> tuple[dict[str, Host], int, int]:
    rows: dict[str, Host] = {}
    names = [h.name for h in hosts]
    for part in chunks(names):
        for found in s.scalars(
            select(Host).where(Host.name.in_(part)).options(selectinload(Host.nics)).with_for_update()
        ):
            rows[found.name] = found
    ids = [str(h.cloudstack_id) for h in hosts if h.cloudstack_id is not None]  # text once validated
    for part in chunks(ids):
        for other in s.execute(select(Host.name, Host.cloudstack_id).where(Host.cloudstack_id.in_(part))):
            if other.name not in rows:
                i = next(k for k, h in enumerate(hosts) if h.cloudstack_id == other.cloudstack_id)
                raise InventoryError(
                    f"{other.cloudstack_id} already belongs to host {other.name}", field=f"hosts[{i}].cloudstack_id"
                )
    added = updated = 0
    for h in hosts:
        row = rows.get(h.name)
        if row is None:
            row = Host(name=h.name, nics=[], **_host_fields(h))  # an empty collection: no lazy load later
            s.add(row)
            rows[h.name] = row
            details.append(f"host {h.name}: added")
            added += 1
        elif _update(row, _host_fields(h), f"host {h.name}", details):
            updated += 1
    s.flush()
    return rows, added, updated


def _import_nics(
    s: Session,
    rack: RackConfig,
    hosts: list[HostRecord],
    rows: dict[str, Host],
    switches: Mapping[str, Switch],
    details: list[str],
) -> tuple[int, int, int]:
    all_macs = [m for h in hosts for m in h.macs]
    existing: dict[str, HostNic] = {}
    for part in chunks(all_macs):
        for known in s.scalars(select(HostNic).where(HostNic.mac.in_(part)).options(selectinload(HostNic.host))):
            existing[known.mac] = known
    # The rack config is the truth about cabling, for every NIC in the inventory.
    target: dict[str, tuple[Switch | None, str | None]] = {}
    for r in rack.racks:
        tor = switches[address_key(r.switch.ip)]
        for c in r.hosts:
            target[c.mac] = (tor, c.port)
    occupied = {
        tuple(r) for r in s.execute(select(HostNic.switch_id, HostNic.port).where(HostNic.switch_id.is_not(None)))
    }
    added = removed = 0
    touched: set[str] = set()
    for h in hosts:
        row = rows[h.name]
        wanted = set(h.macs)
        for old in list(row.nics):
            # A NIC another record claims is moved below (or was already), not removed.
            if old.mac not in wanted and old.mac not in existing:
                row.nics.remove(old)
                details.append(f"host {h.name}: NIC {old.mac} removed")
                removed += 1
        for k, mac in enumerate(h.macs):
            nic = existing.get(mac)
            if nic is None:
                # Cabled at once when its port is free; otherwise the re-cabling below does it.
                sw, port = target.get(mac, (None, None))
                if sw is not None and (sw.id, port) in occupied:
                    sw, port = None, None
                occupied.add((sw.id if sw is not None else None, port))
                row.nics.append(HostNic(mac=mac, is_boot=k == 0, switch=sw, port=port))
                details.append(f"host {h.name}: NIC {mac} added" + (f" ({sw.name} {port})" if sw is not None else ""))
                added += 1
                continue
            if nic.host is not row:
                details.append(f"NIC {mac}: moved from host {nic.host.name} to {h.name}")
                nic.host = row
                touched.add(mac)
            if nic.is_boot != (k == 0):
                nic.is_boot = k == 0
                details.append(f"host {h.name}: NIC {mac} is_boot -> {k == 0}")
                touched.add(mac)
    s.flush()

    # Re-cabling: changed NICs are uncabled first and re-cabled after, so two NICs can swap
    # ports without a unique clash.
    changes = []
    for nic in s.scalars(select(HostNic).options(selectinload(HostNic.switch))):
        sw, port = target.get(nic.mac, (None, None))
        if nic.switch_id != (sw.id if sw is not None else None) or nic.port != port:
            changes.append((nic, sw, port))
    if changes:
        for nic, _, _ in changes:
            nic.switch, nic.port = None, None
        s.flush()
        for nic, sw, port in changes:
            nic.switch, nic.port = sw, port
            details.append(
                f"NIC {nic.mac}: cabled to {sw.name} {port}"
                if sw is not None
                else f"NIC {nic.mac}: uncabled (not in the rack config)"
            )
            touched.add(nic.mac)
        s.flush()
    new_macs = {m for h in hosts for m in h.macs if m not in existing}
    return added, len(touched - new_macs), removed
