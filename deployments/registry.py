"""Every metalflow deployment, named ``<flow>/metalflow``, with its schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import serve
from prefect.schedules import Interval

from metalflow.flows.audit import audit
from metalflow.flows.bulk import bulk_provision
from metalflow.flows.destroy import destroy
from metalflow.flows.nics import plug_nic, unplug_nic
from metalflow.flows.poll import power_poll
from metalflow.flows.power import reboot, start, status, stop
from metalflow.flows.provision import provision
from metalflow.flows.recover import recover
from metalflow.flows.register import register_host
from metalflow.tasks.settings import Settings, settings

DEPLOYMENT = "metalflow"

#: Triggered flows (by CloudStack, the CLI or an operator).
ON_DEMAND = (register_host, provision, stop, start, reboot, status, destroy, plug_nic, unplug_nic, bulk_provision)


def flows_by_name() -> dict[str, Any]:
    """Every flow a deployment serves (triggered and scheduled), by its name."""
    return {f.name: f for f in (*ON_DEMAND, power_poll, audit, recover)}


def served(cfg: Settings | None = None, *, schedules: bool = True) -> list[tuple]:
    """(flow, deployment) for every deployment this process serves."""
    cfg = cfg or settings()
    out: list[tuple[Any, Any]] = [(f, f.to_deployment(name=DEPLOYMENT, tags=["metalflow"])) for f in ON_DEMAND]
    # Each scheduled power-poll run polls for the whole interval (its window), so one
    # long-running poller is always at work; the window rides on the schedule, not on the
    # deployment, so a run triggered by hand is still one quick sweep.
    out.append(
        (
            power_poll,
            power_poll.to_deployment(
                name=DEPLOYMENT,
                tags=["metalflow"],
                schedules=[
                    Interval(timedelta(seconds=cfg.power_poll_interval), parameters={"window": cfg.power_poll_interval})
                ]
                if schedules
                else None,
            ),
        )
    )
    out.append(
        (
            audit,
            audit.to_deployment(
                name=DEPLOYMENT,
                tags=["metalflow"],
                parameters={"repair": False},
                interval=timedelta(seconds=cfg.audit_interval) if schedules else None,
            ),
        )
    )
    out.append(
        (
            recover,
            recover.to_deployment(
                name=DEPLOYMENT,
                tags=["metalflow"],
                interval=timedelta(seconds=cfg.recover_interval) if schedules else None,
            ),
        )
    )
    return out


def deployments(cfg: Settings | None = None, *, schedules: bool = True) -> list:
    return [d for _, d in served(cfg, schedules=schedules)]


def serve_all(*, schedules: bool = True, limit: int | None = None, isolated: bool = False) -> None:
    """Serve every deployment from this process (the embedded default), schedules included:
    every run in a thread of this process (``deployments.pool``), or with ``isolated`` in a
    subprocess of its own (Prefect's ``serve``: more isolation, about 20 times the memory and
    a second or two more before each run starts). The process's runtime is built now and closed
    when serving ends (``deployments.runtime``)."""
    from metalflow.deployments.runtime import process_runtime

    with process_runtime("metalflow serve"):
        if isolated:
            serve(*deployments(schedules=schedules), limit=limit, print_starting_message=False)
            return
        from metalflow.deployments import tlscache
        from metalflow.deployments.pool import PooledRunner

        tlscache.install()  # every run's Prefect clients in this one process share their TLS contexts
        PooledRunner(served(schedules=schedules), limit=limit).run()
