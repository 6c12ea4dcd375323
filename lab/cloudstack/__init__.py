"""A CloudStack 4.21/4.22 management server, as far as ONE Orchestrator extension can tell.

The extension under test is only an executable path: this package runs it as CloudStack's
``ExternalPathPayloadProvisioner`` does (argv, Gson payload file, wait, stderr merged, kill at
the timeout) at the moments CloudStack's VM orchestration does (prepare/create retries and
cleanup stops, expunge rules, NIC hot-plug, custom actions, status pings). Written from the
project's reference notes on CloudStack's Java sources, never from ``integrations``.

    cs = CloudStack(state_dir, Config(Extension("maas", "/path/to/maas.py")))
    cs.add_host("host1", {"endpoint": "http://10.0.0.5:5240/MAAS"})
    cs.add_network("guest", vlan=100)
    cs.add_template("ubuntu", {"os": "ubuntu", "distro_series": "jammy"})
    result = cs.deploy("web-1", template="ubuntu", networks=["guest"])
"""

from metalflow.lab.cloudstack.merge import merge_patch
from metalflow.lab.cloudstack.model import (
    ADMIN_CALLER,
    POWER_OFF,
    POWER_ON,
    POWER_UNKNOWN,
    SYSTEM_CALLER,
    VM,
    Config,
    CustomAction,
    Extension,
    Host,
    Network,
    Nic,
    Parameter,
    Template,
)
from metalflow.lab.cloudstack.orchestrator import CloudStack, InputError, Result
from metalflow.lab.cloudstack.process import Call

__all__ = [
    "ADMIN_CALLER",
    "POWER_OFF",
    "POWER_ON",
    "POWER_UNKNOWN",
    "SYSTEM_CALLER",
    "VM",
    "Call",
    "CloudStack",
    "Config",
    "CustomAction",
    "Extension",
    "Host",
    "InputError",
    "Network",
    "Nic",
    "Parameter",
    "Result",
    "Template",
    "merge_patch",
]
