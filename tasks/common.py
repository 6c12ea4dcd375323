"""What every metalflow task shares: retry only what is transient, journal each step.

A client decides what is transient (its exceptions carry ``transient``); the task retries only
that, with backoff and jitter. Bad input and wrong state fail at once: retrying them would only
hide the reason. Clients hold their own deadlines; ``timeout_seconds`` here is a backstop.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metalflow.integrations.common import Backoff, Deadline, DeadlineExceeded, retry

P = ParamSpec("P")
R = TypeVar("R")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DeadlineExceeded):
        return False  # the client already spent its whole budget: a retry won't do better
    flag = getattr(exc, "transient", None)
    if flag is not None:
        return bool(flag)
    return isinstance(exc, (ConnectionError, TimeoutError))


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task only for transient errors."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - that is the point
        return is_transient(exc)
    return False


def runbook_task(
    *,
    system: str,
    retries: int = 3,
    backoff: float = 2.0,
    timeout: float | None = None,
    name: str | None = None,
    run_name: str | None = None,
    journal: bool = True,
    **kwargs: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """``@task`` with metalflow's defaults: transient-only retries with exponential backoff and
    jitter, a run name that includes the host, no result caching (a rerun must re-read the
    world, never replay a cached answer), and a journal line per attempt in the host's event
    journal when the task's first parameter is ``host`` (a ``HostInfo``).

    The task's function carries its ``system`` (``system_of``): a flow's ``Runbook`` reports
    each step under it, and may call the function directly (inline) with the same retries."""

    def deco(fn: Callable[P, R]) -> Task[P, R]:
        step = name or fn.__name__.replace("_", "-")
        body = _journaled(fn, step, system) if journal else fn
        setattr(body, _SYSTEM, system)
        options: dict[str, Any] = {
            "name": step,
            "task_run_name": run_name or (step + " {host.name}"),
            "retries": retries,
            "retry_delay_seconds": exponential_backoff(backoff)(retries) if retries else 0,
            "retry_jitter_factor": 0.5,
            "retry_condition_fn": transient_only,
            "timeout_seconds": timeout,
            "cache_policy": NO_CACHE,
            "persist_result": False,
            **kwargs,
        }
        return task(**options)(body)

    return deco


#: The attribute of a runbook task's function that names its system (survives ``with_options``).
_SYSTEM = "__metalflow_system__"


def system_of(step: Task[..., Any]) -> str:
    """The system a runbook task acts on (``maas``, ``switch``, ``ipmi``, ``inventory``)."""
    return str(getattr(step.fn, _SYSTEM, "") or step.name)


def run_inline(step: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Call a task's function directly, not as a Prefect task run, with the task's own
    transient-only retries and backoff (``integrations.common.retry``) and the clients' own
    deadlines (the task's ``timeout_seconds`` backstop does not apply). The journal line is
    the function's, so it is written as always."""
    log = logger()
    retries = step.retries or 0
    delays = step.retry_delay_seconds
    if isinstance(delays, (list, tuple)):
        first, cap = (float(delays[0]), float(delays[-1])) if delays else (0.0, 0.0)
    else:
        first = float(delays or 0)
        cap = first * 2 ** max(0, retries - 1)

    def again(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning(
            "%s: attempt %d failed (%s: %s); again in %.1f s", step.name, attempt, type(exc).__name__, exc, delay
        )

    return retry(
        lambda: step.fn(*args, **kwargs),
        transient=lambda exc: 0.0 if is_transient(exc) else None,
        deadline=Deadline(3600.0),
        backoff=Backoff(first=first, factor=2.0, cap=cap, attempts=retries + 1),
        on_retry=again,
    )


def _journaled(fn: Callable[P, R], step: str, system: str) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(host: Any, *args: Any, **kwargs: Any) -> R:
        write_journal(host, step, system, "started")
        try:
            result = fn(host, *args, **kwargs)
        except Exception as exc:
            write_journal(host, step, system, "failed", str(exc)[:500])
            raise
        write_journal(host, step, system, "ok", _summary(result))
        return result

    return wrapper  # type: ignore[return-value]


def _summary(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, (list, tuple)):
        return "; ".join(map(str, result))[:500]
    return str(result)[:500]


def write_journal(host: Any, step: str, system: str, outcome: str, detail: str = "") -> None:
    """Best effort: a journal that cannot be written must not fail the step it describes."""
    from prefect.runtime import flow_run

    from metalflow.tasks.clients import journal

    name = getattr(host, "name", host)
    try:
        journal().journal(
            name,
            operation=str(flow_run.flow_name or "manual"),
            run_id=str(flow_run.id) if flow_run.id else None,
            step=step,
            system=system,
            outcome=outcome,
            detail=detail,
        )
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("metalflow").warning("journal write for %s failed: %s", name, exc)


def logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run (unit tests calling .fn)
        return logging.getLogger("metalflow")


def current_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "")
