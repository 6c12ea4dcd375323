"""The process's ``Runtime`` as the tasks see it: ``runtime()``.

``deployments`` installs a runtime when a process starts (``metalflow serve``, ``metalflow
demo``) and closes it when the process ends; a flow-run process started by a Prefect process
worker, or a test, gets one on first use (closed at interpreter exit). Either way, the first
call here also applies what must be in place once per process before any run uses a client:
the pyghmi shim (``integrations.ipmi.shim``), which closes pyghmi 1.6.19's lost wake-up race
for every BMC call of the process (it used to be applied by the first ``BmcClient`` call).

Every call also makes sure the handlers of metalflow's and Prefect's loggers carry the
secret scrubber's filter (``integrations.common.secrets.ScrubFilter``): Prefect may configure
its logging again after the process started (a flow-run process does), and a handler added
then must not send a secret to the Prefect UI. Checking is a handful of attribute reads.

And that logging can never end a run (issue 18): Prefect's console handler prints through
rich, whose console answers a broken pipe (the worker that read a run process's output died)
with ``SystemExit(1)``, which no ``except Exception`` catches, so the run died mid-change with
no rollback. Here a console that meets a broken pipe goes quiet instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from metalflow.integrations.common.secrets import install_log_scrubbing, scrubber
from metalflow.integrations.ipmi.shim import patch_pyghmi
from metalflow.integrations.runtime import Runtime

#: The loggers whose handlers scrub: the root (console), metalflow's, and Prefect's (among them
#: the API log handlers of flow and task runs, and the worker's).
SCRUBBED_LOGGERS = (
    "metalflow",
    "prefect",
    "prefect.flow_runs",
    "prefect.task_runs",
    "prefect.extra",
    "prefect.workers",
    "prefect._internal",
)


def runtime() -> Runtime:
    """This process's runtime, with the process-wide patches applied (once per runtime) and
    the log handlers scrubbing."""
    rt = Runtime.current()
    rt.part("pyghmi-shim", patch_pyghmi)
    rt.part("environment-secrets", learn_environment_secrets)
    install_log_scrubbing(*SCRUBBED_LOGGERS)
    survive_broken_pipes(*SCRUBBED_LOGGERS)
    return rt


def survive_broken_pipes(*loggers: str) -> int:
    """Make every rich console behind the handlers of ``loggers`` (and the root logger) go
    quiet on a broken pipe instead of raising ``SystemExit``; returns how many it changed."""
    changed = 0
    for logger in [logging.getLogger(name) for name in loggers] + [logging.getLogger()]:
        for handler in logger.handlers:
            console = getattr(handler, "console", None)
            if console is None or not hasattr(console, "on_broken_pipe") or getattr(console, _QUIET_MARK, False):
                continue
            console.on_broken_pipe = _go_quiet(console)
            setattr(console, _QUIET_MARK, True)
            changed += 1
    return changed


_QUIET_MARK = "_metalflow_quiet_on_broken_pipe"


def _go_quiet(console: Any) -> Callable[[], None]:
    def on_broken_pipe() -> None:
        console.quiet = True  # nobody reads this output any more; the run's API log goes on

    return on_broken_pipe


def learn_environment_secrets() -> bool:
    """Teach the process's scrubber the secrets its environment carries: Prefect's API auth
    string and key, and a password in the Prefect API URL or the inventory URL (userinfo).
    They are loaded by libraries (Prefect's client, the database driver), never wrapped in a
    ``Secret`` by us, and they appear in error texts (a refused connection names its URL)."""
    s = scrubber()
    s.learn_auth_string(os.environ.get("PREFECT_API_AUTH_STRING"))
    s.learn(os.environ.get("PREFECT_API_KEY"))
    for name in ("PREFECT_API_URL", "METALFLOW_INVENTORY_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        s.learn_url(os.environ.get(name))
    return True


# At import too: a flow-run process imports the flows (and so this module) after Prefect set up
# its logging and before any task asks for the runtime, and Prefect logs there already (a
# parameter that fails validation, the run's start).
install_log_scrubbing(*SCRUBBED_LOGGERS)
survive_broken_pipes(*SCRUBBED_LOGGERS)
