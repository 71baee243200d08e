"""
Configuration: YAML, environment and command line, parsed once into frozen,
typed objects that every other layer reads.

A leaf: nothing here imports the rest of llmproxy.  The backend types are
not known here; the loader is given their schemas (L{BackendKind}s) by the
backend registry.

  - L{model}: the frozen types;
  - L{load}: the reader of YAML, environment and command line (with
    L{backends} for the C{backends} section and L{reader} for typed,
    error-naming access to the YAML);
  - L{listen}: the listening address and the checks it implies.
"""

from llmproxy.config.listen import TCPAddress, check_exposure, is_loopback_endpoint, parse_tcp
from llmproxy.config.load import build_config, load_config, load_yaml
from llmproxy.config.error import ConfigError
from llmproxy.config.model import (
    DEFAULT_LISTEN,
    OPENAI_BACKEND,
    AliasRule,
    ApiKey,
    BackendConfig,
    BackendKind,
    BackendOption,
    Config,
    FailoverRoute,
    FailureConfig,
    Overrides,
    compile_alias,
    parse_alias_flag,
)
from llmproxy.config.reader import expand_env

__all__ = [
    "DEFAULT_LISTEN", "OPENAI_BACKEND", "AliasRule", "ApiKey", "BackendConfig", "BackendKind",
    "BackendOption", "Config", "ConfigError", "FailoverRoute", "FailureConfig", "Overrides",
    "TCPAddress", "build_config", "check_exposure", "compile_alias", "expand_env",
    "is_loopback_endpoint", "load_config", "load_yaml", "parse_alias_flag", "parse_tcp",
]
