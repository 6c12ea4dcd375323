"""What CloudStack hands metalflow: the MAAS settings string, the MAAS API key and the rack
config (``config``). The CloudStack extension entry point (``<exe> <action> <payload.json>
<timeout>``) will live beside it in its own module."""
from integrations.cloudstack.config import (
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
