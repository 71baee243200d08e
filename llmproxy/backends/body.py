# -*- test-case-name: tests.test_relay -*-
"""
L{collect_body} reads a whole (non-streamed) upstream body with a size cap,
an idle timeout and a canceller that drops the upstream connection.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from llmproxy.errors import BodyTooLarge, ProxyError, StreamBroken, StreamTimeout


def body_done(reason: Failure) -> bool:
    """
    Whether a body protocol's C{connectionLost} reason is a clean end.
    """
    return reason.check(ResponseDone, PotentialDataLoss) is not None


def body_producer(protocol: Protocol) -> IPushProducer | None:
    """
    The upstream body behind a body protocol: L{IResponse.deliverBody}
    connects the protocol to an L{IPushProducer}, not to an L{ITransport}.
    """
    return cast("IPushProducer | None", protocol.transport)


class _Collector(Protocol):
    def __init__(self, clock: IReactorTime, idle_timeout: float, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.finished: Deferred[bytes] = Deferred(self._cancel)
        self._error: ProxyError | None = None
        self._idle: IDelayedCall | None = None
        self._cancelled = False

    def connectionMade(self) -> None:
        if self.idle_timeout > 0:
            self._idle = self.clock.callLater(self.idle_timeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._idle is not None:
            self._idle.reset(self.idle_timeout)
        self.size += len(data)
        if self.size > self.limit:
            self._stop(BodyTooLarge(f"upstream body larger than {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self.finished.called or self._cancelled:
            return
        if self._error is not None:
            self.finished.errback(self._error)
        elif body_done(reason):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(StreamBroken("upstream connection lost mid-body"))

    def _stop(self, error: ProxyError) -> None:
        self._error = error
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()

    def _timedOut(self) -> None:
        self._idle = None
        self._stop(StreamTimeout(f"upstream body idle for more than {self.idle_timeout:g} s"))

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._cancelled = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()


def collect_body(
    response: IResponse,
    clock: IReactorTime,
    idle_timeout: float = 0,
    limit: int = 64 * 1024 * 1024,
) -> Deferred[bytes]:
    """
    Read a whole response body.  Cancelling the result drops the upstream.
    """
    collector = _Collector(clock, idle_timeout, limit)
    response.deliverBody(collector)
    return collector.finished


__all__ = ["body_done", "body_producer", "collect_body"]
