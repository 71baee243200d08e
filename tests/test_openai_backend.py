"""
The HTTP backend's connections: one endpoint per upstream origin, built
with the backend's connect timeout (in TLS for C{https}), and no log line
per upstream connection.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, readBody
from twisted.web.error import SchemeNotSupported
from zope.interface import implementer

from llmproxy.backends.openai import BytesProducer, EndpointCache, OpenAIBackend, QuietEndpoint
from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.service import make_pool
from llmproxy.testing import listen_fake
from tests.harness import base_config

#: What L{Factory} logs around each connection when it is C{noisy}.
STARTING = "Starting factory {factory!r}"
STOPPING = "Stopping factory {factory!r}"


def _uri(url: bytes) -> URI:
    return URI.fromBytes(url)


def _connect(reactor: MemoryReactorClock, endpoint: IStreamClientEndpoint) -> tuple[Any, ...]:
    """
    Connect C{endpoint} on a memory reactor; the TCP connection it asked
    for (host, port, factory, timeout, bind address).
    """
    endpoint.connect(Factory.forProtocol(Protocol))
    [attempt] = reactor.tcpClients
    return attempt


class EndpointCacheTests(SynchronousTestCase):
    def test_one_endpoint_per_origin(self) -> None:
        cache = EndpointCache(MemoryReactorClock(), 10.0)
        chat = cache.endpointForURI(_uri(b"http://up.example:8080/v1/chat/completions"))
        self.assertIs(cache.endpointForURI(_uri(b"http://up.example:8080/v1/models")), chat)
        self.assertIsNot(cache.endpointForURI(_uri(b"http://up.example:8081/v1/models")), chat)
        self.assertIsNot(cache.endpointForURI(_uri(b"http://other.example:8080/v1")), chat)
        self.assertIsNot(cache.endpointForURI(_uri(b"https://up.example:8080/v1")), chat)

    def test_connects_with_the_connect_timeout(self) -> None:
        memory = MemoryReactorClock()
        endpoint = EndpointCache(memory, 7.5).endpointForURI(_uri(b"http://127.0.0.1:8080/v1"))
        host, port, _, timeout, bind = _connect(memory, endpoint)
        self.assertEqual((host, port, timeout, bind), ("127.0.0.1", 8080, 7.5, None))

    def test_http_is_plain(self) -> None:
        memory = MemoryReactorClock()
        endpoint = EndpointCache(memory, 1.0).endpointForURI(_uri(b"http://up.example/v1"))
        _, port, factory, _, _ = _connect(memory, endpoint)
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port)).makeConnection(transport)
        self.assertEqual((port, transport.value()), (80, b""))

    def test_https_is_tls_to_the_host_checked_like_a_browser(self) -> None:
        """
        An C{https} endpoint opens with a TLS ClientHello naming the host
        (SNI), from the browser-like policy, which checks certificates.
        """
        memory = MemoryReactorClock()
        cache = EndpointCache(memory, 1.0)
        self.assertIsInstance(cache.tls, BrowserLikePolicyForHTTPS)
        endpoint = cache.endpointForURI(_uri(b"https://api.example.com/v1"))
        _, port, factory, _, _ = _connect(memory, endpoint)
        transport = StringTransport()
        factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port)).makeConnection(transport)
        hello = transport.value()
        self.assertEqual(port, 443)
        self.assertEqual(hello[:1], b"\x16")  # a TLS handshake record
        self.assertIn(b"api.example.com", hello)

    def test_tls_creator_per_origin(self) -> None:
        asked = []

        class Policy:
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                asked.append((hostname, port))
                return BrowserLikePolicyForHTTPS().creatorForNetloc(hostname, port)

        cache = EndpointCache(MemoryReactorClock(), 1.0, tls=cast(Any, Policy()))
        for _ in range(3):
            cache.endpointForURI(_uri(b"https://api.example.com/v1/responses"))
        cache.endpointForURI(_uri(b"https://api.example.com:8443/v1/responses"))
        self.assertEqual(asked, [(b"api.example.com", 443), (b"api.example.com", 8443)])

    def test_unsupported_scheme_fails_the_request(self) -> None:
        memory = MemoryReactorClock()
        agent = Agent.usingEndpointFactory(memory, EndpointCache(memory, 1.0))
        self.failureResultOf(agent.request(b"GET", b"ftp://up.example/v1"), SchemeNotSupported)
        self.assertEqual(memory.tcpClients, [])


@implementer(IStreamClientEndpoint)
class _Recording:
    def __init__(self) -> None:
        self.factories: list[IProtocolFactory] = []
        self.result: Deferred[IProtocol] = succeed(Protocol())

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.factories.append(protocolFactory)
        return self.result


class QuietEndpointTests(SynchronousTestCase):
    def test_silences_the_factory_and_connects_it(self) -> None:
        inner = _Recording()
        factory = Factory.forProtocol(Protocol)
        self.assertTrue(factory.noisy)
        result = QuietEndpoint(inner).connect(factory)
        self.assertFalse(factory.noisy)
        self.assertEqual(inner.factories, [factory])
        self.assertIs(result, inner.result)


class BackendConnectionTests(SynchronousTestCase):
    def test_send_connects_to_the_base_url_with_the_connect_timeout(self) -> None:
        config = build_config({"backends": {"up": {
            "type": "openai", "base_url": "http://127.0.0.1:9999/v1", "api_key": "sk-1",
            "connect_timeout": 3,
        }}}, environ={}, source="test.yaml", kinds=REGISTRY.kinds)
        memory = MemoryReactorClock()
        backend = OpenAIBackend(config.backends["up"], HTTPConnectionPool(memory), memory, memory)
        backend.send(b"{}", None, stream=False)
        host, port, _, timeout, _ = memory.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9999, 3))


class QuietConnectionTests(TestCase):
    """
    Real upstream connections through the shared pool, watched by an
    observer of the global log.
    """

    def watch(self) -> list[LogEvent]:
        """
        Start collecting factory start/stop events from the global log.
        """
        events: list[LogEvent] = []

        @implementer(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_format") in (STARTING, STOPPING):
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events

    async def settle(self, pool: HTTPConnectionPool) -> None:
        """
        Close the pool's connections, and let the factories stop (that
        happens just after the connections report they are closed).
        """
        await pool.closeCachedConnections()
        await deferLater(reactor, 0, lambda: None)

    async def test_upstream_connections_do_not_log(self) -> None:
        fake, port, upstream = await listen_fake(reactor)
        self.addCleanup(port.stopListening)
        config = build_config(base_config(upstream), environ={}, source="test.yaml",
                              kinds=REGISTRY.kinds)
        pool = make_pool(config, reactor)
        self.addCleanup(pool.closeCachedConnections)
        backend = OpenAIBackend(config.backends["openai"], pool, reactor, reactor)
        events = self.watch()

        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        response = await backend.send(json.dumps(body).encode(), None, stream=False)
        self.assertIn(b"fake: hi", await readBody(response))
        self.assertEqual(await backend.models(), fake.models)
        await self.settle(pool)
        self.assertEqual(len(fake.requests), 2)
        self.assertEqual(events, [])

        # The same pool and upstream through Agent's own endpoints do log:
        # the silence above is the backend's doing, and this observer sees it.
        agent = Agent(reactor, pool=pool)
        response = await agent.request(
            b"POST", (upstream + "/chat/completions").encode(), None,
            BytesProducer(json.dumps(body).encode()))
        await readBody(response)
        await self.settle(pool)
        self.assertEqual([e["log_format"] for e in events], [STARTING, STOPPING])
