"""Group commit of journal lines (integrations.inventory.group) on a real SQLite inventory:
many threads' lines in few transactions, each thread's lines in order, each line's own result.
The two fault tests wrap the real inventory to hold or fail one transaction (no simulator can
stall a SQLite commit on cue); everything else is the real write path."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from metalflow.integrations.config import load_rack_config
from metalflow.integrations.inventory import HostNotFound, Inventory, InventoryError
from metalflow.integrations.inventory.group import GroupJournal
from metalflow.integrations.inventory.journal import JournalRepository
from metalflow.lab.spec import generate
from tests.integrations.test_inventory import records_for

WAIT = 30.0


@pytest.fixture
def inv(tmp_path):
    spec = generate(hosts=4, switches=1, seed_secrets="journal-group", privileged=True)
    inventory = Inventory(f"sqlite:///{tmp_path / 'inventory.db'}")
    inventory.upgrade()
    inventory.hosts.import_rack_config(load_rack_config(spec.rack_config()), records_for(spec))
    yield inventory
    inventory.dispose()


class Held(JournalRepository):
    """The real inventory's journal, whose first transaction waits for ``go``; ``fail`` makes
    transaction number ``fail_at`` (1 = the first) raise instead of writing."""

    def __init__(self, inner: Inventory, fail: Exception | None = None, fail_at: int = 1):
        super().__init__(inner.db)
        self.entered, self.go = threading.Event(), threading.Event()
        self.fail, self.fail_at = fail, fail_at
        self.calls = 0

    def append_lines(self, lines):
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.go.wait(WAIT)
        if self.fail is not None and self.calls == self.fail_at:
            raise self.fail
        return super().append_lines(lines)


def test_lines_from_many_threads_share_transactions_and_keep_each_threads_order(inv):
    group = GroupJournal(inv.history)
    hosts = ["host-001", "host-002", "host-003", "host-004"]

    def run(i: int) -> None:
        for n in range(10):
            e = group.journal(hosts[i % 4], "provision", f"run-{i}", f"step-{n}", "maas", "ok", f"line {n}")
            assert (e.run_id, e.step, e.detail) == (f"run-{i}", f"step-{n}", f"line {n}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(run, range(16)))
    assert group.transactions < 160  # 160 lines: grouped, not one commit each
    for i in range(16):
        mine = sorted(
            (e for e in inv.history.events(hosts[i % 4], limit=1000) if e.run_id == f"run-{i}"), key=lambda e: e.at
        )
        assert [e.step for e in mine] == [f"step-{n}" for n in range(10)]


def test_a_line_is_stamped_when_queued_not_when_committed(inv):
    held = Held(inv)
    group = GroupJournal(held)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(group.journal, "host-001", "provision", "r", "a", "maas", "started")
        assert held.entered.wait(WAIT)
        queued_at = datetime.now(UTC)
        second = pool.submit(group.journal, "host-002", "provision", "r", "b", "maas", "started")
        threading.Event().wait(0.2)
        released_at = datetime.now(UTC)  # its transaction can only begin after this
        held.go.set()
        assert first.result(WAIT).step == "a"
        e = second.result(WAIT)
    assert queued_at <= e.at <= released_at
    assert inv.history.events("host-002")[0].at == e.at  # stored as stamped


def test_an_unknown_host_fails_only_its_own_line(inv):
    held = Held(inv)
    group = GroupJournal(held)
    with ThreadPoolExecutor(4) as pool:
        lead = pool.submit(group.journal, "host-001", "provision", "r", "lead", "maas", "ok")
        assert held.entered.wait(WAIT)
        ok = pool.submit(group.journal, "host-002", "provision", "r", "ok", "maas", "ok")
        bad = pool.submit(group.journal, "host-999", "provision", "r", "bad", "maas", "ok")
        by_id = pool.submit(
            group.journal, inv.hosts.get("host-003").cloudstack_id, "provision", "r", "by-id", "maas", "ok"
        )
        threading.Event().wait(0.2)  # the three queue behind the held transaction: one batch
        held.go.set()
        assert lead.result(WAIT).host == "host-001"
        assert ok.result(WAIT).host == "host-002"
        with pytest.raises(HostNotFound, match="host-999"):
            bad.result(WAIT)
        assert by_id.result(WAIT).host == "host-003"  # by CloudStack id
    assert group.transactions == 2
    with pytest.raises(InventoryError) as info:
        group.journal("host-001", "provision", "r", "x", "maas", "exploded")
    assert info.value.field == "outcome"  # checked before it is queued


def test_a_failed_transaction_fails_its_lines_and_the_next_lines_are_written(inv):
    held = Held(inv, fail=RuntimeError("database went away"))
    group = GroupJournal(held)
    with ThreadPoolExecutor(4) as pool:
        lead = pool.submit(group.journal, "host-001", "provision", "r", "lost", "maas", "ok")
        assert held.entered.wait(WAIT)
        later = [pool.submit(group.journal, "host-002", "provision", "r", f"kept-{i}", "maas", "ok") for i in range(3)]
        threading.Event().wait(0.2)
        held.go.set()
        with pytest.raises(RuntimeError, match="database went away"):
            lead.result(WAIT)
        assert sorted(f.result(WAIT).step for f in later) == ["kept-0", "kept-1", "kept-2"]
    assert not [e for e in inv.history.events("host-001") if e.step == "lost"]
    assert {e.step for e in inv.history.events("host-002")} == {"kept-0", "kept-1", "kept-2"}


def test_a_line_stuck_behind_a_transaction_times_out_unwritten(inv):
    held = Held(inv)
    group = GroupJournal(held, timeout=0.3)
    with ThreadPoolExecutor(2) as pool:
        lead = pool.submit(group.journal, "host-001", "provision", "r", "slow", "maas", "ok")
        assert held.entered.wait(WAIT)
        stuck = pool.submit(group.journal, "host-002", "provision", "r", "stuck", "maas", "ok")
        with pytest.raises(TimeoutError, match="not written"):
            stuck.result(WAIT)
        held.go.set()
        assert lead.result(WAIT).step == "slow"
    assert not inv.history.events("host-002")
    assert group.journal("host-002", "provision", "r", "after", "maas", "ok").step == "after"  # not wedged


def test_the_others_in_a_failed_transaction_get_a_failure_of_their_own(inv):
    held = Held(inv, fail=RuntimeError("database went away"), fail_at=2)
    group = GroupJournal(held)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group.journal, "host-001", "provision", "r", "first", "maas", "ok")
        assert held.entered.wait(WAIT)
        second = [
            pool.submit(group.journal, "host-002", "provision", "r", f"second-{i}", "maas", "ok") for i in range(3)
        ]
        threading.Event().wait(0.2)  # all three queued: the second transaction carries them
        held.go.set()
        assert first.result(WAIT).step == "first"
        errors = [f.exception(WAIT) for f in second]
    # The one that led it gets the error as it came; the others say their transaction failed.
    assert sorted(type(e).__name__ for e in errors) == ["JournalWriteFailed", "JournalWriteFailed", "RuntimeError"]
    assert all("database went away" in str(e) for e in errors)
    assert not [e for e in inv.history.events("host-002")]
    assert group.journal("host-002", "provision", "r", "after", "maas", "ok").step == "after"


def test_a_caller_cancelled_after_being_handed_the_lead_does_not_wedge_the_queue(inv):
    """The pool cancels a run by raising RunCancelled in its thread (deployments.pool): here it
    lands in a caller queued behind a transaction, as it is handed the lead."""
    from metalflow.deployments.pool import RunCancelled, raise_in_thread

    held = Held(inv)
    group = GroupJournal(held, timeout=5.0)  # a wedged queue fails the test in seconds
    box: dict[str, BaseException] = {}

    def cancelled_caller() -> None:
        try:
            group.journal("host-002", "provision", "r", "cancelled", "maas", "ok")
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            box["exc"] = exc

    with ThreadPoolExecutor(2) as pool:
        lead = pool.submit(group.journal, "host-001", "provision", "r", "lead", "maas", "ok")
        assert held.entered.wait(WAIT)
        victim = threading.Thread(target=cancelled_caller)
        victim.start()
        behind = pool.submit(group.journal, "host-003", "provision", "r", "behind", "maas", "ok")
        threading.Event().wait(0.2)  # both queued after the held transaction's batch
        assert raise_in_thread(victim, RunCancelled)  # delivered when its wait returns
        held.go.set()
        victim.join(WAIT)
        assert isinstance(box.get("exc"), RunCancelled)
        assert lead.result(WAIT).step == "lead"
        assert behind.result(WAIT).step == "behind"  # the lead passed on
    assert not inv.history.events("host-002")
    assert group.journal("host-004", "provision", "r", "later", "maas", "ok").step == "later"
