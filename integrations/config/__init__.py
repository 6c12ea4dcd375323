"""What an operator hands metalflow, parsed once at the edge: CloudStack's MAAS settings
string and the MAAS API key (``maas``), and the rack config (``rack``).

Both become frozen dataclasses here; nothing downstream re-parses strings or passes raw dicts.
Errors name the offending part (a key, or a JSON path such as ``racks[0].hosts[3].port``) and
the fix, list every problem at once, and never contain a secret: values of secret fields are
never echoed, and the messages are scrubbed of them as a second line of defence.

A leaf: the MAAS client, the inventory, the switches' callers and the CloudStack extension
import it; it imports only ``integrations.common`` (and, when a rack config is parsed, the
switches' dialect registry for the port grammars).
"""

from metalflow.integrations.config.addresses import address_key, valid_address
from metalflow.integrations.config.maas import (
    DEFAULT_HTTP_PORT,
    DEFAULT_HTTPS_PORT,
    SETTINGS_NAME,
    ApiKey,
    MaasSettings,
    parse_api_key,
    parse_settings,
    settings_from_api_key,
)
from metalflow.integrations.config.problems import ConfigError, Problem
from metalflow.integrations.config.rack import (
    DEFAULT_SSH_PORT,
    CabledMac,
    Rack,
    RackConfig,
    SwitchConfig,
    load_rack_config,
)

__all__ = [
    "DEFAULT_HTTPS_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_SSH_PORT",
    "SETTINGS_NAME",
    "ApiKey",
    "CabledMac",
    "ConfigError",
    "MaasSettings",
    "Problem",
    "Rack",
    "RackConfig",
    "SwitchConfig",
    "address_key",
    "load_rack_config",
    "parse_api_key",
    "parse_settings",
    "settings_from_api_key",
    "valid_address",
]
