# -*- test-case-name: tests.test_state_redis,tests.test_state_redis_url -*-
"""
The connection to one Redis server, over txredisapi: where it is (a
C{redis://} or C{rediss://} URL), a small pool for commands that never
waits longer than a bound, and one subscriber connection whose state says
whether the server is reachable.

txredisapi reconnects by itself (with a capped backoff), but a command sent
while the server is down waits for a connection for ever; every command here
is bounded by C{timeout} on the injected clock and fails with
L{StateUnavailable} instead (at once while the server is known to be away).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import txredisapi
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError as DeferredTimeout,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from llmproxy.state.base import StateUnavailable

#: Default port of a Redis server.
PORT = 6379


@dataclass(frozen=True)
class RedisAddress:
    """
    Where a Redis server is, parsed once from C{state:}.

    @ivar password: never shown: not in C{repr}, not in L{display}.
    @ivar ca: a PEM file of the CA that signed the server's certificate
        (C{rediss://} only); the platform's trust store when L{None}.
    """

    host: str
    port: int = PORT
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None

    @property
    def display(self) -> str:
        """
        The URL without credentials, for status and logs.
        """
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_redis_url(url: str, env: Mapping[str, str] | None = None) -> RedisAddress:
    """
    Read C{redis://[[user]:password@]host[:port][/db]} (C{rediss://} for
    TLS, verified against the platform's trust store, or against the CA in
    C{?ssl_ca_certs=/path/ca.pem}).  The password comes from the URL, else
    from C{REDIS_PASSWORD} in C{env}.

    @raise ValueError: naming what is wrong (never echoing a password).
    """
    env = os.environ if env is None else env
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("expected redis:// or rediss://")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.fragment or set(query) - {"ssl_ca_certs"}:
        raise ValueError("a Redis URL takes no fragment and no query but ssl_ca_certs")
    ca = query.get("ssl_ca_certs") or None
    if ca is not None and parts.scheme != "rediss":
        raise ValueError("ssl_ca_certs needs rediss://")
    try:
        port = parts.port or PORT
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError("a Redis URL needs a host")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"the database must be a number, got {path!r}")
    password = unquote(parts.password) if parts.password else env.get("REDIS_PASSWORD") or None
    username = unquote(parts.username) if parts.username else None
    return RedisAddress(
        host=parts.hostname, port=port, db=int(path or 0), tls=parts.scheme == "rediss",
        username=username, password=password, ca=ca)


class _Subscriber(txredisapi.SubscriberProtocol):
    """
    The subscriber connection: subscribes (again) each time it connects and
    tells its link about messages, connections and losses.
    """

    link: RedisLink

    def connectionMade(self) -> Any:
        d = super().connectionMade()
        self.whenConnected().addCallback(lambda _: self.link._subscribed(self))
        return d

    def connectionLost(self, why: Any) -> None:
        super().connectionLost(why)
        self.link._lost(why.getErrorMessage())

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.link.on_message(channel, message)


@implementer(IStreamClientEndpoint)
class _Watched:
    """
    An endpoint that tells the link when a connection attempt fails (the
    reconnecting itself is txredisapi's, and silent).
    """

    def __init__(self, endpoint: IStreamClientEndpoint, link: RedisLink) -> None:
        self.endpoint = endpoint
        self.link = link

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(reason: Failure) -> Failure:
            if not reason.check(CancelledError):
                self.link._down(f"could not connect: {reason.getErrorMessage()}")
            return reason

        return self.endpoint.connect(factory).addErrback(failed)


class _Factory(txredisapi.RedisFactory):
    """
    txredisapi's factory, except that a failed handshake (AUTH, SELECT, a
    TLS refusal, or the server dying in the middle of it) does not stop the
    reconnecting for good: it is reported to the link and retried with the
    backoff, so an outage at the wrong moment is not final.
    """

    link: RedisLink

    def stopTrying(self) -> Any:
        return succeed(None)

    def connectionError(self, why: str) -> None:
        self.link._down(why.removeprefix("Redis error: "))


def _factory(link: RedisLink, size: int, max_delay: float, protocol: Any) -> _Factory:
    address = link.address
    factory = _Factory(
        address.display, address.db or None, size, isLazy=True, password=address.password,
        username=address.username, replyTimeout=link.timeout, convertNumbers=False)
    factory.link, factory.protocol = link, protocol
    factory.initialDelay = min(factory.initialDelay, max_delay)
    factory.maxDelay = max_delay
    return factory


class RedisLink:
    """
    Commands and one subscription to one Redis server, with a bound on
    every wait.

    @ivar available: the subscriber connection is up (and subscribed) and
        the last command was answered; false as soon as either fails, true
        again when both work (then C{on_back} runs: the owner re-reads what
        it may have missed).
    @ivar error: the last failure, for status (no credentials in it).
    @ivar since: when C{available} last changed (the clock's seconds).
    """

    log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any,
        clock: IReactorTime,
        channels: tuple[str, ...],
        on_message: Callable[[str, str], None],
        on_back: Callable[[], None],
        timeout: float = 1.0,
        max_delay: float = 2.0,
        pool_size: int = 4,
    ) -> None:
        self.address = address
        self.clock = clock
        self.channels = channels
        self.on_message = on_message
        self.on_back = on_back
        self.timeout = timeout
        self.available = False
        self.error: str | None = "connecting"
        self.since = clock.seconds()
        self._was_up = False
        self._listening = False
        self._pool = _factory(self, pool_size, max_delay, txredisapi.RedisProtocol)
        self._subscriber = _factory(
            self, 1, max_delay, type("Subscriber", (_Subscriber,), {"link": self}))
        self._pool.startConnecting(self._endpoint(reactor))
        self._subscriber.startConnecting(self._endpoint(reactor))

    def _endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        address = self.address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            reactor, address.host, address.port, timeout=self.timeout)
        if address.tls:
            trust = Certificate.loadPEM(Path(address.ca).read_bytes()) if address.ca else None
            endpoint = wrapClientTLS(optionsForClientTLS(address.host, trustRoot=trust), endpoint)
        return _Watched(endpoint, self)

    async def call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        """
        Run one txredisapi command (C{"get"}, C{"eval"}, ...) within
        C{timeout} seconds; at once while the server is known to be away.

        @raise StateUnavailable: not answered in time, the connection
            lost, or an error reply (a server loading its data, out of
            memory, read-only: the status shows which).
        """
        if not self._listening and self.error != "connecting":
            raise StateUnavailable()
        d: Deferred[Any] = getattr(self._pool.handler, command)(*args, **kwargs)
        d.addTimeout(self.timeout, self.clock)
        try:
            result = await d
        except CancelledError:
            raise
        except (DeferredTimeout, txredisapi.RedisError) as e:
            if self.available or self.error == "connecting":  # else: keep the first cause
                self._down(f"{command}: {_describe(e)}")
            raise StateUnavailable() from e
        if not self.available and self._listening:
            self._up()
        return result

    async def disconnect(self) -> None:
        """
        Close every connection and stop reconnecting.
        """
        await self._pool.disconnect()
        await self._subscriber.disconnect()

    def _subscribed(self, protocol: Any) -> None:
        def listening(_: object) -> None:
            self._listening = True
            self._up()

        protocol.subscribe(list(self.channels)).addCallbacks(
            listening, lambda f: self._down(f"subscribe: {f.getErrorMessage()}"))

    def _up(self) -> None:
        if self.available:
            return
        if self._was_up:
            self.log.info("state store {url} is back", url=self.address.display)
        self.available, self.error, self._was_up = True, None, True
        self.since = self.clock.seconds()
        self.on_back()

    def _lost(self, why: str) -> None:
        self._listening = False
        if not self._subscriber.disconnectCalled:
            self._down(f"lost: {why}")

    def _down(self, why: str) -> None:
        if self.available or self.error == "connecting":
            self.log.warn("state store {url} unavailable ({why}); serving from local state",
                          url=self.address.display, why=why)
        if self.available:
            self.since = self.clock.seconds()
        self.available, self.error = False, why


def _describe(e: BaseException) -> str:
    if isinstance(e, DeferredTimeout):
        return "no answer in time"
    return str(e) or type(e).__name__


__all__ = ["PORT", "RedisAddress", "RedisLink", "parse_redis_url"]
