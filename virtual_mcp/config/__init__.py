"""Declarative configuration: the `servers.d/` schema, its loader and secret references."""

from virtual_mcp.config.loader import LoadedConfig, load_config_dir
from virtual_mcp.config.settings import GatewaySettings

__all__ = ["GatewaySettings", "LoadedConfig", "load_config_dir"]
