"""What every operation flow shares: the per-host lock, the undo stack, the run's report and
its name. Flows stay readable as the runbook; the mechanics live here."""
from __future__ import annotations

import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import flow_run

from tasks.common import logger, write_journal

LOCK_WAIT_SECONDS = 4 * 3600.0


def lock_name(host: str) -> str:
    return "host-" + re.sub(r"[^a-z0-9-]+", "-", host.lower()).strip("-")


def ensure_host_limit(host: str) -> str:
    """The global concurrency limit that serialises operations on one host (limit 1). Made on
    first use; ``strict=True`` below then refuses to run if it ever went missing."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = lock_name(host)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass
            except Exception as exc:  # a concurrent creator got there first (409)
                if "409" not in str(exc) and "already exists" not in str(exc).lower():
                    raise
    return name


@contextmanager
def host_lock(host: str, operation: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the host's lock for the whole operation; say so when another run holds it."""
    name = ensure_host_limit(host)
    log = logger()
    held = ExitStack()
    try:
        held.enter_context(concurrency(name, occupy=1, strict=True, timeout_seconds=1))
    except TimeoutError:
        log.warning("waiting: another operation is running on %s (lock %s); %s starts when it ends",
                    host, name, operation)
        started = time.monotonic()
        held.enter_context(concurrency(name, occupy=1, strict=True, timeout_seconds=wait))
        log.info("got the lock on %s after %.0f s", host, time.monotonic() - started)
    with held:
        yield


@dataclass
class Undo:
    """Compensation: each change registers its undo right beside it; on failure the undos run
    in reverse, each a visible task, and one failing undo does not stop the others."""

    steps: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)

    def push(self, label: str, fn: Callable[[], Any]) -> None:
        if label not in [s[0] for s in self.steps]:  # e.g. allocate and deploy share "release"
            self.steps.append((label, fn))

    def run(self, report: "Report") -> None:
        log = logger()
        for label, fn in reversed(self.steps):
            try:
                result = fn()
                report.add("rollback", label, result)
            except Exception as exc:  # noqa: BLE001 - keep undoing
                log.error("rollback step %r failed: %s", label, exc)
                report.add("rollback", f"{label} FAILED", str(exc))
        self.steps.clear()


@dataclass
class Report:
    """The run's story, published as one markdown artifact: what changed, where, in order."""

    operation: str
    host: str
    subject: str = ""
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    outcome: str = "running"

    def add(self, system: str, step: str, result: Any = "") -> None:
        if isinstance(result, (list, tuple)):
            text = "<br>".join(_cell(r) for r in result) if result else "no change"
        else:
            text = _cell(result)
        self.rows.append((system, step, text))

    def section(self, title: str, body: str, lang: str = "") -> None:
        self.sections.append((title, f"```{lang}\n{body}\n```"))

    def markdown(self) -> str:
        title = f"{self.operation} {self.host}" + (f" → {self.subject}" if self.subject else "")
        lines = [f"# {title}", "", f"**Outcome:** {self.outcome}", "",
                 "| # | system | step | result |", "|---|---|---|---|"]
        lines += [f"| {i} | {s} | {st} | {r} |" for i, (s, st, r) in enumerate(self.rows, 1)]
        for t, body in self.sections:
            lines += ["", f"## {t}", "", body]
        return "\n".join(lines)

    def publish(self) -> None:
        key = re.sub(r"[^a-z0-9-]+", "-", f"{self.operation}-{self.host}".lower()).strip("-")
        try:
            create_markdown_artifact(markdown=self.markdown(), key=key,
                                     description=f"{self.operation} on {self.host}: {self.outcome}")
        except Exception as exc:  # noqa: BLE001 - a report must not fail the operation
            logger().warning("could not publish the run report: %s", exc)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")[:400] if value not in (None, "") else ""


def step(report: Report, system: str, label: str, result: Any) -> Any:
    report.add(system, label, result)
    return result


def run_name(operation: str, subject_param: str | None = None, subject_key: str | None = None) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``provision host-007 → web-01``."""

    def name() -> str:
        params = flow_run.parameters or {}
        host = params.get("host", "")
        subject = params.get(subject_param) if subject_param else None
        if subject is not None and subject_key:
            subject = subject.get(subject_key) if isinstance(subject, dict) else getattr(subject, subject_key, None)
        return f"{operation} {host}" + (f" → {subject}" if subject not in (None, "") else "")

    return name


def journal_flow(host: str, outcome: str, detail: str = "") -> None:
    write_journal(host, "flow", "metalflow", outcome, detail)
