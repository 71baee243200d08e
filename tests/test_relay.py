# -*- test-case-name: tests.test_relay -*-
"""
Tests for L{llmproxy.exchange.relay}: the streaming relay (backpressure,
cancellation, timeouts, broken upstreams) and L{collect_body}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseDone
from twisted.web.http import HTTPChannel, PotentialDataLoss, Request
from zope.interface.verify import verifyObject
from twisted.internet.interfaces import IPushProducer

from llmproxy.backends.memory import MemoryResponse
from llmproxy.backends.body import collect_body
from llmproxy.errors import BodyTooLarge, StreamBroken, StreamTimeout
from llmproxy.exchange.relay import StreamRelay
from llmproxy.errors import UpstreamError


class RecordingTransform:
    """
    A transform that passes raw events through and records each call.
    """

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.ended = 0
        self.finished = False

    def events(self, raw: list[bytes]) -> bytes:
        self.calls.append(list(raw))
        if raw and raw[-1].startswith(b"data: [DONE]"):
            self.finished = True
        return b"".join(raw)

    def end(self) -> bytes:
        self.ended += 1
        return b"<end>"


EVENTS = [b"data: %d\n\n" % i for i in range(5)]


def _relay(
    chunks: list[bytes] | None = None, delay: float = 1.0, idle: float = 30.0,
    max_event_bytes: int = 262_144,
) -> tuple[StreamRelay, StringTransport, RecordingTransform, Clock]:
    """
    A relay writing to a L{StringTransport} consumer, fed by a
    L{MemoryResponse} of C{chunks} (when given) on a fresh clock.
    """
    clock = Clock()
    consumer = StringTransport()
    transform = RecordingTransform()
    relay = StreamRelay(consumer, transform, clock, idle, max_event_bytes)
    if chunks is not None:
        MemoryResponse(200, {}, chunks, clock, delay).deliverBody(relay)
    return relay, consumer, transform, clock


def _connected(idle: float = 30.0, max_event_bytes: int = 262_144) -> tuple[
        StreamRelay, StringTransport, StringTransport, RecordingTransform, Clock]:
    """
    A relay whose upstream transport is a L{StringTransport}, so the test
    drives C{dataReceived}/C{connectionLost} and reads C{producerState}.
    """
    relay, consumer, transform, clock = _relay(idle=idle, max_event_bytes=max_event_bytes)
    upstream = StringTransport()
    relay.makeConnection(upstream)
    return relay, upstream, consumer, transform, clock


class RelayTests(SynchronousTestCase):
    """
    Tests for L{StreamRelay} fed by a L{MemoryResponse}.
    """

    def test_registers_as_streaming_producer(self) -> None:
        """
        On connection the relay registers itself with the consumer as a
        streaming (push) producer, and unregisters at the end.
        """
        relay, consumer, _, clock = _relay([EVENTS[0]])
        verifyObject(IPushProducer, relay)
        self.assertIs(consumer.producer, relay)
        self.assertTrue(consumer.streaming)
        clock.advance(0)
        self.assertIsNone(consumer.producer)
        self.assertIsNone(self.successResultOf(relay.finished))

    def test_complete_events_only(self) -> None:
        """
        Only complete events reach the transform and the consumer, however
        the upstream chunks split them; the end marker follows a clean end.
        """
        chunks = [b"data: 0\n", b"\ndata: 1\n\nda", b"ta: 2\r\n", b"\r\n"]
        relay, consumer, transform, clock = _relay(chunks)
        clock.advance(0)
        self.assertEqual(consumer.value(), b"")
        clock.advance(1)
        self.assertEqual(consumer.value(), b"data: 0\n\ndata: 1\n\n")
        clock.advance(1)
        self.assertEqual(consumer.value(), b"data: 0\n\ndata: 1\n\n")
        self.assertNoResult(relay.finished)
        clock.advance(1)
        self.assertEqual(transform.calls, [[b"data: 0\n\n", b"data: 1\n\n"],
                                           [b"data: 2\r\n\r\n"]])
        self.assertEqual(consumer.value(), b"".join(chunks) + b"<end>")
        self.assertTrue(relay.wrote)
        self.assertIsNone(self.successResultOf(relay.finished))

    def test_pause_stops_delivery(self) -> None:
        """
        While the consumer has the relay paused, the upstream is paused and
        no further chunks arrive however far the clock moves; resuming
        continues where it stopped.
        """
        relay, consumer, _, clock = _relay(EVENTS)
        clock.advance(0)
        self.assertEqual(consumer.value(), EVENTS[0])
        upstream = relay.transport
        consumer.producer.pauseProducing()
        self.assertTrue(upstream.paused)
        clock.advance(100)
        self.assertEqual(consumer.value(), EVENTS[0])
        consumer.producer.resumeProducing()
        self.assertFalse(upstream.paused)
        clock.advance(1)
        self.assertEqual(consumer.value(), b"".join(EVENTS[:2]))
        clock.pump([1] * 10)
        self.assertEqual(consumer.value(), b"".join(EVENTS) + b"<end>")
        self.successResultOf(relay.finished)

    def test_pause_suspends_idle_timeout(self) -> None:
        """
        A paused relay is waiting on its client, not on the upstream: the
        idle timeout does not fire while paused, and is armed again on
        resume.
        """
        relay, upstream, _, _, clock = _connected(idle=5)
        relay.pauseProducing()
        self.assertEqual(upstream.producerState, "paused")
        clock.advance(60)
        self.assertNoResult(relay.finished)
        self.assertEqual(upstream.producerState, "paused")
        relay.resumeProducing()
        self.assertEqual(upstream.producerState, "producing")
        clock.advance(5)
        self.assertEqual(upstream.producerState, "stopped")
        self.failureResultOf(relay.finished, StreamTimeout)

    def test_stop_producing_drops_upstream(self) -> None:
        """
        C{stopProducing} (the client went away) stops the upstream: nothing
        more is delivered or written, and C{finished} fails.
        """
        relay, consumer, _, clock = _relay(EVENTS)
        clock.advance(0)
        relay.stopProducing()
        self.assertTrue(relay.transport.stopped)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(100)
        self.assertEqual(consumer.value(), EVENTS[0])
        self.failureResultOf(relay.finished, StreamBroken)

    def test_stop_producing_string_transport(self) -> None:
        """
        With a real-like upstream transport, C{stopProducing} stops it and
        data arriving before its connection is lost is not written.
        """
        relay, upstream, consumer, _, clock = _connected(idle=5)
        relay.stopProducing()
        self.assertEqual(upstream.producerState, "stopped")
        relay.dataReceived(EVENTS[0])
        self.assertEqual(consumer.value(), b"")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        Cancelling C{finished} stops the upstream and fails with
        L{CancelledError}, even though the in-memory upstream reports the
        lost connection synchronously.
        """
        relay, consumer, _, clock = _relay(EVENTS)
        clock.advance(0)
        relay.finished.cancel()
        self.assertTrue(relay.transport.stopped)
        self.failureResultOf(relay.finished, CancelledError)
        self.assertIsNone(consumer.producer)
        clock.advance(100)
        self.assertEqual(consumer.value(), EVENTS[0])

    def test_cancel_then_connection_lost(self) -> None:
        """
        When the connection is lost after the cancellation (a real socket),
        C{finished} still fails with L{CancelledError} only once.
        """
        relay, upstream, consumer, _, _ = _connected()
        relay.finished.cancel()
        self.assertEqual(upstream.producerState, "stopped")
        self.failureResultOf(relay.finished, CancelledError)
        relay.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(consumer.producer)

    def test_idle_timeout(self) -> None:
        """
        An upstream silent for longer than the idle timeout is dropped and
        C{finished} fails with L{StreamTimeout} (504); each chunk restarts
        the timer.
        """
        relay, consumer, _, clock = _relay([EVENTS[0], EVENTS[1], EVENTS[2]], delay=4, idle=5)
        clock.advance(0)
        clock.advance(4)
        clock.advance(4)
        self.assertEqual(consumer.value(), b"".join(EVENTS[:3]) + b"<end>")
        self.successResultOf(relay.finished)

        relay, consumer, _, clock = _relay([EVENTS[0], EVENTS[1]], delay=100, idle=5)
        clock.advance(0)
        clock.advance(4.9)
        self.assertNoResult(relay.finished)
        clock.advance(0.1)
        self.assertTrue(relay.transport.stopped)
        failure = self.failureResultOf(relay.finished, StreamTimeout)
        self.assertEqual(failure.value.status, 504)
        self.assertIsInstance(failure.value, UpstreamError)
        self.assertEqual(consumer.value(), EVENTS[0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_timeout_string_transport(self) -> None:
        """
        With a transport that loses the connection later, the timeout
        stops it at once and C{finished} fails with L{StreamTimeout} when
        the connection is lost.
        """
        relay, upstream, _, _, clock = _connected(idle=5)
        clock.advance(4)
        relay.dataReceived(EVENTS[0])
        clock.advance(4)
        self.assertEqual(upstream.producerState, "producing")
        clock.advance(1)
        self.assertEqual(upstream.producerState, "stopped")
        relay.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(relay.finished, StreamTimeout)

    def test_no_idle_timeout(self) -> None:
        """
        An idle timeout of 0 arms no timer.
        """
        relay, upstream, _, _, clock = _connected(idle=0)
        relay.dataReceived(EVENTS[0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_oversized_event(self) -> None:
        """
        An event beyond the size limit drops the upstream and fails with
        L{StreamBroken} (502); nothing of it is written.
        """
        relay, consumer, _, clock = _relay(
            [EVENTS[0], b"data: " + b"x" * 40, b"y" * 40, EVENTS[1]], max_event_bytes=64)
        clock.advance(0)
        clock.advance(1)
        self.assertNoResult(relay.finished)
        clock.advance(1)
        failure = self.failureResultOf(relay.finished, StreamBroken)
        self.assertEqual(failure.value.status, 502)
        self.assertTrue(relay.transport.stopped)
        clock.advance(10)
        self.assertEqual(consumer.value(), EVENTS[0])

    def test_broken_upstream(self) -> None:
        """
        A connection lost with anything but a clean end fails with
        L{StreamBroken}, without the end marker.
        """
        relay, _, consumer, transform, _ = _connected()
        relay.dataReceived(EVENTS[0] + b"data: half")
        relay.connectionLost(Failure(ConnectionLost()))
        failure = self.failureResultOf(relay.finished, StreamBroken)
        self.assertEqual(failure.value.status, 502)
        self.assertEqual(consumer.value(), EVENTS[0])
        self.assertEqual(transform.ended, 0)
        self.assertIsNone(consumer.producer)

    def test_clean_end_completes_a_whole_last_event(self) -> None:
        """
        On a clean end a last event that lacks only its blank line is
        relayed with it, then the end marker; a whitespace-only tail is not
        an event.
        """
        relay, _, consumer, transform, _ = _connected()
        relay.dataReceived(b'data: {"last": true}')
        relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(consumer.value(), b'data: {"last": true}\n\n<end>')
        self.successResultOf(relay.finished)

        relay, _, consumer, transform, _ = _connected()
        relay.dataReceived(EVENTS[0] + b"\n")
        relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(transform.calls, [[EVENTS[0]]])
        self.assertEqual(consumer.value(), EVENTS[0] + b"<end>")

    def test_cut_last_event_is_a_broken_stream(self) -> None:
        """
        A body that ends inside an event never relays the half event: the
        stream fails, so the client gets an error, not a truncated answer.
        """
        relay, _, consumer, transform, _ = _connected()
        relay.dataReceived(EVENTS[0] + b'data: {"id": "x", "choi')
        relay.connectionLost(Failure(ResponseDone()))
        failure = self.failureResultOf(relay.finished, StreamBroken)
        self.assertIn("middle of an event", failure.value.message)
        self.assertEqual(consumer.value(), EVENTS[0])
        self.assertEqual(transform.ended, 0)

    def test_close_delimited_body_must_reach_its_last_event(self) -> None:
        """
        When only the connection closing ends the body (L{PotentialDataLoss}),
        the stream is whole only if its final event arrived.
        """
        relay, _, consumer, _, _ = _connected()
        relay.dataReceived(EVENTS[0])
        relay.connectionLost(Failure(PotentialDataLoss()))
        self.failureResultOf(relay.finished, StreamBroken)

        relay, _, consumer, _, _ = _connected()
        relay.dataReceived(EVENTS[0] + b"data: [DONE]\n\n")
        relay.connectionLost(Failure(PotentialDataLoss()))
        self.successResultOf(relay.finished)
        self.assertEqual(consumer.value(), EVENTS[0] + b"data: [DONE]\n\n<end>")

    def test_untranslatable_event_breaks_the_stream(self) -> None:
        """
        A transform that cannot handle an event fails the stream (the
        client gets an error) instead of leaving it hanging.
        """
        def explode(raw: list[bytes]) -> bytes:
            raise TypeError("unexpected shape")

        relay, consumer, transform, clock = _relay([EVENTS[0], EVENTS[1]])
        transform.events = explode  # type: ignore[method-assign]
        clock.advance(0)
        failure = self.failureResultOf(relay.finished, StreamBroken)
        self.assertTrue(relay.transport.stopped, "the upstream is dropped")
        self.assertEqual(consumer.value(), b"")
        self.assertIn("cannot translate", failure.value.message)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

        relay, _, _, transform, _ = _connected()
        transform.events = explode  # type: ignore[method-assign]
        relay.dataReceived(b'data: {"tail": 1}')
        relay.connectionLost(Failure(ResponseDone()))
        self.failureResultOf(relay.finished, StreamBroken)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_nothing_written_flag(self) -> None:
        """
        C{wrote} stays false until the transform produced output.
        """
        relay, _, _, _, _ = _connected()
        relay.dataReceived(b"data: partial")
        self.assertFalse(relay.wrote)
        relay.dataReceived(b"\n\n")
        self.assertTrue(relay.wrote)


class _Capture(Request):
    """
    A request that stays open, and records itself on its channel.
    """

    def process(self) -> None:
        self.channel.captured = self


class RequestConsumerTests(SynchronousTestCase):
    """
    The relay registered with a real L{twisted.web.http.Request}: the
    client's transport pausing its channel pauses the upstream.
    """

    def setUp(self) -> None:
        self.client = StringTransport()
        self.channel = HTTPChannel()
        self.channel.timeOut = None  # no reactor timers
        self.channel.requestFactory = _Capture
        self.channel.makeConnection(self.client)
        self.channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 2\r\n\r\n{}")
        self.request = self.channel.captured
        self.request.setHeader(b"content-type", b"text/event-stream")
        self.clock = Clock()
        self.upstream = StringTransport()
        self.relay = StreamRelay(self.request, RecordingTransform(), self.clock, 30)
        self.relay.makeConnection(self.upstream)

    def test_backpressure_chain(self) -> None:
        """
        The client transport pausing the channel pauses the relay's
        upstream transport; resuming resumes it.  Events go out on the
        client connection in the meantime.
        """
        self.assertIs(self.client.producer, self.channel)
        self.relay.dataReceived(EVENTS[0])
        self.assertIn(EVENTS[0], self.client.value())
        self.assertEqual(self.upstream.producerState, "producing")
        self.client.producer.pauseProducing()
        self.assertEqual(self.upstream.producerState, "paused")
        self.client.producer.resumeProducing()
        self.assertEqual(self.upstream.producerState, "producing")

    def test_client_gone_stops_upstream(self) -> None:
        """
        The client connection closing stops the upstream (a TCP transport
        stops its producer, the channel, which stops the request's), and
        the relay's end does not try to unregister from a channel that is
        gone.
        """
        self.client.producer.stopProducing()
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.request.channel)
        self.assertEqual(self.upstream.producerState, "stopped")
        self.relay.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(self.relay.finished, StreamBroken)

    def test_clean_end_unregisters(self) -> None:
        """
        A clean upstream end unregisters the relay from the request, so the
        request can be finished.
        """
        self.relay.connectionLost(Failure(ResponseDone()))
        self.successResultOf(self.relay.finished)
        self.assertIsNone(self.request.producer)
        self.request.finish()
        self.assertTrue(self.client.value().endswith(b"0\r\n\r\n"))


class CollectBodyTests(SynchronousTestCase):
    """
    Tests for L{collect_body}.
    """

    def test_collects(self) -> None:
        """
        The whole body, once the upstream ended cleanly.
        """
        clock = Clock()
        d = collect_body(MemoryResponse(200, {}, [b"ab", b"cd", b"ef"], clock, 1), clock, 5)
        clock.advance(0)
        clock.advance(1)
        self.assertNoResult(d)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), b"abcdef")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_limit(self) -> None:
        """
        A body beyond the limit drops the upstream and fails with
        L{BodyTooLarge}; exactly the limit is fine.
        """
        clock = Clock()
        response = MemoryResponse(200, {}, [b"x" * 8, b"x" * 8, b"x" * 8], clock, 1)
        d = collect_body(response, clock, 0, limit=20)
        clock.advance(0)
        clock.advance(1)
        self.assertNoResult(d)
        clock.advance(1)
        failure = self.failureResultOf(d, BodyTooLarge)
        self.assertEqual(failure.value.status, 502)
        self.assertEqual(clock.getDelayedCalls(), [])

        d = collect_body(MemoryResponse(200, {}, [b"x" * 20], clock), clock, 0, limit=20)
        clock.advance(0)
        self.assertEqual(self.successResultOf(d), b"x" * 20)

    def test_idle_timeout(self) -> None:
        """
        An upstream silent beyond the idle timeout is dropped with
        L{StreamTimeout} (504); each chunk restarts the timer.
        """
        clock = Clock()
        d = collect_body(MemoryResponse(200, {}, [b"a", b"b", b"c"], clock, 4), clock, 5)
        clock.pump([0, 4, 4])
        self.assertEqual(self.successResultOf(d), b"abc")

        d = collect_body(MemoryResponse(200, {}, [b"a", b"b"], clock, 10), clock, 5)
        clock.advance(0)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, StreamTimeout).value.status, 504)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        Cancelling drops the upstream, cancels the idle timer and fails
        with L{CancelledError}.
        """
        clock = Clock()
        response = MemoryResponse(200, {}, [b"a", b"b"], clock, 1)
        d = collect_body(response, clock, 5)
        clock.advance(0)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_broken(self) -> None:
        """
        A body cut short fails with L{StreamBroken}.
        """
        clock = Clock()
        protocols: list[Any] = []

        class Response:
            def deliverBody(self, protocol: Any) -> None:
                protocols.append(protocol)
                protocol.makeConnection(StringTransport())

        d = collect_body(Response(), clock, 5)
        protocols[0].dataReceived(b"{")
        protocols[0].connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, StreamBroken)
        self.assertEqual(clock.getDelayedCalls(), [])

