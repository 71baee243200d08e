# -*- test-case-name: tests.test_relay -*-
"""
Moving an upstream response body to the client.

L{StreamRelay} is the body protocol for streamed responses and the
L{IPushProducer} registered with the client's request: when the client's
buffer fills, the client's channel pauses the relay, the relay pauses the
upstream transport, and TCP pushes back on the upstream.  A client that
goes away stops the upstream.

One timer (L{Watchdog}) bounds the stream:
 - progress is a complete event carrying data: an upstream that sends only
   comments, or drips an event byte by byte, is idle;
 - until the first event reached the client, the request's deadline (its
   total time budget) holds too; after it, a stream that keeps producing
   events runs as long as it does (a long answer is not a fault), cut only
   when idle for the backend's C{idle_timeout};
 - while the client has the relay paused, the upstream is not waited on:
   the timer measures the client's stall instead, and a client that has
   not read for C{idle_timeout} has its connection closed.  The request is
   then cancelled like any client that left, and the backend's breaker
   hears nothing of it.

With an L{AnswerWatch} (every stream the exchange relays), the answer's
start is watched for (L{llmproxy.translate.content}): events before it (a
role chunk, C{response.created}) are held back, not written, so an attempt
whose answer never starts fails over unseen (the next attempt's transform
starts its own stream: one id, one numbering).  Until the start, the
watch's first-token time bounds the wait, with C{idle_timeout} between
events; once started, the gap between events is bounded by its
C{stream_idle}, and a stream that falls silent fails with
L{StreamStalled}, however it started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol as TypingProtocol, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from llmproxy.backends.body import (
    CLIENT, DEADLINE, Watchdog, body_done, body_producer, budget_timeout, stop_later,
)
from llmproxy.errors import (
    FirstTokenTimeout, ProxyError, StreamBroken, StreamStalled, StreamTimeout,
)
from llmproxy.exchange.answers import InvalidAnswer
from llmproxy.sse import SSEError, SSEFramer, parse_event
from llmproxy.translate.transforms import BadStream


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


#: The most bytes held back before the answer starts (a Responses upstream's
#: first two events echo the request's instructions and tools).
HOLD_LIMIT = 1_048_576


@dataclass(frozen=True, slots=True)
class AnswerWatch:
    """
    How a relay watches for its answer's start.

    @ivar starts: whether some raw upstream events start the answer.
    @ivar first_token_at: when the answer must have started (a time by the
        relay's clock), or L{None}.
    @ivar first_token: the limit behind C{first_token_at}, in seconds (for
        the error).
    @ivar stream_idle: the longest gap between events once it started.
    """

    starts: Callable[[Sequence[bytes]], bool]
    first_token_at: float | None
    first_token: float
    stream_idle: float


def _is_comment(raw: bytes) -> bool:
    """
    Whether a raw event holds only comments (and blank lines).
    """
    if raw[:1] not in (b":", b"\r", b"\n"):
        return False
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
        upstream.  A failure fires it at once, the upstream being dropped
        from the next reactor turn (see L{llmproxy.backends.body}).
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
        deadline: float | None = None,
        answer: AnswerWatch | None = None,
    ) -> None:
        """
        @param deadline: when the first event must have reached the client
            (a time by C{clock}), or L{None}.
        @param answer: how to watch for the answer's start; without it, the
            first event starts it.
        """
        self.consumer = consumer
        self.on_first_write = on_first_write
        self.transform = transform
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.framer = SSEFramer(max_event_bytes)
        self.finished: Deferred[None] = Deferred(self._cancel)
        self.wrote = False
        self.answer = answer
        #: Events held back until the answer starts (L{None}: it started).
        self._held: list[bytes] | None = None
        self._held_size = 0
        if answer is not None:
            self._held = []
            if answer.first_token_at is not None and (
                    deadline is None or answer.first_token_at < deadline):
                deadline = answer.first_token_at
        self.watchdog = Watchdog(clock, idle_timeout, deadline, self._expired)
        self._registered = False
        self._stopped = False
        self._cancelled = False

    # Protocol

    def connectionMade(self) -> None:
        self.consumer.registerProducer(self, True)
        self._registered = True
        self.watchdog.start()

    def dataReceived(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            raw = self.framer.feed(data)
        except SSEError as e:
            self._fail(StreamBroken(f"upstream stream invalid: {e}"))
            return
        if raw:
            try:
                out = self.transform.events(raw)
            except BadStream as e:
                self._fail(InvalidAnswer(str(e)))
                return
            except Exception:
                self.log.failure("cannot translate an upstream event")
                self._fail(StreamBroken("upstream sent an event llmproxy cannot translate"))
                return
            content = not all(map(_is_comment, raw))
            if content:
                self.watchdog.progress()
                if self._held is not None:
                    out = self._hold(raw, out)
            self._write(out, self.wrote or content)

    def _hold(self, raw: list[bytes], out: bytes) -> bytes:
        """
        Until the answer starts, keep C{out} back; at its start (or once
        L{HOLD_LIMIT} bytes are held: no preamble is that long), what to
        write: everything held, then C{out}.
        """
        assert self._held is not None and self.answer is not None
        if not self.answer.starts(raw):
            self._held_size += len(out)
            if self._held_size <= HOLD_LIMIT:
                if out:
                    self._held.append(out)
                return b""
        held, self._held = self._held, None
        self.watchdog.set_idle(self.answer.stream_idle)
        return b"".join(held) + out if held else out

    def _write(self, out: bytes, content: bool = True) -> None:
        """
        Write to the client; C{content} says whether it carries an event
        (comments alone do not count: until the first event, the request
        may still fail over).
        """
        if out:
            if content and not self.wrote:
                self.wrote = True
                self.watchdog.deadline = None
                if self.on_first_write is not None:
                    self.on_first_write()
            self.consumer.write(out)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.watchdog.stop()
        self._unregister()
        if self.finished.called or self._cancelled:
            # Cancelled: the Deferred fails with CancelledError, even when
            # stopping the upstream lost the connection synchronously.
            return
        if body_done(reason):
            self._ended(reason)
        else:
            self.finished.errback(
                StreamBroken("upstream connection lost before the stream ended")
            )

    def _ended(self, reason: Failure) -> None:
        """
        The upstream body ended without an error.  A last event lacking its
        blank line is relayed (completed) only if it is whole; the stream
        must have reached its final event (the transform's C{end} says so),
        or it was cut.
        """
        try:
            tail = _complete(self.framer.remainder())
            if tail is None:
                raise StreamBroken("upstream stream ended in the middle of an event")
            out = (self.transform.events([tail]) if tail else b"") + self.transform.end()
            if self._held:
                out, self._held = b"".join(self._held) + out, None
            if reason.check(PotentialDataLoss) and not self.transform.finished:
                raise StreamBroken("upstream connection closed before the stream's last event")
        except StreamBroken as e:
            self.finished.errback(e)
            return
        except BadStream as e:
            self.finished.errback(InvalidAnswer(str(e)))
            return
        except Exception:
            self.log.failure("cannot translate the upstream's last event")
            self.finished.errback(StreamBroken("upstream sent an event llmproxy cannot translate"))
            return
        self._write(out)
        self.finished.callback(None)

    # IPushProducer

    def pauseProducing(self) -> None:
        # A client that does not read has idle_timeout, inside the answer too.
        self.watchdog.idle = self.idle_timeout
        self.watchdog.pause()
        producer = body_producer(self)
        if producer is not None:
            producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.answer is not None and self._held is None:
            self.watchdog.idle = self.answer.stream_idle
        self.watchdog.resume()
        producer = body_producer(self)
        if producer is not None:
            producer.resumeProducing()

    def stopProducing(self) -> None:
        self._stopped = True
        self.watchdog.stop()
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()

    # internals

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            if getattr(self.consumer, "channel", True) is not None:
                # A request whose client is gone has no channel to unregister from.
                self.consumer.unregisterProducer()

    def _fail(self, error: ProxyError) -> None:
        """
        Give up on the stream for what the upstream sent: fail at once (the
        next attempt may register with the consumer right away), and drop
        the upstream from the next turn.
        """
        self._stopped = True
        self.watchdog.stop()
        self._unregister()
        stop_later(self, self.clock)
        self.finished.errback(error)

    def _cancel(self, d: Deferred[None]) -> None:
        self._cancelled = True
        self.stopProducing()

    def _expired(self, why: str) -> None:
        if why == CLIENT:
            self._client_stalled()
            return
        error = self._timeout(why)
        if not self.finished.called:
            self._unregister()
            self.finished.errback(error)
        self.stopProducing()

    def _timeout(self, why: str) -> StreamTimeout:
        """
        The error of a watchdog's expiry for C{why} (not the client).
        """
        answer = self.answer
        if why == DEADLINE:
            if answer is not None and answer.first_token_at is not None \
                    and self.clock.seconds() >= answer.first_token_at:
                return FirstTokenTimeout(
                    f"upstream answer did not start within {answer.first_token:g} s "
                    "(first_token_timeout)", code="upstream_timeout")
            return budget_timeout("stream: no event")
        if self.wrote:
            return StreamStalled(f"no event for more than {self.watchdog.idle:g} s "
                                 "after the answer started")
        return StreamTimeout(f"upstream stream idle for more than {self.watchdog.idle:g} s",
                             code="upstream_timeout")

    def _client_stalled(self) -> None:
        """
        The client has not read for C{idle_timeout}: close its connection.
        Its request is then cancelled like any whose client left, which
        stops the upstream; the upstream is not to blame.
        """
        self.log.info("client has not read for {idle} s; closing its connection",
                      idle=self.idle_timeout)
        transport = getattr(self.consumer, "transport", None)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()


__all__ = ["AnswerWatch", "StreamRelay", "StreamTransform"]
