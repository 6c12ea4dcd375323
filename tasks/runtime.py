"""The process's ``Runtime`` as the tasks see it: ``runtime()``.

``deployments`` installs a runtime when a process starts (``metalflow serve``, ``metalflow
demo``) and closes it when the process ends; a flow-run process started by a Prefect process
worker, or a test, gets one on first use (closed at interpreter exit). Either way, the first
call here also applies what must be in place once per process before any run uses a client:
the pyghmi shim (``integrations.ipmi.shim``), which closes pyghmi 1.6.19's lost wake-up race
for every BMC call of the process (it used to be applied by the first ``BmcClient`` call).
"""

from __future__ import annotations

from metalflow.integrations.ipmi.shim import patch_pyghmi
from metalflow.integrations.runtime import Runtime


def runtime() -> Runtime:
    """This process's runtime, with the process-wide patches applied (once per runtime)."""
    rt = Runtime.current()
    rt.part("pyghmi-shim", patch_pyghmi)
    return rt
