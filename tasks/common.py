"""What every metalflow task shares: retry only what is transient, journal each step.

A client decides what is transient (its exceptions carry ``transient``); the task retries only
that, with backoff and jitter. Bad input and wrong state fail at once: retrying them would only
hide the reason. Clients hold their own deadlines; ``timeout_seconds`` here is a backstop.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metalflow.integrations.common import Backoff, Deadline, DeadlineExceeded, retry

F = TypeVar("F", bound=Callable[..., Any])


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
) -> Callable[[F], F]:
    """``@task`` with metalflow's defaults: transient-only retries with exponential backoff and
    jitter, a run name that includes the host, no result caching (a rerun must re-read the
    world, never replay a cached answer), and a journal line per attempt in the host's event
    journal when the task's first parameter is ``host`` (a ``HostInfo``)."""

    def deco(fn: F) -> F:
        step = name or fn.__name__.replace("_", "-")
        body = _journaled(fn, step, system) if journal else fn
        return Step(
            task(  # type: ignore[return-value]
                body,
                name=step,
                task_run_name=run_name or (step + " {host.name}"),
                retries=retries,
                retry_delay_seconds=exponential_backoff(backoff)(retries) if retries else 0,
                retry_jitter_factor=0.5,
                retry_condition_fn=transient_only,
                timeout_seconds=timeout,
                cache_policy=NO_CACHE,
                persist_result=False,
                **kwargs,
            ),
            retries,
            backoff,
        )

    return deco


# --- inline steps: the same runbook without a Prefect task run per step ------------------------

_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("metalflow_inline_steps", default=False)


@contextlib.contextmanager
def inline_steps() -> Iterator[None]:
    """Within this block (this thread's context), runbook steps run as plain calls inside the
    flow run instead of as Prefect task runs: the same function, journal line and report row,
    the same transient-only retries with backoff (``integrations.common.retry``), and the
    clients' own deadlines (the task's ``timeout_seconds`` backstop does not apply).

    Why: each task run costs the Prefect server about three state events and the serving
    process its engine; under fifty provisions at once on two cores that is most of the CPU
    (bench/provision_concurrency). ``bulk-provision`` runs its hosts this way; each host
    still has its own run page, report, logs and journal, only the per-step task rows go."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


class Step:
    """A runbook step: calls its Prefect task, or inside ``inline_steps()`` its function
    directly. Everything else (``.fn``, ``.name``, ``.submit``) is the task's."""

    def __init__(self, task_: Any, retries: int, backoff: float):
        self.task, self.retries, self.backoff = task_, retries, backoff
        functools.update_wrapper(self, task_.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not _INLINE.get():
            return self.task(*args, **kwargs)
        log = logger()

        def again(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning(
                "%s: attempt %d failed (%s: %s); again in %.1f s",
                self.task.name,
                attempt,
                type(exc).__name__,
                exc,
                delay,
            )

        return retry(
            lambda: self.task.fn(*args, **kwargs),
            transient=lambda exc: 0.0 if is_transient(exc) else None,
            deadline=Deadline(3600.0),
            backoff=Backoff(
                first=self.backoff,
                factor=2.0,
                cap=self.backoff * 2 ** max(0, self.retries - 1),
                attempts=self.retries + 1,
            ),
            on_retry=again,
        )

    def with_options(self, **options: Any) -> Step:
        retries = options.get("retries", self.retries)
        delay = options.get("retry_delay_seconds")
        return Step(
            self.task.with_options(**options),
            retries,
            float(delay) if isinstance(delay, (int, float)) else self.backoff,
        )

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.task, attr)


def _journaled(fn: F, step: str, system: str) -> F:
    @functools.wraps(fn)
    def wrapper(host: Any, *args: Any, **kwargs: Any) -> Any:
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


def quiet_errors(fn: F) -> F:
    """For compensation steps: log and swallow, so one failed undo does not stop the others."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            logger().warning("%s failed: %s", fn.__name__, exc)
            return None

    return wrapper  # type: ignore[return-value]
