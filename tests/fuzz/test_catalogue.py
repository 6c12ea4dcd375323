"""Every named bad-input class of the catalogue, at its entry point: refused with the
documented failure, the field named, no traceback, no secret echoed, nothing written."""

from __future__ import annotations

import pytest

from tests.fuzz import drivers
from tests.fuzz.catalogue import CATALOGUE, BadInput
from tests.fuzz.drivers import Outcome, World


def attempt(world: World, case: BadInput) -> tuple[Outcome, tuple[str, ...]]:
    """Run the case; return what came back and the secrets its entry point must never show."""
    if case.entry == "extension":
        return drivers.run_extension(world, case.input), drivers.EXTENSION_SECRETS
    if case.entry == "rack":
        return drivers.run_rack(case.input), (drivers.SWITCH_PASSWORD,)
    if case.entry == "import":
        return drivers.run_import(world, case.input), (drivers.SWITCH_PASSWORD,)
    if case.entry == "maas":
        return drivers.run_maas(case.input), ()
    if case.entry == "cli":
        return drivers.run_cli(world, case.input), ()
    if case.entry == "flow":
        return drivers.run_flow(case.input), ()
    raise AssertionError(f"unknown entry point {case.entry}")


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_refused_at_the_edge(world: World, case: BadInput) -> None:
    before = world.snapshot()
    out, secrets = attempt(world, case)
    after = world.snapshot()
    shown = out.text + out.log
    assert "Traceback" not in out.text, f"{case.name}: a traceback instead of an error:\n{out.text[-3000:]}"
    assert case.failure in out.failure, f"{case.name}: expected {case.failure}, got {out.failure}: {out.text[:600]}"
    assert case.field in out.text, f"{case.name}: the error does not name {case.field!r}: {out.text[:600]}"
    for secret in (*case.hidden, *secrets):
        assert secret not in shown, f"{case.name}: {secret!r} came back in the error, answer or log"
    assert after[0] == before[0], f"{case.name}: the inventory changed"
    assert after[1] == before[1], f"{case.name}: {after[1] - before[1]} request(s) reached the Prefect API"
