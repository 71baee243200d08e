# -*- test-case-name: tests.test_state_contract -*-
"""
The in-process store: what one process needs (the default), at the cost of
a few dictionary operations.

Several L{MemoryState}s made on one L{MemoryHub} share it as processes
share a real store (the tests use that); a process has one, so publishing
a fact costs nothing.  Never down.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, TypeVar

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from llmproxy.state.base import (
    MEMORY, Bounds, Change, Fact, FactCallback, SessionState, StoredResponse, StoreStatus,
)


class MemoryHub:
    """
    The shared part: records, conversations, current facts, and the
    subscribers of every L{MemoryState} on it.
    """

    def __init__(self) -> None:
        self.responses: OrderedDict[str, StoredResponse] = OrderedDict()
        self.sessions: OrderedDict[str, SessionState] = OrderedDict()
        self.facts: dict[tuple[str, str, str], Fact] = {}
        self.subscribers: list[tuple[str, FactCallback]] = []


class MemoryState(Service):
    """
    L{llmproxy.state.base.StateStore} in this process.
    """

    kind = MEMORY

    def __init__(self, clock: IReactorTime, hub: MemoryHub | None = None) -> None:
        self.clock = clock
        self.hub = hub if hub is not None else MemoryHub()
        self.origin = uuid.uuid4().hex
        self._since = clock.seconds()

    # responses

    async def get_response(self, response_id: str, bounds: Bounds) -> StoredResponse | None:
        now = self.clock.seconds()
        _expire(self.hub.responses, lambda r: now - r.created > bounds.max_age)
        return self.hub.responses.get(response_id)

    async def put_response(self, response_id: str, record: StoredResponse,
                           bounds: Bounds) -> None:
        items = self.hub.responses
        if bounds.max_items <= 0:
            return
        items[response_id] = record
        items.move_to_end(response_id)
        while len(items) > bounds.max_items:
            items.popitem(last=False)

    # conversations

    async def get_session(self, key: str, bounds: Bounds) -> SessionState:
        state = self.hub.sessions.get(key)
        if state is None or self.clock.seconds() - state.last_seen > bounds.max_age:
            return SessionState()
        return state

    async def update_session(self, key: str, change: Change, bounds: Bounds) -> SessionState:
        old = await self.get_session(key, bounds)
        new = replace(change(old), last_seen=self.clock.seconds())
        items = self.hub.sessions
        items[key] = new
        items.move_to_end(key)
        while len(items) > bounds.max_items:
            items.popitem(last=False)
        return new

    async def expire(self, responses: Bounds, sessions: Bounds) -> None:
        now = self.clock.seconds()
        _expire(self.hub.responses, lambda r: now - r.created > responses.max_age)
        _expire(self.hub.sessions, lambda s: now - s.last_seen > sessions.max_age)
        for identity, fact in list(self.hub.facts.items()):
            if fact.until <= now:
                del self.hub.facts[identity]

    # facts

    def publish(self, fact: Fact) -> None:
        fact = replace(fact, origin=self.origin)
        self.hub.facts[fact.identity] = fact
        for origin, callback in list(self.hub.subscribers):
            if origin != self.origin:
                callback(fact)

    async def facts(self) -> list[Fact]:
        now = self.clock.seconds()
        return [f for f in self.hub.facts.values() if f.until > now]

    def subscribe(self, callback: FactCallback) -> Callable[[], None]:
        entry = (self.origin, callback)
        self.hub.subscribers.append(entry)

        def unsubscribe() -> None:
            if entry in self.hub.subscribers:
                self.hub.subscribers.remove(entry)

        return unsubscribe

    def status(self) -> StoreStatus:
        return StoreStatus(MEMORY, "this process", True, self._since)


_T = TypeVar("_T")


def _expire(items: OrderedDict[str, _T], old: Callable[[_T], bool]) -> None:
    """
    Drop the oldest items of C{items} while C{old} says so (they are kept
    in the order they were written).
    """
    while items:
        key, value = next(iter(items.items()))
        if not old(value):
            break
        del items[key]


__all__ = ["MemoryHub", "MemoryState"]
