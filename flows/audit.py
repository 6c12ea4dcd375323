"""audit: read every cabled port back from the switches, compare with the VLANs the
inventory says each should carry, report drift; with ``repair`` converge it. Scheduled.

It lists what metalflow made and no longer needs (``tasks.litter``: preseed files, MAAS tags, VLAN definitions),
and removes it with ``repair`` (issue 18). It also releases the placement leases that ran out
(issue 17): a machine the CloudStack extension's ``prepare`` set aside for a VM that CloudStack
then expunged without ever calling the extension again (a VM whose first start failed gets no
``delete``).

Reading is one session per switch and takes no lock. A repair is a change like any other: it
takes the host's lock (a host busy with another operation is skipped, not fought over: that
operation is moving its ports on purpose) and converges through the same step provision and
destroy use, so it is journaled and verified the same way."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import ExitStack
from itertools import groupby
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from metalflow.flows.runbook import host_lock, md_cell, publish_markdown
from metalflow.integrations.cloudstack.runs import TAG as CLOUDSTACK_TAG
from metalflow.integrations.inventory import ClaimInfo, SwitchInfo, VlanInfo
from metalflow.integrations.switches.batch import PortTarget, plan_port
from metalflow.tasks import clients, switches
from metalflow.tasks import inventory as inv_t
from metalflow.tasks.common import logger, write_journal
from metalflow.tasks.inventory import PortState, targets_from
from metalflow.tasks.litter import Litter, find_litter, remove_litter, switch_vlan_litter

#: How long a repair waits for a host's lock before it skips the host (seconds, after the
#: first second's try).
REPAIR_LOCK_WAIT = 2.0


def _vlans(untagged: int | None, tagged: Iterable[int]) -> str:
    return f"untagged {untagged or '-'} tagged {','.join(map(str, sorted(tagged))) or '-'}"


@task(
    name="audit-switch",
    task_run_name="audit-switch {switch.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=[2, 10],
)
def audit_switch(switch: SwitchInfo, targets: list[PortTarget], owners: dict[str, str | None]) -> list[dict[str, Any]]:
    """One session per switch: read each port, return the ones that differ from the target."""
    drift = []
    found = switches.read_ports(switch, [t.port for t in targets])
    for t in targets:
        current = found[t.port]
        if plan_port(current, t):
            drift.append(
                {
                    "switch": switch.name,
                    "port": t.port,
                    "host": owners.get(t.port),
                    "want": _vlans(t.untagged, t.tagged),
                    "found": _vlans(current.untagged, current.tagged),
                    "repaired": "no",
                }
            )
    return drift


def desired_targets(rows: list[VlanInfo]) -> tuple[list[PortTarget], dict[str, str | None]]:
    """One switch's desired VLAN rows as port targets, and which host owns each port."""
    ports = sorted({(v.switch, v.port) for v in rows})
    owners: dict[str, str | None] = {}
    for v in rows:
        owners[v.port] = owners.get(v.port) or v.host
    return targets_from(ports, rows), owners


def repair_host(host: str) -> str:
    """Converge every cabled port of ``host`` to the inventory, under the host's lock."""
    with ExitStack() as held:
        try:
            held.enter_context(host_lock(host, "audit", wait=REPAIR_LOCK_WAIT))
        except TimeoutError:
            logger().warning("%s is busy with another operation: not repaired now", host)
            return "no: another operation holds the host"
        h = inv_t.load_host(host)
        sent = switches.converge_ports(h, inv_t.want_ports(h, PortState.KEEP))
        return "yes" if sent else "yes (already right on a second read)"


#: A create's run that has not ended keeps its VM's claim (``ClaimRepository.reap``).
_LIVE = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


@task(name="reap-leases", cache_policy=NO_CACHE)
def reap_leases() -> list[str]:
    """Release every expired lease whose create's run is not alive; one line per release."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    live = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(t) for t in _LIVE]))
    with get_client(sync_client=True) as client:

        def is_live(claim: ClaimInfo) -> bool:
            tags = FlowRunFilterTags(all_=[CLOUDSTACK_TAG, f"vm:{claim.vm_uuid}", "op:create"])
            return bool(client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=tags, state=live), limit=1))

        released = clients.inventory().claims.reap(is_live, run_id=str(flow_run.id) if flow_run.id else None)
    lines = [f"{c.host}: the {c.state} claim of VM {c.vm_uuid} ({c.vm_name or 'no name'}) expired" for c in released]
    for line in lines:
        logger().info("lease released: %s", line)
    return lines


class AuditIncomplete(Exception):
    """Some switch could not be read or some repair failed; the artifact lists which."""


def _run_name() -> str:
    return "audit (repair)" if (flow_run.parameters or {}).get("repair") else "audit"


@flow(name="audit", flow_run_name=_run_name, log_prints=True)
def audit(repair: bool = False) -> dict[str, Any]:
    inv = clients.inventory()
    switches_ = inv.ports.list_switches()
    drift: list[dict[str, Any]] = []
    problems: list[str] = []
    ports = 0
    try:
        leases = reap_leases()
    except Exception as exc:  # noqa: BLE001 - the port audit goes on; the next audit tries again
        leases = []
        problems.append(f"leases not checked: {exc}")
    litter: list[Litter] = []
    cleaned: list[str] = []
    try:
        litter = find_litter()
        if repair and litter:
            cleaned = remove_litter(litter)
    except Exception as exc:  # noqa: BLE001 - the port audit goes on; the next audit tries again
        problems.append(f"litter not {'removed' if litter else 'checked'}: {exc}")
    for sw in switches_:
        try:
            found, deleted = switch_vlan_litter(sw, repair)
            litter += found
            cleaned += deleted
        except Exception as exc:  # noqa: BLE001 - one unreadable switch must not hide the others
            problems.append(f"{sw.name}: VLAN definitions not checked: {exc}")
        targets, owners = desired_targets(inv.ports.switch_vlans(sw.name))
        ports += len(targets)
        if not targets:
            continue
        try:
            drift += audit_switch(sw, targets, owners)
        except Exception as exc:  # noqa: BLE001 - one unreadable switch must not hide the others
            problems.append(f"{sw.name}: not read: {exc}")
    for d in drift:
        if d["host"]:
            write_journal(
                d["host"],
                "vlan-drift",
                "switch",
                "ok",
                f"{d['switch']} {d['port']}: should carry {d['want']}, found {d['found']}",
            )
    if repair:
        for host, rows in groupby(
            sorted((d for d in drift if d["host"]), key=lambda d: d["host"]), key=lambda d: d["host"]
        ):
            try:
                outcome = repair_host(host)
            except Exception as exc:  # noqa: BLE001 - keep repairing the other hosts
                outcome = f"FAILED: {exc}"
                problems.append(f"{host}: repair failed: {exc}")
            for d in rows:
                d["repaired"] = outcome
        for d in drift:
            if not d["host"]:
                d["repaired"] = "no: the port belongs to no host in the inventory"
    repaired = sum(1 for d in drift if d["repaired"].startswith("yes"))
    lines = [
        f"# audit{' (repair)' if repair else ''}: {ports} ports on {len(switches_)} switches",
        "",
        f"drift on **{len(drift)}** ports" + (f", **{repaired}** repaired" if repair else ""),
        "",
    ]
    if drift:
        lines += ["| switch | port | host | should carry | found | repaired |", "|---|---|---|---|---|---|"]
        lines += [
            "| "
            + " | ".join(md_cell(d[k] or "-", 300) for k in ("switch", "port", "host", "want", "found", "repaired"))
            + " |"
            for d in drift
        ]
        logger().warning("VLAN drift on %d ports%s", len(drift), f" ({repaired} repaired)" if repair else "")
    if leases:
        lines += ["", f"## {len(leases)} expired leases released", ""] + [f"- {md_cell(x, 300)}" for x in leases]
    if litter:
        lines += ["", f"## {len(litter)} things metalflow made and no longer needs", ""]
        lines += [f"- {x.kind} `{md_cell(x.name, 200)}`: {md_cell(x.why, 200)}" for x in litter]
        lines += ["", f"{len(cleaned)} removed" if repair else "run `audit` with repair=true to remove them"]
        logger().warning("%d things metalflow made and no longer needs%s", len(litter), " (removed)" if cleaned else "")
    if problems:
        lines += ["", "## incomplete", ""] + [f"- {p}" for p in problems]
    publish_markdown("audit", "\n".join(lines), f"drift on {len(drift)} ports")
    if problems:
        raise AuditIncomplete("; ".join(problems))
    return {
        "ports": ports,
        "drift": drift,
        "repaired": repaired,
        "leases_released": leases,
        "litter": [f"{x.kind} {x.name}" for x in litter],
        "litter_removed": cleaned,
    }
