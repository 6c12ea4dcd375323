"""audit: read every cabled port back from the switches, compare with the VLANs the
inventory says each should carry, report drift; with ``repair`` converge it. Scheduled."""
from __future__ import annotations

from itertools import groupby

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from integrations.inventory import SwitchInfo
from tasks import clients
from tasks.common import logger
from tasks.inventory import targets_from
from tasks.switches import PortTarget, plan_port


@task(name="audit-switch", task_run_name="audit-switch {switch.name}", cache_policy=NO_CACHE,
      persist_result=False, retries=2, retry_delay_seconds=[2, 10])
def audit_switch(switch: SwitchInfo, targets: list[PortTarget], repair: bool) -> list[dict]:
    """One session per switch: read each port, and with ``repair`` converge it."""
    drift = []
    driver = clients.switch(switch)
    try:
        with driver.session() as s:
            for t in targets:
                current = s.port_vlans(t.port)
                steps = plan_port(current, t)
                if not steps:
                    continue
                row = {"switch": switch.name, "port": t.port,
                       "want": f"untagged {t.untagged or '-'} tagged {','.join(map(str, t.tagged)) or '-'}",
                       "found": f"untagged {current.untagged or '-'} tagged {','.join(map(str, sorted(current.tagged))) or '-'}",
                       "repaired": False}
                if repair:
                    for op, vlan, tagged in steps:
                        (s.remove_vlan(t.port, vlan) if op == "remove" else s.add_vlan(t.port, vlan, tagged))
                    row["repaired"] = True
                drift.append(row)
    finally:
        driver.close()
    return drift


@flow(name="audit", flow_run_name=lambda: "audit (repair)" if _repair() else "audit", log_prints=True)
def audit(repair: bool = False) -> dict:
    inv = clients.inventory()
    hosts = inv.list_hosts()
    targets: list[PortTarget] = []
    for h in hosts:
        ports = [(cp.switch.name, cp.port) for cp in inv.cabled_ports(h.name)]
        targets += targets_from(ports, inv.desired_vlans(h.name))
    drift: list[dict] = []
    switches = {s.name: s for s in inv.list_switches()}
    for name, group in groupby(sorted(targets, key=lambda t: (t.switch, t.port)), key=lambda t: t.switch):
        drift += audit_switch(switches[name], list(group), repair)
    lines = [f"# audit{' (repair)' if repair else ''}: {len(targets)} ports on {len(switches)} switches", "",
             f"drift on **{len(drift)}** ports" + (", repaired" if repair and drift else ""), ""]
    if drift:
        lines += ["| switch | port | should carry | found | repaired |", "|---|---|---|---|---|"]
        lines += [f"| {d['switch']} | {d['port']} | {d['want']} | {d['found']} | {'yes' if d['repaired'] else 'no'} |" for d in drift]
        logger().warning("VLAN drift on %d ports%s", len(drift), " (repaired)" if repair else "")
    create_markdown_artifact(markdown="\n".join(lines), key="audit", description=f"drift on {len(drift)} ports")
    return {"ports": len(targets), "drift": drift}


def _repair() -> bool:
    from prefect.runtime import flow_run

    return bool((flow_run.parameters or {}).get("repair"))
