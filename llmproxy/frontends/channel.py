# -*- test-case-name: tests.test_http_protocol -*-
"""
The HTTP/1.1 connection: Twisted's L{HTTPChannel}, made to answer every
request it refuses, and to decide what it can before the body.

  - Every protocol fault (request line, headers, framing, sizes) gets an
    OpenAI-shaped JSON error with its status (400, 408, 413, 414, 431, 501,
    505) and C{Connection: close}, then the connection closes: the write
    side at once, the read side after a short linger, so that the answer
    is not lost to a reset while the client is still sending.
  - At the end of the headers (before C{100 Continue}): one C{Host}
    header, known framing, the client's key (L{ChannelLimits} aside, the
    site's C{admit} gate decides it, with the body limit), and a
    C{Content-Length} within that limit; a chunked body is refused as soon
    as it would pass the limit (L{llmproxy.frontends.chunked}).
  - Deadlines instead of Twisted's idle timer that every byte resets: the
    whole head within C{header_timeout} of its first byte, the body within
    C{body_timeout} plus one second per C{body_min_rate} bytes received.
    All of them run on the channel's one L{TimeoutMixin} timer, which
    Twisted already arms per request.

What this relies on beyond Twisted's public API, pinned by
C{tests.test_http_protocol.TwistedInternalsTests}: the hook
C{_respondToBadRequestAndDisconnect} (every refusal of Twisted's parser),
the attribute C{_networkProducer} (the transport, unregistered as
L{HTTPChannel.loseConnection} does), and L{LineReceiver}'s C{_buffer} (the
partial line still waited for).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Callable, cast

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import (
    IConsumer, IPushProducer, IReactorTime, ISSLTransport, ITCPTransport,
)
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.web.http import HTTPChannel, Request

from llmproxy.errors import ProxyError
from llmproxy.frontends import rejections
from llmproxy.frontends.chunked import ChunkedBody, too_large

#: Where a connection is: waiting for a request, reading its head, reading
#: its body, serving it, or closing after a refusal.
IDLE, HEAD, BODY, BUSY, CLOSING = range(5)

#: Bytes that make a partial head line invalid at once (a control
#: character, a bare LF, a CR not followed by LF), when no CRLF follows.
_STALLED = re.compile(rb"[\x00-\x08\x0a-\x0c\x0e-\x1f\x7f]|\r(?!\Z)")

#: The gate at the end of a request's headers: given the request and its
#: path, the body limit in bytes; raises a L{ProxyError} (a 401) to refuse.
Admit = Callable[[Request, bytes], int]
#: Told of each refusal: the channel, its request (if one was begun), the
#: status and the body bytes sent.
Report = Callable[["ProxyChannel", "Request | None", int, int], None]


@dataclass(frozen=True)
class ChannelLimits:
    """
    The connection's deadlines, in seconds, and how it lingers.

    @ivar header_timeout: the whole head, from its first byte.
    @ivar body_timeout: the body, from the end of the head, before it is
        extended by C{body_min_rate}.
    @ivar body_min_rate: each this many body bytes received extend
        C{body_timeout} by a second (Apache's C{mod_reqtimeout} C{MinRate});
        0 for a fixed deadline.
    @ivar linger: after a refusal, how long the client's further bytes are
        read and dropped before the connection is aborted.
    @ivar linger_bytes: how many of them, at most: enough for a client
        that sends a whole (ordinary) body before it reads the answer (a
        wrong key), not an endless upload.
    """

    header_timeout: float = 10.0
    body_timeout: float = 20.0
    body_min_rate: float = 500.0
    linger: float = 2.0
    linger_bytes: int = 8 << 20


class ProxyChannel(HTTPChannel):
    """
    An L{HTTPChannel} that answers what it refuses (see the module
    docstring).  L{ProxySite<llmproxy.frontends.site.ProxySite>} sets
    C{admit}, C{limits}, C{report} and C{clock} (the one its C{callLater}
    comes from).

    @ivar request_line: the current request's request line, once it came.
    """

    admit: Admit | None = None
    limits = ChannelLimits()
    report: Report | None = None
    clock: IReactorTime | None = None
    log = Logger()

    _phase = IDLE
    _head_bytes = 0
    _head_lines = 0
    request_line = b""
    _pending = b""
    _body_bytes = 0
    _body_began = 0.0
    _chunked: ChunkedBody | None = None
    _lingered = 0
    _aborted = False
    #: What the timer is armed for: IDLE (Twisted's idle timeout), HEAD,
    #: BODY or CLOSING (the linger).
    _timed = IDLE

    # reading

    def dataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase == CLOSING:
            self._discard(len(data))
            return
        if phase == IDLE:
            self._begin()
        # Not HTTPChannel.dataReceived: its idle timer, reset by every byte,
        # is what the deadlines replace.
        LineReceiver.dataReceived(self, data)
        phase = self._phase
        if phase == IDLE and self.line_mode and self._buffer:
            self._begin()  # the start of a request that came with one served at once
            phase = HEAD
        # The deadlines are armed only for a head or a body still incomplete
        # after the bytes at hand: a request that came whole costs no timer.
        if phase == HEAD:
            rest = self._buffer
            if rest and self.line_mode and b"\r\n" not in rest and _STALLED.search(rest):
                self.refuse(rejections.bad_line_end())
            elif self._timed != HEAD:
                self._timed = HEAD
                self._arm(self.limits.header_timeout)
        elif phase == BODY and self._timed != BODY:
            self._timed = BODY
            self._body_began = self._now()
            self._arm(self.limits.body_timeout)

    def _begin(self) -> None:
        """
        The first byte of a request is in.
        """
        self._phase = HEAD
        self._head_bytes = self._head_lines = 0
        self.request_line = b""

    def lineReceived(self, line: bytes) -> None:
        if self._phase != HEAD:
            if self._phase != IDLE:
                return
            self._begin()  # a request that came with the one before it
        self._head_bytes += len(line)
        if not self._head_lines:
            self.request_line = line
            if not line:  # the one empty line allowed before a request
                HTTPChannel.lineReceived(self, line)
                return
        self._head_lines += 1
        if self._head_bytes > self.totalHeadersSize or self._head_lines > self.maxHeaders + 2:
            self.refuse(rejections.uri_too_long(self.totalHeadersSize) if self._head_lines == 1
                        else rejections.headers_too_large(self.totalHeadersSize, self.maxHeaders))
            return
        HTTPChannel.lineReceived(self, line)
        # Twisted handles a header when the next line arrives: this is the
        # one it will be handling then.
        self._pending = line

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse(rejections.uri_too_long(self.MAX_LENGTH) if not self._head_lines
                    else rejections.headers_too_large(self.totalHeadersSize, self.maxHeaders))

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        try:
            limit = self._admit(request)
        except ProxyError as error:
            self.refuse(error)
            return
        except CancelledError:
            raise
        except Exception:
            self.log.failure("admitting a request")
            self.refuse(ProxyError("Internal error in llmproxy", code="internal_error"))
            return
        HTTPChannel.allHeadersReceived(self)
        if self.length != 0:
            self._phase = BODY
            self._body_bytes = 0
            if self.length is None:
                self._chunked = ChunkedBody(request.handleContentChunk, self._chunked_end,
                                            self.refuse, limit)

    def _admit(self, request: Request) -> int:
        """
        Refuse what the head alone condemns (framing, C{Host}, the site's
        gate, a C{Content-Length} past the limit); the body limit.
        """
        _, target, version = self.request_line.split(b" ")
        headers = request.requestHeaders
        hosts = headers.getRawHeaders(b"host")
        if hosts is None:
            if version == b"HTTP/1.1":
                raise rejections.bad_host()
        elif len(hosts) > 1 or not hosts[0].isascii():
            raise rejections.bad_host()
        if self.length is None:
            if version != b"HTTP/1.1":
                raise rejections.coding_on_http10()
        else:
            codings = headers.getRawHeaders(b"transfer-encoding")
            if codings is not None:  # only 'identity' gets here: Twisted ignores it
                raise rejections.unsupported_coding(codings[0])
        limit = sys.maxsize if self.admit is None else self.admit(
            request, target.partition(b"?")[0])
        if self.length is not None and self.length > limit:
            raise too_large(limit)
        return limit

    def rawDataReceived(self, data: bytes) -> None:
        phase = self._phase
        if phase == BODY:
            self._body_bytes += len(data)
            if self._chunked is not None:
                self._chunked.feed(data)
                return
        elif phase == CLOSING:
            self._discard(len(data))
            return
        HTTPChannel.rawDataReceived(self, data)

    def _chunked_end(self, rest: bytes) -> None:
        self._chunked = None
        self.allContentReceived()
        if rest:
            # Parsed in whatever mode the request left the channel in, as
            # Twisted does with the bytes after a body.
            self.dataReceived(rest)

    def allContentReceived(self) -> None:
        if self._phase == CLOSING:
            return
        self._phase = BUSY
        if not self.timeOut:
            self.setTimeout(None)  # Twisted stops the timer only when it has an idle timeout
        HTTPChannel.allContentReceived(self)

    def requestDone(self, request: Request) -> None:
        # Before Twisted parses what came meanwhile (and arms its idle
        # timer), or closes: after a request that ends the connection,
        # anything more is dropped.
        self._phase = IDLE if self.persistent else CLOSING
        self._timed = IDLE
        HTTPChannel.requestDone(self, request)

    # time

    def _arm(self, seconds: float) -> None:
        """
        Arm the channel's timer for C{seconds}, keeping C{timeOut}, the idle
        timeout Twisted restores after each request.  A new call, not the
        old one reset: moving a call sooner searches all the reactor's.
        """
        idle = self.timeOut
        self.setTimeout(None)
        self.setTimeout(seconds)
        self.timeOut = idle

    def _now(self) -> float:
        assert self.clock is not None, "ProxySite sets the clock"
        return self.clock.seconds()

    def timeoutConnection(self) -> None:
        phase = self._phase
        limits = self.limits
        if phase == HEAD:
            self.refuse(rejections.too_slow("headers", limits.header_timeout))
        elif phase == BODY:
            allowed = limits.body_timeout + (
                self._body_bytes / limits.body_min_rate if limits.body_min_rate else 0.0)
            left = self._body_began + allowed - self._now()
            if left > 1e-3:
                self._arm(left)
            else:
                self.refuse(rejections.too_slow("body", round(allowed, 1)))
        elif phase == CLOSING:
            self._abort()
        else:
            HTTPChannel.timeoutConnection(self)

    # refusing

    def _respondToBadRequestAndDisconnect(self) -> None:
        """
        Twisted's parser refused the request: answer why.
        """
        if self._phase == BODY:
            error: ProxyError = rejections.bad_framing()
        elif self._head_lines <= 1:
            error = rejections.request_line_error(self.request_line)
        else:
            error = rejections.header_error(self._pending)
        self.refuse(error)

    def refuse(self, error: ProxyError) -> None:
        """
        Answer C{error}, ending the connection; whatever the client sends
        from now on is dropped.
        """
        if self._phase == CLOSING:
            return
        self._phase = CLOSING
        self._chunked = None
        transport = self.transport
        assert transport is not None
        answer = rejections.response(error, not self.request_line.startswith(b"HEAD "))
        transport.write(answer)
        self._discard(len(self.clearLineBuffer()))
        if self.report is not None:
            self.report(self, self.requests[-1] if self.requests else None, error.status,
                        len(answer) - answer.index(b"\r\n\r\n") - 4)
        self._timed = CLOSING
        cast(IConsumer, self._networkProducer).unregisterProducer()
        if ITCPTransport.providedBy(transport) and not ISSLTransport.providedBy(transport):
            # Half-close, and keep reading: closing a socket with unread
            # bytes resets it, which can destroy the answer in flight.
            cast(IPushProducer, transport).resumeProducing()
            cast(ITCPTransport, transport).loseWriteConnection()
        else:
            transport.loseConnection()
        self._arm(self.limits.linger)

    def _discard(self, count: int) -> None:
        self._lingered += count
        if self._lingered > self.limits.linger_bytes:
            self._abort()

    def _abort(self) -> None:
        transport = self.transport
        if transport is None or self._aborted:
            return
        self._aborted = True
        if ITCPTransport.providedBy(transport):
            cast(ITCPTransport, transport).abortConnection()
        else:
            transport.loseConnection()


__all__ = ["Admit", "ChannelLimits", "ProxyChannel", "Report"]
