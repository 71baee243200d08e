"""
Configuration: YAML, environment and command line, parsed once into frozen,
typed objects that every other layer reads.
"""

from llmproxy.config.load import (
    DEFAULT_LISTEN,
    DEFAULT_OPENAI_URL,
    BackendConfig,
    Config,
    ConfigError,
    FailoverRoute,
    FailureConfig,
    Overrides,
    build_config,
    check_exposure,
    expand_env,
    is_loopback_endpoint,
    load_config,
    load_yaml,
)

__all__ = [
    "DEFAULT_LISTEN", "DEFAULT_OPENAI_URL", "BackendConfig", "Config", "ConfigError",
    "FailoverRoute", "FailureConfig", "Overrides", "build_config", "check_exposure",
    "expand_env", "is_loopback_endpoint", "load_config", "load_yaml",
]
