"""
The HTTP frontends: Chat Completions, Responses, models, health.
"""

from llmproxy.frontends._app import ProxyApp, ProxySite
from llmproxy.frontends._upstreams import Upstreams

__all__ = ["ProxyApp", "ProxySite", "Upstreams"]
