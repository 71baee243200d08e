"""
The HTTP surface: Chat Completions, Responses, models, status, health.
"""

from llmproxy.frontends.app import ProxyApp, ProxySite

__all__ = ["ProxyApp", "ProxySite"]
