# -*- test-case-name: tests.test_events -*-
"""
The site and its requests: request bodies are buffered up to a limit, and
each processed request's reply ends with a reply event (see
L{llmproxy.exchange.events}) instead of Twisted's access log line; the
access log is an observer of those events (L{llmproxy.frontends.access}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from llmproxy.exchange.events import ExchangeEvents, ReplyNote


class ProxyRequest(Request):
    """
    A request that stops buffering its body past the site's limit, so an
    oversized upload costs no memory (the handler answers 413), and that
    carries what its reply event needs.

    @ivar note: what the exchange serving the request said, if one did.
    @ivar arrived: when the whole request had arrived, by the site's clock.
    """

    max_body: int = 32 * 1024 * 1024
    too_large = False
    note: ReplyNote | None = None
    arrived = 0.0

    def gotLength(self, length: int | None) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            self.max_body = site.max_body()
        if length is not None and length > self.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        assert self.content is not None  # gotLength() made it
        if self.content.tell() + len(data) > self.max_body:
            self.too_large = True
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            self.arrived = site.clock.seconds()
        super().process()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        site = self.site
        if not self.finished and isinstance(site, ProxySite):
            site.abandoned(self)


class ProxySite(Site):
    """
    A site whose per-request log is a reply event.

    @ivar max_body: the current request body limit, in bytes.
    """

    noisy = False

    def __init__(
        self, resource: IResource, events: ExchangeEvents, clock: IReactorTime,
        max_body: Callable[[], int], **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.events = events
        self.clock = clock
        self.max_body = max_body

    def log(self, request: http.Request) -> None:
        """
        The request finished: its reply event.
        """
        if self.events.observed:
            self._reply(request, True)

    def abandoned(self, request: ProxyRequest) -> None:
        """
        The client left before its request finished: its reply event.
        """
        if self.events.observed:
            self._reply(request, False)

    def _reply(self, request: http.Request, completed: bool) -> None:
        address = request.getClientAddress()
        agent = request.getHeader(b"user-agent")
        arrived, note = (request.arrived, request.note) if isinstance(request, ProxyRequest) \
            else (self.clock.seconds(), None)
        self.events.reply({
            "method": request.method.decode("latin-1"),
            "path": request.path.decode("latin-1"),
            "protocol": request.clientproto.decode("latin-1"),
            "client": address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-",
            "user_agent": agent.decode("latin-1") if agent is not None else None,
            "status": request.code,
            "bytes": request.sentLength,
            "duration": self.clock.seconds() - arrived,
            "completed": completed,
        }, note)


__all__ = ["ProxyRequest", "ProxySite"]
