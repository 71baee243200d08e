"""
Backends: the connectors to the upstreams llmproxy forwards to, their key
pools and health.

L{REGISTRY} is the table of backend types, one line each, in the order the
config loader sees them (the first is the type of a backend that names
none).  A new type is one module declaring a L{BackendType} plus one line
here.
"""

from llmproxy.backends import codex, hybrid, mock, openai
from llmproxy.backends.registry import BackendContext, BackendType, Factory, Registry

REGISTRY = Registry(
    openai.OPENAI,
    openai.OPENAI_RESPONSES,
    mock.MOCK,
    codex.OPENAI_CODEX,
    hybrid.HYBRID_TYPE,
)

__all__ = ["REGISTRY", "BackendContext", "BackendType", "Factory", "Registry"]
