"""What every operation flow shares: the per-host lock, and the ``Runbook`` that owns a run's
steps, its undo stack, its report, its outcome and their publishing. Flows stay readable as
the runbook; the mechanics live here."""

from __future__ import annotations

import contextvars
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar

from prefect import Task, tags
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from metalflow.integrations.common import scrub
from metalflow.integrations.common.names import ROLLBACK_INCOMPLETE, ROLLED_BACK, host_lock_name
from metalflow.integrations.inventory import HostInfo
from metalflow.tasks import clients, inventory
from metalflow.tasks.common import logger, run_inline, system_of
from metalflow.tasks.locks import acquire, ensure_limit
from metalflow.tasks.settings import settings

P = ParamSpec("P")
R = TypeVar("R")

LOCK_WAIT_SECONDS = 4 * 3600.0
#: The tag every compensation task run carries (filter on it in the UI or the API).
ROLLBACK_TAG = "rollback"
#: A markdown table cell keeps at most this many characters (a long error stays readable).
CELL_WIDTH = 400


def ensure_host_limit(host: str) -> str:
    """The global concurrency limit that serialises operations on one host (limit 1). Made on
    first use; ``strict=True`` below then refuses to run if it ever went missing."""
    return ensure_limit(host_lock_name(host))


def canonical_host(host: str) -> str:
    """The inventory name of ``host`` (given by name or CloudStack id), so that two runs for
    one machine take one lock however the caller named it. An unknown host fails here, named,
    before a lock (or anything else) is made for it."""
    from metalflow.tasks.clients import inventory as inventory_client

    return inventory_client().hosts.get(host).name


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
    run_id = flow_run.id
    recorded = False
    if run_id:
        # Written down so that recovery can release it the moment this run is marked Crashed
        # (Prefect lists no leases; without the record a dead run holds the host for the lease).
        try:
            clients.inventory().leases.held(str(run_id), name, held.lease_id)
            recorded = True
        except Exception as exc:  # noqa: BLE001 - the lock is held; only its early release is lost
            log.warning("the lock on %s was not recorded (a crash would hold it for its lease): %s", host, exc)
    try:
        with held:
            yield
    finally:
        if recorded:
            try:
                clients.inventory().leases.released(held.lease_id)
            except Exception as exc:  # noqa: BLE001 - a stale record of a released lease is harmless
                log.warning("the released lock on %s is still recorded: %s", host, exc)


# --- markdown artifacts: one cell escape, one publisher ------------------------------------------


def md_cell(value: object, width: int = CELL_WIDTH) -> str:
    """``value`` as one markdown table cell: pipes escaped, one line, at most ``width``
    characters; None and "" are an empty cell."""
    if value is None or value == "":
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")[:width]


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Publish a run's markdown artifact under ``key`` (made a valid artifact key: lower-case
    letters, digits, dashes). Best effort: a report must not fail the operation it reports.
    The markdown and the description pass the process's scrubber first: an artifact is kept in
    the Prefect database and shown in the UI, so no loaded secret may reach it (a step's result
    or an error text quoting one)."""
    key = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")
    try:
        create_markdown_artifact(markdown=scrub(markdown), key=key, description=scrub(description)[:500])
    except Exception as exc:  # noqa: BLE001 - a report must not fail the operation
        logger().warning("could not publish the run report %s: %s", key, exc)


# --- the report ----------------------------------------------------------------------------------


@dataclass
class Report:
    """The run's story, published as one markdown artifact: what changed, where, in order."""

    operation: str
    host: str
    subject: str = ""
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    outcome: str = "running"

    def add(self, system: str, step: str, result: object = "") -> None:
        if isinstance(result, (list, tuple)):
            text = "<br>".join(md_cell(r) for r in result) if result else "no change"
        else:
            text = md_cell(result)
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
        publish_markdown(
            f"{self.operation}-{self.host}", self.markdown(), f"{self.operation} on {self.host}: {self.outcome}"
        )


# --- outcomes ------------------------------------------------------------------------------------


class Refused(Exception):
    """A flow's input or precondition does not hold; raised before any change, so nothing
    was changed. The ``Runbook`` publishes it as ``refused, nothing changed: ...``."""


class RolledBack(Exception):
    """An operation failed after it began changing things; ``str()`` says why and whether
    the compensation undid everything (the run's state message, what CloudStack shows).
    Plain ``Exception(message)`` underneath, so it pickles like any other."""

    @classmethod
    def of(cls, reason: BaseException, undone: int, failed: list[str], step: str = "") -> RolledBack:
        if failed:
            tail = f"{ROLLBACK_INCOMPLETE}: {', '.join(failed)} failed (see the run's report and logs)"
        else:
            tail = f"{ROLLED_BACK} ({undone} step{'s' if undone != 1 else ''} undone)"
        where = f"at step {step!r}: " if step else ""
        # The run's state message (kept by Prefect, shown by CloudStack): scrubbed like a log line.
        return cls(scrub(f"{where}{type(reason).__name__}: {reason} | {tail}"))


@dataclass(frozen=True)
class Shown(Generic[R]):
    """A step's label with how its result reads in the report, when that is not ``str()``
    (a ``Machine`` reads as its status): ``rb.step(Shown("wait for Ready", status_of), ...)``."""

    label: str
    show: Callable[[R], object]


# --- inline steps: the same runbook without a Prefect task run per step --------------------------

_INLINE: contextvars.ContextVar[bool] = contextvars.ContextVar("metalflow_inline_steps", default=False)


@contextmanager
def inline_steps() -> Iterator[None]:
    """Within this block (this thread's context), every ``Runbook`` made without an explicit
    ``inline`` runs its steps inline (see ``Runbook``). ``bulk-provision`` wraps each host's
    provision subflow in it."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


class Runbook:
    """One run of an operation flow: its steps, their undos, its report and its outcome.

        with Runbook("provision", h.name, vm.name) as rb:
            rb.undo("rename back", maas.rename_machine, h, idle_name(h))
            rb.step(f"rename to {vm.name}", maas.rename_machine, h, vm.name)

    A step is a runbook task: its row in the report names the task's system and the given
    label, with its result (or ``FAILED: <error>``); the task journals itself. ``run`` calls a
    task without a row (the reads a step needs).

    Compensation: each change registers its undo right before it is made (a change that fails
    half-way must be undone too, and every undo is idempotent, so undoing a change that never
    happened is a no-op). Once ``begin_changes()`` was called (or an undo registered), an
    exception ends the run by running the undos in reverse, each a visible task run tagged
    ``rollback``, one failing undo not stopping the others; the run then fails with
    ``RolledBack`` saying whether everything was undone. Before that, a ``Refused`` is
    published as ``refused, nothing changed: ...`` and any other error as ``<failed>: ...``.
    The report is published when the block ends, however it ends.

    ``inline``: steps run as plain calls inside the flow run instead of as Prefect task runs:
    the same function, journal line and report row, the same transient-only retries with
    backoff, the clients' own deadlines (the task's ``timeout_seconds`` backstop does not
    apply). Default: inside ``inline_steps()`` or not. Why: each task run costs the Prefect
    server about three state events and the serving process its engine; under fifty
    provisions at once on two cores that is most of the CPU (bench/provision_concurrency).
    ``bulk-provision`` runs its hosts this way; each host still has its own run page, report,
    logs and journal, only the per-step task rows go."""

    def __init__(
        self,
        operation: str,
        host: str,
        subject: str = "",
        *,
        failed: str = "failed",
        inline: bool | None = None,
    ):
        self.report = Report(operation, host, subject)
        self.failed = failed
        self.inline = _INLINE.get() if inline is None else inline
        self.undos: list[tuple[str, Callable[[], object]]] = []
        self.changing = False
        self.failed_step = ""  # the first step that failed (named in RolledBack's message)
        #: label -> seq of the undos also written to the inventory (``undo_action``)
        self.persisted: dict[str, int] = {}
        self._run_id = ""

    # -- what a flow writes ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.report.host

    @host.setter
    def host(self, name: str) -> None:
        self.report.host = name

    @property
    def subject(self) -> str:
        return self.report.subject

    @subject.setter
    def subject(self, text: str) -> None:
        self.report.subject = text

    def load_host(self, host: str) -> HostInfo:
        """The host's inventory record; the report names the host as the inventory does."""
        h = self.run(inventory.load_host, host)
        self.host = h.name
        return h

    @property
    def outcome(self) -> str:
        return self.report.outcome

    @outcome.setter
    def outcome(self, text: str) -> None:
        self.report.outcome = text

    def run(self, task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``task``: a Prefect task run, or inline (see the class). No report row."""
        if self.inline:
            return run_inline(task, *args, **kwargs)
        return task(*args, **kwargs)

    def step(self, label: str | Shown[R], task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one runbook step and report it under the task's system."""
        text, show = (label, None) if isinstance(label, str) else (label.label, label.show)
        try:
            result = self.run(task, *args, **kwargs)
        except Exception as exc:
            self.report.add(system_of(task), text, f"FAILED: {exc}")
            self.failed_step = self.failed_step or text
            raise
        self.report.add(system_of(task), text, show(result) if show else result)
        return result

    def note(self, system: str, label: str, result: object = "") -> None:
        """A report row that is no step of its own (a check, a step skipped and why)."""
        self.report.add(system, label, result)

    def section(self, title: str, body: str, lang: str = "") -> None:
        self.report.section(title, body, lang)

    def begin_changes(self) -> None:
        """From here on a failure is rolled back (even before the first undo is registered:
        the rollback then says "0 steps undone")."""
        self.changing = True

    def undo(self, label: str, fn: Task[P, Any] | Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        """Register the undo of the change that follows (a runbook task, called as ``run``
        does, or a function that calls its tasks through this runbook). Registered twice
        (a loop, a retried block): it keeps its first place."""
        self.changing = True
        if label in (u[0] for u in self.undos):
            return
        if isinstance(fn, Task):
            task: Task[P, Any] = fn
            self.undos.append((label, lambda: self.run(task, *args, **kwargs)))
        else:
            plain: Callable[P, Any] = fn
            self.undos.append((label, lambda: plain(*args, **kwargs)))

    def undo_action(self, label: str, action: str, host: HostInfo, **params: Any) -> None:
        """``undo`` of a named action (``flows.undo.ACTIONS``), also written to the inventory
        before the change it undoes: when this process dies before it can undo the change, a
        recovery run replays it from there (issue 18). Registered twice: the first stays."""
        from metalflow.flows.undo import ACTIONS

        if action not in ACTIONS:
            raise ValueError(f"no undo action {action!r} (known: {', '.join(sorted(ACTIONS))})")
        self.changing = True
        if label in (u[0] for u in self.undos):
            return
        seq = len(self.undos)
        clients.inventory().undos.push(host.name, self.run_id, self.report.operation, seq, label, action, params)
        self.persisted[label] = seq
        fn = ACTIONS[action]
        self.undos.append((label, lambda: fn(self, host, params)))

    @property
    def run_id(self) -> str:
        """The flow run's id (what a recovery asks Prefect about), or a local one outside a run."""
        if not self._run_id:
            self._run_id = str(flow_run.id or "") or f"local-{uuid.uuid4()}"
        return self._run_id

    def _forget_undos(self) -> None:
        """The run completed or its rollback finished: nothing of it is left to undo."""
        if not self.persisted:
            return
        try:
            clients.inventory().undos.clear(self.run_id)
        except Exception as exc:  # noqa: BLE001 - a recovery sees the run completed and only clears them
            logger().warning("the run's undo records were not cleared: %s", exc)
        self.persisted.clear()

    # -- how a run ends ---------------------------------------------------------------------------

    def __enter__(self) -> Runbook:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self._forget_undos()
            self.report.publish()
            return
        if not isinstance(exc, Exception):
            # SystemExit, KeyboardInterrupt, a termination signal (a cancelled run, a worker
            # stopping it): the process still lives, so whatever was changed is undone now,
            # then the run ends the way it was ending (issue 18).
            if self.changing:
                steps = len(self.undos)
                failed = self.rollback()
                self.outcome = (
                    f"interrupted ({type(exc).__name__}): {RolledBack.of(exc, steps, failed, self.failed_step)}"
                )
            self.report.publish()
            return  # re-raised as it is
        if not self.changing:
            if isinstance(exc, Refused):
                self.outcome = f"refused, nothing changed: {exc}"
            else:
                self.outcome = f"{self.failed}: {exc}"
            self.report.publish()
            return  # re-raised as it is
        steps = len(self.undos)
        failed = self.rollback()
        outcome = RolledBack.of(exc, steps, failed, self.failed_step)
        self.outcome = f"failed: {outcome}"
        self.report.publish()
        raise outcome from exc

    def rollback(self) -> list[str]:
        """Undo everything registered, newest first. Returns the labels of the undos that
        failed (empty: fully rolled back)."""
        log = logger()
        failed: list[str] = []
        for label, fn in reversed(self.undos):
            try:
                with tags(ROLLBACK_TAG):
                    result = fn()
                self.report.add("rollback", label, result)
                self._record_undo(label, None)
            except Exception as exc:  # noqa: BLE001 - keep undoing
                log.error("rollback step %r failed: %s", label, exc)
                self.report.add("rollback", f"{label} FAILED", str(exc))
                failed.append(label)
                self._record_undo(label, exc)
        self.undos.clear()
        if not failed:
            self._forget_undos()
        return failed

    def _record_undo(self, label: str, error: Exception | None) -> None:
        """Mark a persisted undo done (it goes) or failed (kept for recovery); never stops
        the rollback."""
        seq = self.persisted.get(label)
        if seq is None:
            return
        try:
            undos = clients.inventory().undos
            if error is None:
                undos.done(self.run_id, seq)
            else:
                undos.failed(self.run_id, seq, f"{type(error).__name__}: {error}")
        except Exception as exc:  # noqa: BLE001
            logger().warning("undo %r not recorded as %s: %s", label, "done" if error is None else "failed", exc)


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
