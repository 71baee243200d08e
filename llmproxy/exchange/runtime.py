"""
The live upstreams a request can use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from llmproxy.backends.base import Backend
from llmproxy.backends.health import CircuitBreaker
from llmproxy.backends.keypool import KeyPool


@dataclass
class Upstreams:
    """
    The backend instances with their key pools and circuit breakers.
    """

    backends: Mapping[str, Backend]
    pools: Mapping[str, KeyPool]
    breakers: Mapping[str, CircuitBreaker]
