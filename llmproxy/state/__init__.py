"""
Shared state (issue 16): the interface (L{llmproxy.state.base}) and its
implementations, one per C{state:} kind: C{memory} (one process),
C{sqlite} (one host), C{redis} (many hosts).
"""

from llmproxy.state.base import (
    ACCOUNT, CIRCUIT, KEY_COOLED, MEMORY, REDIS, SQLITE, Bounds, Change, Fact, FactCallback,
    SessionState, StateStore, StateUnavailable, StoredResponse, StoreStatus,
)
from llmproxy.state.memory import MemoryHub, MemoryState

__all__ = ["ACCOUNT", "Bounds", "CIRCUIT", "Change", "Fact", "FactCallback", "KEY_COOLED",
           "MEMORY", "MemoryHub", "MemoryState", "REDIS", "SQLITE", "SessionState",
           "StateStore", "StateUnavailable", "StoreStatus", "StoredResponse"]
