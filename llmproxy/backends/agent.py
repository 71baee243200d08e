# -*- test-case-name: tests.test_agent -*-
"""
L{UpstreamAgent}: what L{Agent} does per request, minus parsing the URL.

A backend sends every request to one of a few fixed URLs (its base URL
plus a path), and L{Agent} parses and checks the URL again each time
(C{URI.fromBytes}, about 7 µs).  This agent does it once per URL, then
does what L{Agent} does with the result, with public APIs only: a
connection from the shared L{HTTPConnectionPool} (its persistence and its
retry setting apply as they would through L{Agent}), and one
L{Request} on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, HTTP11ClientProtocol, HTTPConnectionPool, Request
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

#: The most URLs an agent remembers; past it, a URL is parsed per request
#: (backends use two or three, this only bounds a misuse).
MAX_URLS = 64
#: What L{Agent} accepts as a URL: printable ASCII, no space.
_VALID_URL = re.compile(rb"\A[\x21-\x7e]+\Z")


@dataclass(frozen=True, slots=True)
class _Destination:
    """
    A URL, parsed: the pool key of its origin (the one L{Agent} uses), the
    endpoint to it, the request target and the C{Host} header value.
    """

    key: Hashable
    endpoint: IStreamClientEndpoint
    path: bytes
    host: bytes


def _host_value(uri: URI) -> bytes:
    """
    The C{Host} header for C{uri}, as L{Agent} computes it: the port only
    when it is not the scheme's default, an IPv6 address in brackets.
    """
    host = b"[" + uri.host + b"]" if isIPv6Address(uri.host.decode("latin-1")) else uri.host
    if (uri.scheme, uri.port) in ((b"http", 80), (b"https", 443)):
        return host
    return b"%s:%d" % (host, uri.port)


@implementer(IAgent)
class UpstreamAgent:
    """
    An L{IAgent} equivalent to C{Agent.usingEndpointFactory(reactor,
    endpoints, pool)} for absolute C{http(s)} URLs, which parses each URL
    once.  Cancelling a request cancels the connection attempt or, once
    connected, the request (which aborts the connection), as with
    L{Agent}.
    """

    def __init__(self, endpoints: IAgentEndpointFactory, pool: HTTPConnectionPool) -> None:
        self.endpoints = endpoints
        self.pool = pool
        self._destinations: dict[bytes, _Destination] = {}

    def _destination(self, uri: bytes) -> _Destination:
        """
        @raise ValueError: C{uri} has a character L{Agent} refuses.
        @raise SchemeNotSupported: the endpoint factory has no endpoint for
            the URL's scheme.
        """
        found = self._destinations.get(uri)
        if found is None:
            url = uri.strip()
            if not _VALID_URL.match(url):
                raise ValueError(f"Invalid URI {uri!r}")
            parsed = URI.fromBytes(url)
            found = _Destination(
                (parsed.scheme, parsed.host, parsed.port),
                self.endpoints.endpointForURI(parsed), parsed.originForm, _host_value(parsed))
            if len(self._destinations) < MAX_URLS:
                self._destinations[uri] = found
        return found

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        try:
            to = self._destination(uri)
        except SchemeNotSupported:
            return fail()
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            headers = headers.copy()
            headers.addRawHeader(b"host", to.host)
        # Built before connecting, so a bad method or target fails here.
        request = Request(method, to.path, headers, bodyProducer,
                          persistent=self.pool.persistent)
        d = self.pool.getConnection(to.key, to.endpoint)

        def connected(protocol: HTTP11ClientProtocol) -> Deferred[IResponse]:
            return protocol.request(request)

        return d.addCallback(connected)


__all__ = ["MAX_URLS", "UpstreamAgent"]
