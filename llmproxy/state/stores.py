# -*- test-case-name: tests.test_state_contract -*-
"""
The store a configuration names, built: one line per kind in L{BUILDERS}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, cast

from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

from llmproxy.backends.base import IUpstreamReactor
from llmproxy.config.state import StateConfig
from llmproxy.state.base import MEMORY, REDIS, SQLITE, StateStore
from llmproxy.state.memory import MemoryState
from llmproxy.state.redis import open_redis
from llmproxy.state.sqlite import SQLiteState


@dataclass(frozen=True)
class StoreContext:
    """
    What a store is built with: the reactor (network, threads) and the
    clock its timestamps and timers follow.
    """

    reactor: IUpstreamReactor
    clock: IReactorTime


#: Builds the store of one C{state:} setting.
Builder = Callable[[StateConfig, StoreContext], StateStore]


def _memory(config: StateConfig, context: StoreContext) -> StateStore:
    return MemoryState(context.clock)


def _sqlite(config: StateConfig, context: StoreContext) -> StateStore:
    return SQLiteState(config.path, cast(IReactorFromThreads, context.reactor), context.clock,
                       timeout=config.timeout, poll=config.poll)


def _redis(config: StateConfig, context: StoreContext) -> StateStore:
    return open_redis(config, context.reactor, context.clock)


#: Each store kind's builder.
BUILDERS: Mapping[str, Builder] = {
    MEMORY: _memory,
    SQLITE: _sqlite,
    REDIS: _redis,
}


def open_store(config: StateConfig, reactor: IUpstreamReactor, clock: IReactorTime) -> StateStore:
    """
    The (not yet started) store C{config} names.

    @raise KeyError: a kind no builder serves.
    """
    return BUILDERS[config.kind](config, StoreContext(reactor, clock))


__all__ = ["BUILDERS", "Builder", "StoreContext", "open_store"]
