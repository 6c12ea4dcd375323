"""The pyghmi shim, applied once for the test process as a metalflow process applies it when it
starts (``BmcClient`` no longer applies it on first use)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def pyghmi_shim() -> None:
    from metalflow.integrations.ipmi import patch_pyghmi

    patch_pyghmi()
