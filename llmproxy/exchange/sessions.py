# -*- test-case-name: tests.test_conversation -*-
"""
Per-conversation state (planning phase, edit tuning), behind one small
interface: get, update atomically, expire.  L{MemorySessions} keeps it in
this process, bounded by count and idle age; a shared store (SQLite,
Redis) is another implementation of L{Sessions}, not a rewrite.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Protocol

from twisted.internet.interfaces import IReactorTime

from llmproxy.state.base import Bounds, Change, SessionState, StateStore


class Sessions(Protocol):
    """
    Where conversation state lives.
    """

    async def get(self, key: str) -> SessionState:
        """
        The state of conversation C{key} (a fresh one when unknown).
        """

    async def update(self, key: str, change: Change) -> SessionState:
        """
        Apply C{change} to C{key}'s state atomically (no other update of
        C{key} interleaves) and return the new state.
        """

    def expire(self) -> None:
        """
        Forget the conversations idle too long (called periodically).
        """


class MemorySessions:
    """
    L{Sessions} in this process: at most C{max_items} conversations (the
    least recently updated go first), each forgotten after C{max_idle}
    seconds without an update.
    """

    def __init__(
        self, clock: IReactorTime, max_items: int = 10_000, max_idle: float = 86_400.0
    ) -> None:
        self.clock = clock
        self.max_items = max_items
        self.max_idle = max_idle
        self._items: OrderedDict[str, SessionState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> SessionState:
        state = self._items.get(key)
        if state is None or self._idle(state):
            return SessionState()
        return state

    async def update(self, key: str, change: Change) -> SessionState:
        old = await self.get(key)
        new = replace(change(old), last_seen=self.clock.seconds())
        self._items[key] = new
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return new

    def expire(self) -> None:
        while self._items:
            key, state = next(iter(self._items.items()))
            if not self._idle(state):
                break
            del self._items[key]

    def _idle(self, state: SessionState) -> bool:
        return self.clock.seconds() - state.last_seen > self.max_idle


class StoreSessions:
    """
    L{Sessions} in a shared store (L{llmproxy.state}): every process
    serving the conversation sees one state.  A store that does not answer
    raises L{llmproxy.state.StateUnavailable} (a 503 for a request that
    needs the state first).

    @ivar bounds: the conversations kept and their idle age (a reload sets
        new ones).
    """

    def __init__(self, state: StateStore, bounds: Bounds) -> None:
        self.state = state
        self.bounds = bounds

    async def get(self, key: str) -> SessionState:
        return await self.state.get_session(key, self.bounds)

    async def update(self, key: str, change: Change) -> SessionState:
        return await self.state.update_session(key, change, self.bounds)

    def expire(self) -> None:
        """
        Nothing: the service expires the store (responses and
        conversations at once).
        """


__all__ = ["Change", "MemorySessions", "SessionState", "Sessions", "StoreSessions"]
