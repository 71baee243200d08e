# -*- test-case-name: tests.test_events -*-
"""
The site and its requests: each request's reply ends with a reply event
(see L{llmproxy.exchange.events}) instead of Twisted's access log line, the
requests its channels refuse included; the access log is an observer of
those events (L{llmproxy.frontends.access}).  The connections are
L{ProxyChannel}s (L{llmproxy.frontends.channel}): they hold the body limit
and the deadlines, and ask the site's gate about each request's key.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from llmproxy.errors import InvalidRequest
from llmproxy.exchange.events import ExchangeEvents, ReplyNote
from llmproxy.exchange.runtime import Runtime
from llmproxy.frontends.channel import Admit, ChannelLimits, ProxyChannel
from llmproxy.frontends.errors import json_answer
from llmproxy.frontends.rejections import reason


class ProxyRequest(Request):
    """
    A request that carries what its reply event needs, and what the
    channel's gate decided at the end of its headers.

    @ivar note: what the exchange serving the request said, if one did.
    @ivar arrived: when the whole request had arrived, by the site's clock.
    @ivar admitted: the runtime the site's gate checked the request's key
        against, if it did (L{ProxyApp.admit<llmproxy.frontends.app.ProxyApp.admit>}).
    """

    note: ReplyNote | None = None
    arrived = 0.0
    admitted: Runtime | None = None

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        # Twisted's table lacks some standard phrases: "429 Unknown Status".
        super().setResponseCode(code, reason(code) if message is None else message)

    def process(self) -> None:
        site = getattr(self.channel, "site", None)
        if isinstance(site, ProxySite):
            self.arrived = site.clock.seconds()
        if self.path == b"*":
            self._star(site)
            return
        super().process()

    def _star(self, site: Site | None) -> None:
        """
        The asterisk target: C{OPTIONS *} is answered, any other method
        with it is a 400 (RFC 9112 3.2.4); Twisted's answer has no body.
        """
        self.site = site
        if self.method == b"OPTIONS":
            self.setResponseCode(204)
            self.setHeader(b"allow", b"GET, HEAD, POST")
            self.finish()
            return
        self.write(json_answer(self, 400, InvalidRequest(
            "The request target '*' is only for OPTIONS", code="invalid_request_target"
        ).to_json()))
        self.finish()

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        site = self.site
        if not self.finished and isinstance(site, ProxySite):
            site.abandoned(self)


class ProxySite(Site):
    """
    A site whose per-request log is a reply event, served by
    L{ProxyChannel}s: C{admit} is their gate at the end of each request's
    headers, C{limits} their deadlines.  Its timers (Twisted's idle timeout
    included) run on C{clock}.
    """

    noisy = False
    protocol = ProxyChannel  # type: ignore[assignment]

    def __init__(
        self, resource: IResource, events: ExchangeEvents, clock: IReactorTime,
        admit: Admit, limits: ChannelLimits = ChannelLimits(), **kwargs: Any,
    ) -> None:
        super().__init__(resource, reactor=clock, **kwargs)
        self.events = events
        self.clock = clock
        self.admit = admit
        self.limits = limits

    # Twisted types a site's protocol as its own (private) wrapper, which
    # would hide the channel; the site needs no HTTP/2, which it is for.
    def buildProtocol(self, addr: IAddress | None) -> ProxyChannel:  # type: ignore[override]
        channel = super().buildProtocol(addr)
        assert isinstance(channel, ProxyChannel)
        channel.admit = self.admit
        channel.limits = self.limits
        channel.report = self.refused
        channel.clock = self.reactor
        return channel

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

    def refused(
        self, channel: ProxyChannel, request: http.Request | None, status: int, sent: int
    ) -> None:
        """
        The channel refused a request before it was processed: its reply
        event, with what is known of it (C{-} for the rest).
        """
        if not self.events.observed:
            return
        parts = channel.request_line.split(b" ")
        method, path, protocol = (parts[0], parts[1].partition(b"?")[0], parts[2]) \
            if len(parts) == 3 else (b"-", b"-", b"-")
        address = channel.getPeer()
        agent = request.requestHeaders.getRawHeaders(b"user-agent") if request else None
        self.events.reply({
            "method": method.decode("latin-1"),
            "path": path.decode("latin-1"),
            "protocol": protocol.decode("latin-1"),
            "client": address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-",
            "user_agent": agent[-1].decode("latin-1") if agent else None,
            "status": status,
            "bytes": sent,
            "duration": 0.0,
            "completed": True,
        }, None)

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
            "arrived": arrived,
        }, note)


__all__ = ["ProxyRequest", "ProxySite"]
