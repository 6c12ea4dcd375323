"""The process runtime: parts made once, closed newest first, exactly once."""

from __future__ import annotations

import threading
import time

import pytest

from metalflow.integrations.runtime import Runtime, RuntimeClosed


def test_a_part_is_made_once_however_many_threads_ask_at_once():
    rt = Runtime()
    made = []

    def make():
        time.sleep(0.05)
        made.append(1)
        return object()

    got = []
    threads = [threading.Thread(target=lambda: got.append(rt.part("x", make))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    assert len({id(g) for g in got}) == 1


def test_parts_close_newest_first_once_and_a_failing_close_does_not_stop_the_others():
    rt = Runtime()
    closed = []
    rt.part("a", lambda: "a", closed.append)
    rt.part("b", lambda: "b", lambda v: (_ for _ in ()).throw(OSError("b would not close")))
    rt.part("c", lambda: "c", closed.append)
    rt.close()
    rt.close()
    assert closed == ["c", "a"]
    with pytest.raises(RuntimeClosed):
        rt.part("d", lambda: "d")


def test_install_closes_the_runtime_it_replaces_and_current_makes_one_when_none_is_installed():
    first = Runtime.install(Runtime("first"))
    closed = []
    first.part("p", lambda: 1, lambda v: closed.append(v))
    second = Runtime.install(Runtime("second"))
    try:
        assert closed == [1] and first.closed
        assert Runtime.current() is second
    finally:
        Runtime.uninstall(second)
    made = Runtime.current()
    try:
        assert made is not second and not made.closed
    finally:
        Runtime.uninstall(made)
