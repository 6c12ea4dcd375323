"""What CloudStack hands metalflow: the MAAS settings string, the MAAS API key and the rack
config (``config``), and the Orchestrator extension CloudStack 4.21+ runs as ``<exe> <action>
<payload.json> <timeout>`` (``extension``, console script ``metalflow-cloudstack``; imported
on its own, not from here, to keep its start-up small)."""

from metalflow.integrations.cloudstack.config import (
    ApiKey,
    CabledMac,
    ConfigError,
    MaasSettings,
    Problem,
    Rack,
    RackConfig,
    SwitchConfig,
    load_rack_config,
    normalize_mac,
    parse_api_key,
    parse_settings,
    settings_from_api_key,
)

__all__ = [
    "ApiKey",
    "CabledMac",
    "ConfigError",
    "MaasSettings",
    "Problem",
    "Rack",
    "RackConfig",
    "SwitchConfig",
    "load_rack_config",
    "normalize_mac",
    "parse_api_key",
    "parse_settings",
    "settings_from_api_key",
]
