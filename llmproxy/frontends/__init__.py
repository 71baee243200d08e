"""
The HTTP surface: Chat Completions, Responses, models, status, health.
"""

from llmproxy.frontends.app import ProxyApp
from llmproxy.frontends.site import ProxySite

__all__ = ["ProxyApp", "ProxySite"]
