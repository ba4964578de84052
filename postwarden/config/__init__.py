"""One YAML file, validated up front into typed settings."""

from postwarden.config.errors import ConfigError, ConfigProblem
from postwarden.config.load import config_path, load_config, load_config_text
from postwarden.config.schema import Settings

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "Settings",
    "config_path",
    "load_config",
    "load_config_text",
]
