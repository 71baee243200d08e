# -*- test-case-name: tests.test_proxy -*-
"""
Assemble a running llmproxy: C{makeService(config, reactor)} returns a
L{MultiService} holding the HTTP endpoint and the shared connection pool.
"""

from __future__ import annotations

import re
from typing import Callable, cast

from twisted.application.service import IService, MultiService, Service
from twisted.application.internet import TimerService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from llmproxy.backends import REGISTRY, BackendContext, Registry
from llmproxy.backends.base import IUpstreamReactor
from llmproxy.capture.install import Capture
from llmproxy.config import Config
from llmproxy.exchange.runtime import (
    BackendFactory, Runtime, Upstreams, live_upstreams, session_bounds,
)
from llmproxy.exchange.sessions import Sessions, StoreSessions
from llmproxy.frontends import ProxyApp
from llmproxy.frontends.store import ResponseStore
from llmproxy.state import MEMORY, StateStore
from llmproxy.state.base import Bounds
from llmproxy.state.stores import open_store
from llmproxy.state.sync import FactSync
from llmproxy.metrics import Metrics, answer, metrics_site
from llmproxy.startup import ListenService


#: The listen backlog of an endpoint whose description names none: room
#: for a burst of connects (Twisted's default, 50, overflows at once).
BACKLOG = 1024
#: Per endpoint type taking a backlog: how many positional arguments (after
#: the type) reach it, in Twisted's parsers.
_BACKLOG_POSITION = {"tcp": 3, "tcp6": 2, "ssl": 6, "unix": 3}


def with_backlog(description: str, backlog: int = BACKLOG) -> str:
    """
    The endpoint description C{description} with C{backlog=} added, unless
    it names one or is of a type without a listen backlog.
    """
    kind, _, rest = description.partition(":")
    position = _BACKLOG_POSITION.get(kind)
    if position is None or not rest:
        return description
    fields = re.split(r"(?<!\\):", rest)
    named = [f.partition("=")[0] for f in fields if "=" in f]
    if "backlog" in named or len(fields) - len(named) >= position:
        return description
    return f"{description}:backlog={backlog}"


def build_upstreams(
    config: Config, pool: HTTPConnectionPool, reactor: IUpstreamReactor, clock: IReactorTime,
    registry: Registry = REGISTRY,
) -> Upstreams:
    """
    Backends (each built by its type's factory in C{registry}), key pools
    and circuit breakers for a configuration.  C{reactor} carries the
    network, C{clock} the timers (tests pass a L{Clock}).
    """
    return live_upstreams(config, _backends(pool, reactor, clock, registry), clock)


def _backends(
    pool: HTTPConnectionPool, reactor: IUpstreamReactor, clock: IReactorTime, registry: Registry
) -> BackendFactory:
    context = BackendContext(pool, reactor, clock)
    return lambda backend: registry.build(backend, context)


def make_pool(config: Config, reactor: IReactorTime) -> HTTPConnectionPool:
    """
    The one persistent connection pool every backend shares.  Failover owns
    retries, so the pool does not retry on its own.  Its connections do not
    log: the backends' endpoints see to that
    (L{llmproxy.backends.openai.QuietEndpoint}).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(
        [16] + [b.max_connections for b in config.backends.values()]
    )
    pool.retryAutomatically = False
    return pool


class PoolService(Service):
    """
    Closes the pool's cached connections when the process stops.
    """

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.pool.closeCachedConnections()


#: How often idle conversations are forgotten (seconds).
SESSION_EXPIRY = 60.0


class _Periodic(TimerService):
    """
    A L{TimerService} that may be stopped without having been started (as
    a service built and torn down in a test is).
    """

    def stopService(self) -> Deferred[None] | None:
        if not self.running:
            return None
        return super().stopService()


class ProxyService(MultiService):
    """
    The whole proxy.  After start, C{app} is the web application and
    C{endpoint_service} the listener; L{use_config} swaps the runtime.
    C{registry} must hold the types C{config} was loaded with.  Unless
    C{listener} is given, C{reactor} also serves C{config.listen}, so it must
    provide what that endpoint type needs too (C{IReactorTCP} for C{tcp:},
    which L{IUpstreamReactor} includes); it listens with a backlog of
    L{BACKLOG} unless C{config.listen} names one.
    """

    log = Logger()

    def __init__(
        self, config: Config, reactor: IUpstreamReactor, clock: IReactorTime | None = None,
        listener: Callable[[Site], Service] | None = None, registry: Registry = REGISTRY,
    ) -> None:
        super().__init__()
        clock = clock or reactor
        self.pool = make_pool(config, reactor)
        self._make_backend = _backends(self.pool, reactor, clock, registry)
        self.capture: Capture | None = None
        if config.capture is not None:
            self.capture = Capture(config.capture, clock, config, lambda: self.config)
            self._make_backend = self.capture.backends(self._make_backend)
        self.state = open_store(config.state, reactor, clock)
        IService(self.state).setServiceParent(self)  # started first, stopped last
        self.app = ProxyApp(config, live_upstreams(config, self._make_backend, clock), clock,
                            *shared(config, self.state, clock))
        self.sync: FactSync | None = None
        if config.state.kind != MEMORY:
            def up() -> Upstreams:
                return self.app.runtime.upstreams

            self.sync = FactSync(self.state, clock, lambda: up().pools, lambda: up().breakers,
                                 lambda: up().backends)
        if self.capture is not None:
            self.capture.attach(self.app)
            self.capture.writer.setServiceParent(self)  # stopped last: flushes the rest
        if isinstance(self.app.access, Service):
            self.app.access.setServiceParent(self)  # closes its file
        PoolService(self.pool).setServiceParent(self)
        expiry = _Periodic(SESSION_EXPIRY, self._expire)
        expiry.clock = clock
        expiry.setServiceParent(self)
        if listener is None:
            endpoint = endpoints.serverFromString(reactor, with_backlog(config.listen))
            self.endpoint_service: Service = ListenService(
                endpoint, self.app.site(), config.listen, IReactorCore(reactor, None))
        else:
            self.endpoint_service = listener(self.app.site())
        self.endpoint_service.setServiceParent(self)
        self.metrics = self._metrics(config, reactor, separate=listener is None)

    def _metrics(self, config: Config, reactor: IUpstreamReactor, separate: bool) -> Metrics | None:
        """
        The metrics, when on: C{/metrics} on C{metrics.listen} if it names an
        endpoint (not with C{--workers}: each process would bind it, so each
        serves its own on the main listener), else on the main listener.
        """
        if not config.metrics.enabled:
            return None
        capture = self.capture
        metrics = Metrics(lambda: self.app.runtime, self.app.events, config.metrics.max_models,
                          None if capture is None else lambda: capture.writer.dropped_total,
                          store=self.state.status)
        where = config.metrics.listen
        if where is None or not separate:
            self.app.metrics_page = lambda request: answer(request, metrics)
        else:
            self.metrics_service = ListenService(
                endpoints.serverFromString(reactor, where), metrics_site(metrics), where,
                IReactorCore(reactor, None))
            self.metrics_service.setServiceParent(self)
        return metrics

    def _expire(self) -> Deferred[None] | None:
        """
        Forget idle conversations (in this process), and expired records
        of a shared store.
        """
        self.app.runtime.sessions.expire()
        if self.state.kind == MEMORY:
            return None
        return Deferred.fromCoroutine(self.state.expire(
            self.app.store.bounds, session_bounds(self.config)))

    @property
    def config(self) -> Config:
        """
        The configuration requests run on now.
        """
        return self.app.runtime.config

    def use_config(self, config: Config) -> Runtime:
        """
        Serve the requests to come with C{config} (a reload); the requests
        in flight finish on the runtime they started with.  Backends that
        remain keep their key pools and circuit breakers.
        """
        runtime = self.app.runtime.successor(config, self._make_backend)
        self.app.runtime = runtime
        self.app.store.bounds = Bounds(config.responses_store_size, config.responses_store_ttl)
        if self.sync is not None:
            self.sync.attach()
        return runtime

    def startService(self) -> None:
        super().startService()
        if self.sync is not None:
            self.sync.start()
        c = self.config
        for warning in c.warnings:
            self.log.warn("{note}", note=warning)
        self.log.info(
            "llmproxy on {listen}: backends {backends}, default {default}, auth {auth}",
            listen=c.listen, backends=", ".join(f"{n} ({b.type})" for n, b in c.backends.items()),
            default=c.default_backend,
            auth="on" if c.auth_enabled else "OFF (no proxy keys)" if not c.disable_auth
            else "DISABLED by --disable-auth",
        )
        if c.state.kind != MEMORY:
            self.log.info("shared state: {kind} at {where}", kind=c.state.kind,
                          where=self.state.status().where)


def shared(
    config: Config, state: StateStore, clock: IReactorTime
) -> tuple[ResponseStore, Sessions | None]:
    """
    The Responses store and the conversations in C{state}: conversations
    stay in this process's own memory with the memory store.
    """
    store = ResponseStore(clock, config.responses_store_size, config.responses_store_ttl, state)
    if state.kind == MEMORY:
        return store, None
    return store, StoreSessions(state, session_bounds(config))


def makeService(config: Config, reactor: IUpstreamReactor | None = None) -> ProxyService:
    """
    Build the service tree for C{config}.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = cast(IUpstreamReactor, _reactor)
    return ProxyService(config, reactor)
