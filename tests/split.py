"""Run the whole suite as two pytest processes at once (``make test``).

The suite spends most of its time waiting: on a Prefect server, on flow runs, on simulated
MAAS deploys and BMC deadlines. Two halves side by side keep both cores busy and roughly halve
the wall time. The halves are chosen so that they never share a loopback block (first half: e2e
from 30, the canary test from 40, lab tests 20 and 50-52, the benchmarks 70-90; second half:
cloudstack from 45 (with CloudStack's lifecycle through the lab's CloudStack since issue 17),
scale from 60, integration tests 60-62 and 150; the fuzz suite needs no block: it starts no
simulator, only a loopback listener on a free port) and weigh about the same.

    python -m tests.split [pytest args...]

Arguments naming a path (``tests/unit``, ``tests/e2e/test_bulk.py::test_x``) run in one
process as given, like plain ``pytest``. The output of the second half is printed after the
first's; the exit status is the first non-zero of the two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HALVES = (
    ("tests/e2e", "tests/bench", "tests/unit", "tests/lab", "tests/canary"),
    ("tests/scale", "tests/cloudstack", "tests/integrations", "tests/fuzz"),
)


def _names_a_path(arg: str) -> bool:
    return not arg.startswith("-") and (ROOT / arg.split("::")[0]).exists()


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest"]
    if any(_names_a_path(a) for a in argv):
        return subprocess.call(cmd + argv, cwd=ROOT)
    covered = {p for half in HALVES for p in half}
    with_tests = [p for p in (ROOT / "tests").iterdir() if p.is_dir() and any(p.rglob("test_*.py"))]
    missing = sorted(str(p.relative_to(ROOT)) for p in with_tests if str(p.relative_to(ROOT)) not in covered)
    if missing:
        print(f"tests.split: test directories in no half: {missing}; add them to HALVES", file=sys.stderr)
        return 2
    with tempfile.TemporaryFile("w+") as second_out:
        second = subprocess.Popen(
            cmd + argv + list(HALVES[1]), cwd=ROOT, stdout=second_out, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        try:
            first = subprocess.call(cmd + argv + list(HALVES[0]), cwd=ROOT)
            rc_second = second.wait()
        except KeyboardInterrupt:
            second.terminate()
            second.wait(30)
            raise
        second_out.seek(0)
        print(f"\n===== second half: {' '.join(HALVES[1])} =====", flush=True)
        sys.stdout.write(second_out.read())
    print(f"\n===== exit status: {' '.join(HALVES[0])} → {first}; {' '.join(HALVES[1])} → {rc_second}", flush=True)
    return first or rc_second


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
