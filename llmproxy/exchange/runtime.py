# -*- test-case-name: tests.test_runtime -*-
"""
What a request runs on: the configuration, its router and the live
upstreams, held in one L{Runtime}.

The application reads its runtime once per request, and the request keeps
it to the end: swapping in a new runtime (a reload) never disturbs a
request in flight.  L{Runtime.successor} builds the runtime of a new
configuration, carrying over what the running one learnt about the
backends that remain, by name: their key pools (cooldowns, rotation) and
their circuit breakers (one per failing model).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Mapping

from twisted.internet.interfaces import IReactorTime

from llmproxy.adapt.pipeline import Pipeline
from llmproxy.adapt.steps import default_pipeline
from llmproxy.backends.base import Backend
from llmproxy.backends.health import ModelBreakers
from llmproxy.backends.keypool import KeyPool
from llmproxy.config import BackendConfig, Config, FailureConfig
from llmproxy.exchange.sessions import MemorySessions, Sessions, StoreSessions
from llmproxy.state.base import Bounds
from llmproxy.routing.resolve import Router

#: Builds the backend instance of one configured backend.
BackendFactory = Callable[[BackendConfig], Backend]


@dataclass
class Upstreams:
    """
    The backend instances with their key pools and circuit breakers (by
    backend name, then by model).
    """

    backends: Mapping[str, Backend]
    pools: Mapping[str, KeyPool]
    breakers: Mapping[str, ModelBreakers]


@dataclass(frozen=True)
class Runtime:
    """
    One configuration, live: what every request reads.

    @ivar proxy_keys: the keys clients may present, encoded once.
    @ivar pipeline: the adapt steps every target's body goes through.
    @ivar jitter: draws in [0, 1) for retry backoffs (tests pass their own).
    @ivar sessions: per-conversation state; a successor keeps it.
    """

    config: Config
    router: Router
    upstreams: Upstreams
    clock: IReactorTime
    proxy_keys: tuple[bytes, ...]
    pipeline: Pipeline
    sessions: Sessions
    jitter: Callable[[], float] = random.random

    @classmethod
    def of(
        cls, config: Config, upstreams: Upstreams, clock: IReactorTime,
        sessions: Sessions | None = None,
    ) -> Runtime:
        """
        The runtime of C{config} over C{upstreams}, with C{sessions} (by
        default a new L{MemorySessions}).
        """
        return cls(config, Router(config), upstreams, clock,
                   tuple(k.encode("utf-8") for k in config.proxy_keys),
                   default_pipeline(config),
                   sessions if sessions is not None else MemorySessions(
                       clock, config.session.max_conversations, config.session.max_idle))

    def successor(self, config: Config, make_backend: BackendFactory) -> Runtime:
        """
        The runtime of a new configuration, for the requests to come; this
        one keeps serving the requests that started on it.
        """
        upstreams = live_upstreams(config, make_backend, self.clock, previous=self)
        if isinstance(self.sessions, MemorySessions):  # kept, with the new bounds
            self.sessions.max_items = config.session.max_conversations
            self.sessions.max_idle = config.session.max_idle
        if isinstance(self.sessions, StoreSessions):
            self.sessions.bounds = session_bounds(config)
        return replace(Runtime.of(config, upstreams, self.clock, self.sessions),
                       jitter=self.jitter)


def session_bounds(config: Config) -> Bounds:
    """
    The conversations C{config} keeps, for a store.
    """
    return Bounds(config.session.max_conversations, config.session.max_idle)


def live_upstreams(
    config: Config, make_backend: BackendFactory, clock: IReactorTime,
    previous: Runtime | None = None,
) -> Upstreams:
    """
    Backends, key pools and circuit breakers for a configuration.  With a
    C{previous} runtime, a backend that remains keeps its instance when its
    configuration is unchanged, its key pool when its keys and cooldowns
    are (otherwise the new pool takes over the state of the keys both
    have), and its circuit breaker.
    """
    old = previous.upstreams if previous is not None else Upstreams({}, {}, {})
    cooldowns_kept = previous is not None and _cooldowns(previous.config.failure) \
        == _cooldowns(config.failure)
    backends: dict[str, Backend] = {}
    pools: dict[str, KeyPool] = {}
    breakers: dict[str, ModelBreakers] = {}
    for name, backend in config.backends.items():
        kept = old.backends.get(name)
        backends[name] = kept if kept is not None and kept.config == backend \
            else make_backend(backend)
        pools[name] = _pool(config, name, clock, old.pools.get(name), cooldowns_kept)
        breakers[name] = _breakers(config.failure, name, clock, old.breakers.get(name))
    return Upstreams(backends, pools, breakers)


def _cooldowns(f: FailureConfig) -> tuple[float, ...]:
    return (f.default_cooldown, f.max_cooldown, f.auth_cooldown, f.quota_cooldown)


def _pool(
    config: Config, name: str, clock: IReactorTime, old: KeyPool | None, cooldowns_kept: bool
) -> KeyPool:
    keys = config.backends[name].keys
    if old is not None and cooldowns_kept and old.keys == tuple(keys):
        return old
    f = config.failure
    pool = KeyPool(name, keys, clock, default_cooldown=f.default_cooldown,
                   max_cooldown=f.max_cooldown, auth_cooldown=f.auth_cooldown,
                   quota_cooldown=f.quota_cooldown)
    if old is not None:
        pool.inherit(old)
    return pool


def _breakers(
    f: FailureConfig, name: str, clock: IReactorTime, old: ModelBreakers | None
) -> ModelBreakers:
    if old is None:
        return ModelBreakers(clock, threshold=f.circuit_threshold, cooldown=f.circuit_cooldown,
                             probe_interval=f.circuit_probe_interval, name=name)
    old.retune(f.circuit_threshold, f.circuit_cooldown, f.circuit_probe_interval)
    return old


__all__ = ["BackendFactory", "Runtime", "Upstreams", "live_upstreams", "session_bounds"]
