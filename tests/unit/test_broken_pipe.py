"""Logging can never end a run (issue 18): Prefect's console handler prints through rich,
whose console meets a broken pipe (the worker that read a run process's output died) with
``SystemExit(1)``. With metalflow's runtime in place the console goes quiet instead."""

from __future__ import annotations

import logging
import os

from prefect.logging.handlers import PrefectConsoleHandler

from metalflow.tasks.runtime import survive_broken_pipes


def _broken_stream():
    read, write = os.pipe()
    os.close(read)  # nobody reads: the next write is a broken pipe
    return os.fdopen(write, "w")


def test_a_console_on_a_broken_pipe_goes_quiet_instead_of_exiting():
    name = "metalflow.test-broken-pipe"
    logger = logging.getLogger(name)
    logger.propagate = False
    handler = PrefectConsoleHandler(stream=_broken_stream())
    logger.addHandler(handler)
    try:
        assert survive_broken_pipes(name) >= 1
        assert survive_broken_pipes(name) == 0  # once per console
        for _ in range(3):
            logger.warning("the worker reading this is gone %s", "x" * 200)  # no SystemExit
        assert handler.console.quiet
    finally:
        logger.removeHandler(handler)


def test_without_it_rich_would_end_the_process(tmp_path, monkeypatch):
    """The hazard itself, so the test above cannot pass for a rich that changed its ways (rich
    points fd 1 at /dev/null first: a file of this test's stands in for stdout)."""
    import sys

    import pytest

    with open(tmp_path / "stdout", "w") as stand_in:
        monkeypatch.setattr(sys, "stdout", stand_in)
        handler = PrefectConsoleHandler(stream=_broken_stream())
        with pytest.raises(SystemExit):
            handler.console.print("x" * 200)
