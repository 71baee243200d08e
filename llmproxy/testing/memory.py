# -*- test-case-name: tests.test_testing -*-
"""
L{MemoryAgent}, an L{IAgent} served in memory by a given L{Site}.
"""

from __future__ import annotations


from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import URI, Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.http_headers import Headers
from twisted.web.server import Site
from zope.interface import implementer



@implementer(IAgentEndpointFactory)
class _MemoryEndpoints:
    """
    An endpoint on the memory reactor for every URI (only its port is
    recorded; L{MemoryAgent} connects whatever was asked to its site).
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class MemoryAgent:
    """
    An L{IAgent} whose every request is served by C{site} over an in-memory
    connection: no socket, and nothing moves until L{flush}.

    Like treq's C{RequestTraversalAgent}, but for a given L{Site}, so its own
    request factory (body limits and all) serves; the site's connection
    timers are moved onto a memory clock of the agent's, so they never
    reach the global reactor.  Request bodies must be written at once
    (treq's C{FileBodyProducer} waits for the global reactor's cooperator).
    Disconnections are clean (iosim's C{abortConnection} loses no buffered
    data) and flow control is not modelled.
    """

    def __init__(self, site: Site) -> None:
        self._reactor = MemoryReactorClock()
        site.reactor = self._reactor
        self._site = site
        self._agent = Agent.usingEndpointFactory(self._reactor, _MemoryEndpoints(self._reactor))
        self._pumps: list[iosim.IOPump] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        d = self._agent.request(method, uri, headers, bodyProducer)
        if not self._reactor.tcpClients:
            return d  # failed before connecting (a bad URI)
        factory = self._reactor.tcpClients.pop()[2]
        client_address = IPv4Address("TCP", "127.0.0.1", 31337)
        server_address = IPv4Address("TCP", "127.0.0.1", 80)
        server = self._site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        assert server is not None and client is not None
        self._pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, True, server_address, client_address),
            client, iosim.FakeTransport(client, False, client_address, server_address),
            greet=False))
        return d

    def flush(self) -> bool:
        """
        Move every pending byte and disconnection, both ways, until none is
        left.

        @return: whether anything moved.
        """
        moved = False
        for pump in list(self._pumps):
            moved = pump.flush() or moved
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self._pumps.remove(pump)
        return moved


# Fault modes beyond the fake's own (issue #10): answers of any shape, and
# the connections they came on.
