"""Run the whole suite as three pytest processes at once (``make test``).

The suite spends most of its time waiting: on Prefect servers, on flow runs, on simulated
MAAS deploys and BMC deadlines. Groups side by side keep both cores busy and cut the wall
time. The groups never share a loopback block: e2e from 30 and the canary test from 40
(first); scale from 60, integration tests 60-62, 150 and 155, the fuzz suite none (it starts
no simulator, only a loopback listener on a free port), lab tests 20 and 50-52 (second); the
benchmarks' smoke runs 70-90 and cloudstack from 45, with CloudStack's lifecycle through the lab's
CloudStack since issue 17 (third). Measured on two cores: two halves took 17:24 and 15:43;
three groups with cloudstack in the second 14:08, 15:16 and 7:34, hence cloudstack moved;
then 13:49, 9:45 and 11:44 with the lab tests (2:20 alone) in the first, hence they moved;
then 15:07, 17:48 and 15:45 with issue 18's worker-kill tests, the scale module and the
benchmarks' smoke run both starting first: the scale module now runs last in its group;
then 12:21, 13:29 and 15:24: the canary test (1.5 min) moved from the third group to the first.

    python -m tests.split [pytest args...]

Arguments naming a path (``tests/unit``, ``tests/e2e/test_bulk.py::test_x``) run in one
process as given, like plain ``pytest``. The output of the other groups is printed after the
first's; the exit status is the first non-zero.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Run side by side; the first prints as it goes, the others after it.
GROUPS = (
    ("tests/e2e", "tests/unit", "tests/canary"),
    # The scale module last: it starts a PostgreSQL, a Prefect server and two workers, and at
    # the start of the run it met the benchmarks' four servers (third group) at their peak.
    ("tests/integrations", "tests/fuzz", "tests/lab", "tests/scale"),
    ("tests/bench", "tests/cloudstack"),
)


def _names_a_path(arg: str) -> bool:
    return not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists()


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest"]
    if any(_names_a_path(a) for a in argv):
        return subprocess.call(cmd + argv, cwd=ROOT)
    covered = {p for group in GROUPS for p in group}
    with_tests = [p for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.rglob("test_*.py"))]
    missing = sorted(str(p.relative_to(ROOT)) for p in with_tests if str(p.relative_to(ROOT)) not in covered)
    if missing:
        print(f"tests.split: test directories in no group: {missing}; add them to GROUPS", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in GROUPS[1:]]
        others = [
            subprocess.Popen(
                cmd + argv + list(group), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
            for group, out in zip(GROUPS[1:], outs, strict=True)
        ]
        try:
            codes = [subprocess.call(cmd + argv + list(GROUPS[0]), cwd=ROOT)] + [p.wait() for p in others]
        except KeyboardInterrupt:
            for p in others:
                p.terminate()
                p.wait(30)
            raise
        for group, out in zip(GROUPS[1:], outs, strict=True):
            out.seek(0)
            print(f"\n===== {' '.join(group)} =====", flush=True)
            sys.stdout.write(out.read())
    summary = "; ".join(f"{' '.join(g)} → {c}" for g, c in zip(GROUPS, codes, strict=True))
    print(f"\n===== exit status: {summary}", flush=True)
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
