# -*- test-case-name: tests.test_mock -*-
"""
An in-memory L{IResponse}: its body is delivered from a list of chunks on
clock ticks, and it honours pause, resume and stop like a real transport.
The mock backend answers with these, so it shares every code path after
the socket with the real backends.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from llmproxy.errors import StreamBroken


@implementer(IPushProducer)
class _ChunkTransport:
    """
    Feeds chunks to a protocol, one per tick, until told to stop.
    """

    def __init__(
        self, protocol: Protocol, chunks: Sequence[bytes], clock: IReactorTime, delay: float
    ) -> None:
        self.protocol = protocol
        self.chunks = list(chunks)
        self.clock = clock
        self.delay = delay
        self.paused = False
        self.stopped = False
        self.call: IDelayedCall | None = None

    def start(self) -> None:
        self.protocol.makeConnection(self)
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not (self.paused or self.stopped) and self.call is None:
            self.call = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self.call = None
        if self.chunks:
            self.protocol.dataReceived(self.chunks.pop(0))
        if self.stopped:
            return
        if self.chunks:
            self._schedule(self.delay)
        else:
            self.stopped = True
            self.protocol.connectionLost(Failure(ResponseDone()))

    def pauseProducing(self) -> None:
        self.paused = True
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule(self.delay)

    def stopProducing(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.call is not None:
            self.call.cancel()
            self.call = None
        self.protocol.connectionLost(Failure(StreamBroken("stopped")))


@implementer(IResponse)
class MemoryResponse:
    """
    A response whose body is C{chunks}, delivered C{delay} seconds apart.
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(
        self,
        code: int,
        headers: dict[bytes, bytes],
        chunks: Sequence[bytes],
        clock: IReactorTime,
        delay: float = 0.0,
    ) -> None:
        self.code = code
        self.phrase = b"OK" if code == 200 else b"Error"
        self.headers = Headers({k: [v] for k, v in headers.items()})
        self.length = sum(map(len, chunks)) if delay == 0 else UNKNOWN_LENGTH
        self._chunks = chunks
        self._clock = clock
        self._delay = delay

    def deliverBody(self, protocol: Protocol) -> None:
        _ChunkTransport(protocol, self._chunks, self._clock, self._delay).start()

    def setPreviousResponse(self, response: IResponse) -> None:
        raise NotImplementedError()
