# -*- test-case-name: tests.test_relay -*-
"""
Moving an upstream response body to the client.

L{StreamRelay} is the body protocol for streamed responses and the
L{IPushProducer} registered with the client's request: when the client's
buffer fills, the client's channel pauses the relay, the relay pauses the
upstream transport, and TCP pushes back on the upstream.  A client that
goes away stops the upstream; an idle upstream is cut after a timeout.
"""

from __future__ import annotations

from typing import Callable, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from llmproxy.backends.body import body_done, body_producer
from llmproxy.errors import ProxyError, StreamBroken, StreamTimeout
from llmproxy.sse import SSEError, SSEFramer, parse_event


class StreamTransform(TypingProtocol):
    """
    Turns raw upstream SSE events into bytes for the client.
    """

    def events(self, raw: list[bytes]) -> bytes:
        """
        Bytes to write for these complete raw events (possibly empty).
        """

    def end(self) -> bytes:
        """
        Bytes to write when the upstream ended cleanly.
        """

    @property
    def finished(self) -> bool:
        """
        Whether the upstream's stream reached its final event.
        """


def _is_comment(raw: bytes) -> bool:
    """
    Whether a raw event holds only comments (and blank lines).
    """
    return all(not line.strip() or line.startswith(b":") for line in raw.splitlines())


def _complete(tail: bytes) -> bytes | None:
    """
    The bytes left after the last blank line, as a whole event (with its
    blank line) when they are one; C{b""} when they dispatch nothing; None
    when they are a cut event.
    """
    if not tail.strip():
        return b""
    event = parse_event(tail)
    if event is None:
        return b""
    if event.data is None:
        return None
    if not event.done:
        try:
            event.json()
        except ValueError:
            return None
    return tail.rstrip(b"\r\n") + b"\n\n"


@implementer(IPushProducer)
class StreamRelay(Protocol):
    """
    Relay an SSE body from the upstream to a consumer, event by event.

    @ivar wrote: whether an event (not just comments) reached the consumer.
    @ivar finished: fires with L{None} when the upstream ended cleanly and
        everything was written, or fails with a L{ProxyError} (or
        L{CancelledError} when cancelled).  Cancelling it stops the
        upstream.
    """

    log = Logger()

    def __init__(
        self,
        consumer: IConsumer,
        transform: StreamTransform,
        clock: IReactorTime,
        idle_timeout: float,
        max_event_bytes: int = 262_144,
        on_first_write: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.on_first_write = on_first_write
        self.transform = transform
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.framer = SSEFramer(max_event_bytes)
        self.finished: Deferred[None] = Deferred(self._cancel)
        self.wrote = False
        self._error: ProxyError | None = None
        self._idle: IDelayedCall | None = None
        self._stopped = False
        self._cancelled = False

    # Protocol

    def connectionMade(self) -> None:
        self.consumer.registerProducer(self, True)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        self._arm()
        try:
            raw = self.framer.feed(data)
        except SSEError as e:
            self._abort(StreamBroken(f"upstream stream invalid: {e}"))
            return
        if raw:
            try:
                out = self.transform.events(raw)
            except Exception:
                self.log.failure("cannot translate an upstream event")
                self._abort(StreamBroken("upstream sent an event llmproxy cannot translate"))
                return
            self._write(out, self.wrote or not all(map(_is_comment, raw)))

    def _write(self, out: bytes, content: bool = True) -> None:
        """
        Write to the client; C{content} says whether it carries an event
        (comments alone do not count: until the first event, the request
        may still fail over).
        """
        if out:
            if content and not self.wrote:
                self.wrote = True
                if self.on_first_write is not None:
                    self.on_first_write()
            self.consumer.write(out)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self._disarm()
        if getattr(self.consumer, "channel", True) is not None:
            # A request whose client is gone has no channel to unregister from.
            self.consumer.unregisterProducer()
        if self.finished.called or self._cancelled:
            # Cancelled: the Deferred fails with CancelledError, even when
            # stopping the upstream lost the connection synchronously.
            return
        if self._error is not None:
            self.finished.errback(self._error)
        elif body_done(reason):
            self._ended(reason)
        else:
            self.finished.errback(
                StreamBroken("upstream connection lost before the stream ended")
            )

    def _ended(self, reason: Failure) -> None:
        """
        The upstream body ended without an error.  A last event lacking its
        blank line is relayed (completed) only if it is whole; a body whose
        end is only known by the connection closing must have reached its
        final event, or it was cut.
        """
        try:
            tail = _complete(self.framer.remainder())
            if tail is None:
                raise StreamBroken("upstream stream ended in the middle of an event")
            out = (self.transform.events([tail]) if tail else b"") + self.transform.end()
            if reason.check(PotentialDataLoss) and not self.transform.finished:
                raise StreamBroken("upstream connection closed before the stream's last event")
        except StreamBroken as e:
            self.finished.errback(e)
            return
        except Exception:
            self.log.failure("cannot translate the upstream's last event")
            self.finished.errback(StreamBroken("upstream sent an event llmproxy cannot translate"))
            return
        self._write(out)
        self.finished.callback(None)

    # IPushProducer

    def pauseProducing(self) -> None:
        self._disarm()
        producer = body_producer(self)
        if producer is not None:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._arm()
        producer = body_producer(self)
        if producer is not None:
            producer.resumeProducing()

    def stopProducing(self) -> None:
        self._stopped = True
        self._disarm()
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()

    # internals

    def _abort(self, error: ProxyError) -> None:
        self._error = error
        self.stopProducing()

    def _cancel(self, d: Deferred[None]) -> None:
        self._cancelled = True
        self.stopProducing()

    def _arm(self) -> None:
        if self.idle_timeout <= 0:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.idle_timeout)
        else:
            self._idle = self.clock.callLater(self.idle_timeout, self._timedOut)

    def _disarm(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _timedOut(self) -> None:
        self._idle = None
        self._abort(StreamTimeout(
            f"upstream stream idle for more than {self.idle_timeout:g} s"
        ))


__all__ = ["StreamRelay", "StreamTransform"]
