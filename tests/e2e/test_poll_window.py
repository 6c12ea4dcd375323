"""The long-running power-poll (``window > 0``) end to end: triggered over the REST API on the
served deployment, reading the lab's BMCs, writing the inventory. Changes no host's power
(other end-to-end tests share the hosts)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from metalflow.integrations.common import Deadline

WINDOW = 6  # shorter than the period (10 s): a run still reads every host once
BUSY = "another power-poll run is polling"


def _markdown(e2e, run) -> str:
    docs = [a["data"] for a in e2e.artifacts(run.id) if a.get("type") == "markdown"]
    assert docs, f"run {run.name} published no report"
    return docs[-1]


def test_window_poll_reads_every_host_once_at_a_time(e2e):
    inv = e2e.inventory()
    names = [h.name for h in inv.hosts.all()]
    assert names
    since = datetime.now(UTC)
    # Two at once: the ``power-poll`` limit lets one poll; the other waits out its window and
    # ends Completed, saying why.
    runs = [e2e.trigger("power-poll", window=WINDOW) for _ in range(2)]
    runs = [e2e.wait(r.id, timeout=120) for r in runs]
    assert all(r.ok for r in runs), [(r.name, r.state_name, r.message) for r in runs]
    reports = [_markdown(e2e, r) for r in runs]
    polled = [md for md in reports if BUSY not in md]
    assert len(polled) <= 1, "both runs polled: the power-poll limit did not hold"
    if not polled:
        # A scheduled long-running poll held the limit for both windows: both rightly ended
        # without polling, and that poll keeps every host fresh instead.
        Deadline(30).wait_for(
            lambda: all(h.power_state_at and h.power_state_at > since for h in inv.hosts.all()),
            bool,
            what="every host read by the running poll",
            interval=0.5,
        )
    else:
        (md,) = polled
        m = re.search(r"reads \*\*(\d+)\*\*, failed reads \*\*(\d+)\*\*, reads per BMC per minute \*\*([\d.]+)\*\*", md)
        assert m, md
        assert int(m.group(1)) >= len(names) and float(m.group(3)) > 0
        # each host stamped when its own read started (staggered), not all with one sweep time
        assert len({h.power_state_at for h in inv.hosts.all()}) == len(names)
    for h in inv.hosts.all():
        assert h.power_state_at is not None and h.power_state_at > since, (h.name, h.power_state_at, since)
        lab_power = e2e.lab.host(h.name)["power"]
        assert h.power_state == lab_power, (h.name, h.power_state, lab_power, h.last_poll_error)
