"""
L{UpstreamAgent}: the requests L{Agent} would send, over the same pool,
with each URL parsed once.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import URI, Agent, HTTPConnectionPool, readBody
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from llmproxy.backends.agent import MAX_URLS, UpstreamAgent
from llmproxy.backends.openai import BytesProducer, EndpointCache
from llmproxy.testing import listen_faulty

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


@implementer(IStreamClientEndpoint)
class _Wire:
    """
    An endpoint whose connections are L{StringTransport}s, made when
    C{connect} is called unless C{hold} (then C{pending} fires later).
    """

    def __init__(self, hold: bool = False) -> None:
        self.hold = hold
        self.transports: list[StringTransport] = []
        self.protocols: list[IProtocol] = []
        self.pending: list[Deferred[IProtocol]] = []
        self.cancelled = 0

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.hold:
            d: Deferred[IProtocol] = Deferred(lambda _: self._cancelled())
            self.pending.append(d)
            return d
        protocol = protocolFactory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return Deferred.fromCoroutine(_value(protocol))

    def _cancelled(self) -> None:
        self.cancelled += 1


async def _value(protocol: IProtocol) -> IProtocol:
    return protocol


class _Endpoints:
    """
    An endpoint factory handing out one L{_Wire}, counting the calls.
    """

    def __init__(self, wire: _Wire) -> None:
        self.wire = wire
        self.asked: list[bytes] = []

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        self.asked.append(uri.toBytes())
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(uri.scheme)
        return self.wire


def _send(agent: IAgent, url: bytes, headers: Headers | None = None) -> Deferred[Any]:
    return agent.request(b"POST", url, headers, BytesProducer(b'{"a":1}'))


class WireTests(SynchronousTestCase):
    def both(self, url: bytes, headers: Headers | None = None,
             persistent: bool = True) -> tuple[bytes, bytes]:
        """
        What L{Agent} and L{UpstreamAgent} each write for one request.
        """
        written = []
        for make in (lambda e, p: Agent.usingEndpointFactory(MemoryReactorClock(), e, pool=p),
                     UpstreamAgent):
            wire = _Wire()
            pool = HTTPConnectionPool(MemoryReactorClock(), persistent=persistent)
            _send(make(_Endpoints(wire), pool), url, headers)
            written.append(wire.transports[0].value())
        return written[0], written[1]

    def test_writes_what_agent_writes(self) -> None:
        headers = Headers({b"content-type": [b"application/json"], b"authorization": [b"x"]})
        for url in (b"http://up.example/v1/chat/completions",
                    b"http://up.example:8080/v1/chat/completions?q=1",
                    b"https://up.example/v1/responses",
                    b"https://up.example:8443/v1/models",
                    b"http://[::1]:8080/v1/models"):
            agent, ours = self.both(url, headers)
            self.assertEqual(ours, agent)
            self.assertIn(b"Host: ", ours)
        agent, ours = self.both(b"http://up.example:8080/v1", Headers({b"host": [b"given"]}))
        self.assertEqual(ours, agent)
        self.assertIn(b"Host: given\r\n", ours)
        agent, ours = self.both(b"http://up.example/v1", persistent=False)
        self.assertEqual(ours, agent)
        self.assertIn(b"Connection: close\r\n", ours)

    def test_caller_headers_untouched(self) -> None:
        headers = Headers({b"accept": [b"*/*"]})
        _send(UpstreamAgent(_Endpoints(_Wire()), HTTPConnectionPool(MemoryReactorClock())),
              b"http://up.example/v1", headers)
        self.assertFalse(headers.hasHeader(b"host"))

    def test_each_url_parsed_once(self) -> None:
        wire = _Wire()
        endpoints = _Endpoints(wire)
        agent = UpstreamAgent(endpoints, HTTPConnectionPool(MemoryReactorClock()))
        for url in (b"http://up.example/v1/a", b"http://up.example/v1/b",
                    b"http://up.example/v1/a"):
            _send(agent, url)
        self.assertEqual(endpoints.asked, [b"http://up.example/v1/a", b"http://up.example/v1/b"])
        self.assertIn(b"POST /v1/a HTTP/1.1", wire.transports[2].value())

    def test_urls_remembered_are_bounded(self) -> None:
        endpoints = _Endpoints(_Wire())
        agent = UpstreamAgent(endpoints, HTTPConnectionPool(MemoryReactorClock()))
        for i in range(MAX_URLS + 1):
            _send(agent, b"http://up.example/v1/%d" % i)
        _send(agent, b"http://up.example/v1/%d" % MAX_URLS)
        _send(agent, b"http://up.example/v1/0")
        self.assertEqual(len(endpoints.asked), MAX_URLS + 2)

    def test_unsupported_scheme_fails_the_request(self) -> None:
        wire = _Wire()
        agent = UpstreamAgent(_Endpoints(wire), HTTPConnectionPool(MemoryReactorClock()))
        self.failureResultOf(_send(agent, b"ftp://up.example/v1"), SchemeNotSupported)
        self.assertEqual(wire.transports, [])

    def test_refuses_what_agent_refuses(self) -> None:
        agent = UpstreamAgent(_Endpoints(_Wire()), HTTPConnectionPool(MemoryReactorClock()))
        for url in (b"http://up.example/v 1", b"http://up.exa\x00mple/v1", b"http://\xff/v1"):
            self.assertRaises(ValueError, _send, agent, url)
        self.assertRaises(ValueError, agent.request, b"PO ST", b"http://up.example/v1")
        self.assertRaises(TypeError, agent.request, "POST", b"http://up.example/v1")


class PoolTests(SynchronousTestCase):
    def test_cancel_while_connecting(self) -> None:
        wire = _Wire(hold=True)
        agent = UpstreamAgent(_Endpoints(wire), HTTPConnectionPool(MemoryReactorClock()))
        d = _send(agent, b"http://up.example/v1")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(wire.cancelled, 1)

    def test_cancel_while_waiting_aborts_the_connection(self) -> None:
        wire = _Wire()
        pool = HTTPConnectionPool(MemoryReactorClock())
        agent = UpstreamAgent(_Endpoints(wire), pool)
        d = _send(agent, b"http://up.example/v1")
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(wire.transports[0].disconnecting)
        _send(agent, b"http://up.example/v1")
        self.assertEqual(len(wire.transports), 2)  # the aborted one was not pooled

    def test_connection_reused_and_not_retried(self) -> None:
        """
        An answered request's connection goes back to the pool and serves
        the next request to the same origin; with the pool's retry off (as
        llmproxy's is), a request that fails on a pooled connection fails,
        on no new connection.
        """
        wire = _Wire()
        pool = HTTPConnectionPool(MemoryReactorClock())
        pool.retryAutomatically = False
        agent = UpstreamAgent(_Endpoints(wire), pool)
        first = _send(agent, b"http://up.example/v1/chat/completions")
        wire.protocols[0].dataReceived(RESPONSE)
        self.successResultOf(readBody(self.successResultOf(first)))
        second = _send(agent, b"http://up.example/v1/models")
        self.assertEqual(len(wire.transports), 1)
        self.assertIn(b"POST /v1/models HTTP/1.1", wire.transports[0].value())
        wire.protocols[0].connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(second)
        self.assertEqual(len(wire.transports), 1)


class RealConnectionTests(TestCase):
    async def test_requests_share_one_connection(self) -> None:
        fake, port, upstream = await listen_faulty(reactor)
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = UpstreamAgent(EndpointCache(reactor, 5.0), pool)
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            response = await agent.request(
                b"POST", (upstream + "/chat/completions").encode(),
                Headers({b"content-type": [b"application/json"]}),
                BytesProducer(json.dumps(body).encode()))
            self.assertEqual(response.code, 200)
            self.assertIn(b"fake: hi", await readBody(response))
        self.assertEqual((len(fake.requests), fake.connections), (3, 1))
