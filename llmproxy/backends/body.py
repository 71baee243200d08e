# -*- test-case-name: tests.test_relay,tests.test_upstream_faults -*-
"""
Reading upstream bodies safely: L{collect_body} reads a whole
(non-streamed) body with a size cap, an idle timeout, a deadline and a
canceller; L{Watchdog} is the one timer a body's reader keeps; L{drop_body}
and L{stop_later} give a connection up without letting it back into the pool
half read.

Why a stop is deferred: L{HTTP11ClientProtocol} parses each chunk read from
the socket to its end, and calls the body protocol in the middle of that.
A protocol that stops producing there (the TCP transport's
C{loseConnection}) does not stop the parse: when the rest of the body is in
the same chunk, the response completes, and L{HTTPConnectionPool} takes the
connection back as quiescent although it is closing, and hands it to the
next request.  Stopping from the next reactor turn instead, either the
response completed meanwhile (the connection is clean and rightly reused;
its body producer no longer reaches it, so the stop does nothing) or the
connection is dropped and never pooled.
"""

from __future__ import annotations

from typing import Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from llmproxy.errors import BodyTooLarge, ProxyError, StreamBroken, StreamTimeout

#: Why a L{Watchdog} expired.
IDLE = "idle"
DEADLINE = "deadline"
CLIENT = "client"


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


def stop_later(protocol: Protocol, clock: IReactorTime) -> None:
    """
    Drop the upstream of body protocol C{protocol} from the next reactor
    turn (see the module docstring); call it from C{dataReceived} or from
    code run by the response's arrival.
    """
    producer = body_producer(protocol)
    if producer is not None:
        clock.callLater(0, producer.stopProducing)


class _Dropper(Protocol):
    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def connectionMade(self) -> None:
        stop_later(self, self.clock)


def drop_body(response: IResponse, clock: IReactorTime) -> None:
    """
    Give up C{response}'s body unread: its connection is closed unless the
    body had already arrived whole.
    """
    response.deliverBody(_Dropper(clock))


class Watchdog:
    """
    The one timer of an upstream body's reader.  It expires when the body
    made no progress for C{idle} seconds, or at C{deadline} (a time by
    C{clock}), whichever comes first; while paused (the client is not
    reading), neither counts, and it expires instead when the pause lasted
    C{idle} seconds.  An C{idle} of 0 disables the idle and pause checks.

    Noting progress only records the time, so it costs no timer reset per
    chunk: when the timer fires early, it sleeps again until the new due
    time.

    @ivar deadline: the time by which the reader must be done, or L{None}.
    """

    def __init__(
        self, clock: IReactorTime, idle: float, deadline: float | None,
        expired: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.idle = idle
        self.deadline = deadline
        self.expired = expired
        self._last = 0.0  # set by start()
        self._paused_at: float | None = None
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._last = self.clock.seconds()
        self._schedule()

    def progress(self) -> None:
        """
        The body moved forward.
        """
        self._last = self.clock.seconds()

    def set_idle(self, idle: float) -> None:
        """
        Change the idle limit from now on (a shorter one takes effect at
        once).
        """
        self.idle = idle
        if self._call is not None:
            self._schedule()

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock.seconds()
            self._schedule()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_at = None
            self._last = self.clock.seconds()
            self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _due(self) -> tuple[float, str] | None:
        if self._paused_at is not None:
            return (self._paused_at + self.idle, CLIENT) if self.idle > 0 else None
        due = (self._last + self.idle, IDLE) if self.idle > 0 else None
        if self.deadline is not None and (due is None or self.deadline < due[0]):
            due = (self.deadline, DEADLINE)
        return due

    def _schedule(self) -> None:
        due = self._due()
        if due is None:
            self.stop()
            return
        delay = max(0.0, due[0] - self.clock.seconds())
        if self._call is not None and self._call.active():
            self._call.reset(delay)
        else:
            self._call = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        due = self._due()
        if due is None:
            return
        if due[0] > self.clock.seconds():
            self._schedule()
            return
        self.expired(due[1])


def budget_timeout(what: str) -> StreamTimeout:
    """
    The error of an upstream body cut at the request's deadline.
    """
    return StreamTimeout(f"upstream {what} not done within the request's time budget",
                         code="upstream_timeout")


class _Collector(Protocol):
    def __init__(
        self, clock: IReactorTime, idle_timeout: float, limit: int, deadline: float | None,
    ) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.finished: Deferred[bytes] = Deferred(self._cancel)
        self._error: ProxyError | None = None
        self._cancelled = False
        self.watchdog = Watchdog(clock, idle_timeout, deadline, self._timedOut)

    def connectionMade(self) -> None:
        self.watchdog.start()

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None or self._cancelled:
            return
        self.watchdog.progress()
        self.size += len(data)
        if self.size > self.limit:
            self._fail(BodyTooLarge(f"upstream body larger than {self.limit} bytes"))
            stop_later(self, self.clock)
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.watchdog.stop()
        if self.finished.called or self._cancelled:
            return
        if body_done(reason):
            self.finished.callback(b"".join(self.chunks))
        else:
            self.finished.errback(StreamBroken("upstream connection lost mid-body"))

    def _fail(self, error: ProxyError) -> None:
        """
        Fail at once (the caller may move on to another attempt right away)
        and keep nothing more of the body.
        """
        self._error = error
        self.chunks = []
        self.watchdog.stop()
        self.finished.errback(error)

    def _timedOut(self, why: str) -> None:
        self._fail(budget_timeout("body") if why == DEADLINE else StreamTimeout(
            f"upstream body idle for more than {self.idle_timeout:g} s",
            code="upstream_timeout"))
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._cancelled = True
        self.watchdog.stop()
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()


def collect_body(
    response: IResponse,
    clock: IReactorTime,
    idle_timeout: float = 0,
    limit: int = 64 * 1024 * 1024,
    deadline: float | None = None,
) -> Deferred[bytes]:
    """
    Read a whole response body, within C{limit} bytes, with no pause of
    more than C{idle_timeout} seconds between chunks, and by C{deadline}
    (a time by C{clock}).  Cancelling the result drops the upstream.
    """
    collector = _Collector(clock, idle_timeout, limit, deadline)
    response.deliverBody(collector)
    return collector.finished


__all__ = [
    "CLIENT", "DEADLINE", "IDLE", "Watchdog", "body_done", "body_producer", "budget_timeout",
    "collect_body", "drop_body", "stop_later",
]
