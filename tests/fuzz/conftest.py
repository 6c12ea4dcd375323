"""The fuzz suite's world: one real SQLite inventory and a Prefect API recorder per module.
No lab simulators and no Prefect server: every input here must be refused before anything
reaches a system, which the recorder and the inventory's content prove."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.drivers import PrefectRecorder, World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    prefect = PrefectRecorder()
    try:
        yield make_world(tmp_path_factory.mktemp("fuzz"), prefect)
    finally:
        prefect.close()
