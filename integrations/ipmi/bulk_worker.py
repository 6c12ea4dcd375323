"""Entry point of a ``BulkPowerReader`` worker process (started by the reader, not by hand):

python -m integrations.ipmi.bulk_worker <socket fd> <per_call_timeout> <concurrency> <patch 0|1>
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from metalflow.integrations.ipmi.bulk import worker_main


def main(argv: list[str]) -> None:
    fd, per_call_timeout, concurrency, patch = argv
    worker_main(Connection(int(fd)), float(per_call_timeout), int(concurrency), patch == "1")


if __name__ == "__main__":
    main(sys.argv[1:])
