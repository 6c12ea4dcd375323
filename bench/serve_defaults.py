"""Serve one metalflow flow under another deployment name with Prefect's own ``serve`` (a
subprocess per run), with the runner settings of its environment: the baseline of
``bench.trigger_latency`` (which strips ``PREFECT_RUNNER_*``, so Prefect's defaults: poll every
10 s) and of ``bench.provision_concurrency`` (the Stack's poll every 1 s).

    python -m metalflow.bench.serve_defaults --flow status --name bench-defaults
"""

from __future__ import annotations

import argparse


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flow", default="status")
    p.add_argument("--name", default="bench-defaults")
    args = p.parse_args()
    from prefect import serve

    from metalflow.deployments.registry import ON_DEMAND

    flows = {f.name: f for f in ON_DEMAND}
    deployment = flows[args.flow].to_deployment(name=args.name, tags=["bench"])
    serve(deployment, print_starting_message=False)  # type: ignore[arg-type]  # sync call: not a coroutine


if __name__ == "__main__":
    main()
