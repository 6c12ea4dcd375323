"""What every operation flow shares: the per-host lock, the undo stack, the run's report and
its name. Flows stay readable as the runbook; the mechanics live here."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect import tags
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from metalflow.integrations.common.names import host_lock_name
from metalflow.tasks.common import logger, write_journal
from metalflow.tasks.locks import acquire, ensure_limit
from metalflow.tasks.settings import settings

LOCK_WAIT_SECONDS = 4 * 3600.0
#: The tag every compensation task run carries (filter on it in the UI or the API).
ROLLBACK_TAG = "rollback"


def ensure_host_limit(host: str) -> str:
    """The global concurrency limit that serialises operations on one host (limit 1). Made on
    first use; ``strict=True`` below then refuses to run if it ever went missing."""
    return ensure_limit(host_lock_name(host))


def canonical_host(host: str) -> str:
    """The inventory name of ``host`` (given by name or CloudStack id), so that two runs for
    one machine take one lock however the caller named it. An unknown host fails here, named,
    before a lock (or anything else) is made for it."""
    from metalflow.tasks.clients import inventory

    return inventory().get_host(host).name


@contextmanager
def host_lock(host: str, operation: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the host's lock for the whole operation; say so when another run holds it."""
    host = canonical_host(host)
    name = ensure_host_limit(host)
    # The lock is a lease the run renews; a run whose worker died holds it until it expires.
    lease = settings().host_lock_lease
    log = logger()
    started = time.monotonic()
    held = acquire(
        name,
        lease,
        started + wait,
        on_wait=lambda: log.warning(
            "waiting: another operation is running on %s (lock %s); %s starts when it ends", host, name, operation
        ),
    )
    if held is None:
        raise TimeoutError(
            f"{operation} on {host}: another operation held its lock ({name}) for {wait:.0f} s; "
            "rerun this run once that one ended"
        )
    if time.monotonic() - started > 1:
        log.info("got the lock on %s after %.0f s", host, time.monotonic() - started)
    with held:
        yield


@dataclass
class Undo:
    """Compensation: each change registers its undo right before it is made (a change that
    fails half-way must be undone too, and every undo is idempotent, so undoing a change that
    never happened is a no-op); on failure the undos run in reverse, each a visible task run
    tagged ``rollback``, and one failing undo does not stop the others."""

    steps: list[tuple[str, Callable[[], Any]]] = field(default_factory=list)

    def push(self, label: str, fn: Callable[[], Any]) -> None:
        if label not in [s[0] for s in self.steps]:  # registered twice: it keeps its first place
            self.steps.append((label, fn))

    def run(self, report: Report) -> list[str]:
        """Undo everything registered, newest first. Returns the labels of the undos that
        failed (empty: fully rolled back)."""
        log = logger()
        failed: list[str] = []
        for label, fn in reversed(self.steps):
            try:
                with tags(ROLLBACK_TAG):
                    result = fn()
                report.add("rollback", label, result)
            except Exception as exc:  # noqa: BLE001 - keep undoing
                log.error("rollback step %r failed: %s", label, exc)
                report.add("rollback", f"{label} FAILED", str(exc))
                failed.append(label)
        self.steps.clear()
        return failed


class RolledBack(Exception):
    """An operation failed after it began changing things; ``str()`` says why and whether
    the compensation undid everything (the run's state message, what CloudStack shows).
    Plain ``Exception(message)`` underneath, so it pickles like any other."""

    @classmethod
    def of(cls, reason: BaseException, undone: int, failed: list[str]) -> RolledBack:
        if failed:
            tail = f"ROLLBACK INCOMPLETE: {', '.join(failed)} failed (see the run's report and logs)"
        else:
            tail = f"rolled back ({undone} step{'s' if undone != 1 else ''} undone)"
        return cls(f"{type(reason).__name__}: {reason} | {tail}")


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
        lines = [
            f"# {title}",
            "",
            f"**Outcome:** {self.outcome}",
            "",
            "| # | system | step | result |",
            "|---|---|---|---|",
        ]
        lines += [f"| {i} | {s} | {st} | {r} |" for i, (s, st, r) in enumerate(self.rows, 1)]
        for t, body in self.sections:
            lines += ["", f"## {t}", "", body]
        return "\n".join(lines)

    def publish(self) -> None:
        key = re.sub(r"[^a-z0-9-]+", "-", f"{self.operation}-{self.host}".lower()).strip("-")
        try:
            create_markdown_artifact(
                markdown=self.markdown(), key=key, description=f"{self.operation} on {self.host}: {self.outcome}"
            )
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
