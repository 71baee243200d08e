# -*- test-case-name: tests.test_status_page_history -*-
"""
The last quarter of an hour of traffic, in memory, for the status page: an
observer of the exchange's events (Seam 3) counting into a fixed ring of
L{SLOTS} buckets of L{BUCKET} seconds each, by its clock.

Per bucket: the requests (replies to C{POST}s: the API calls; the GETs of
monitors and of this page are not traffic), the errors among them (a 5xx
sent), the tokens their answers' usage reported, and the time to first
token of those an upstream answered, as the client saw it: from the
request's arrival to the first event written for a stream, to the end of
the reply for a whole answer.  Only reply events are read (one per
request).  At most L{SAMPLES} of those
times are kept per bucket (the latest ones), so memory is bounded whatever
the rate; the quantiles of a bucket are taken from its samples.

Nothing is counted before L{History.attach}: the intervals before it are
unknown (gaps in the charts), not zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent
from zope.interface import implementer

from llmproxy.exchange.events import REPLY_NAMESPACE, ExchangeEvents
from llmproxy.translate.usage import usage_counts

#: Seconds per bucket.
BUCKET = 10.0
#: Buckets kept: 90 of 10 s, the last 15 minutes.
SLOTS = 90
#: Time-to-first-token samples kept per bucket.
SAMPLES = 64


@dataclass(slots=True)
class _Bucket:
    """
    One bucket's counts while it fills; C{index} is its start over
    L{BUCKET} (a slot of the ring holds the bucket of one index at a time;
    L{None} before the first).
    """

    index: int | None
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    seen: int = 0


@dataclass(frozen=True, slots=True)
class Point:
    """
    One bucket, summed up: its start (clock seconds), its counts, and the
    median and 99th percentile of its times to first token (L{None}
    without samples).  C{known} is false for an interval that ended before
    the history was attached.
    """

    start: float
    known: bool = True
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_p50: float | None = None
    ttft_p99: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """
    The buckets of the last L{SLOTS} intervals, oldest first (the last one
    is still filling), L{BUCKET} seconds each.
    """

    points: tuple[Point, ...]
    bucket: float = BUCKET

    def requests_per_second(self) -> list[float | None]:
        return [p.requests / self.bucket if p.known else None for p in self.points]

    def error_rate(self) -> list[float | None]:
        """
        The share of requests that failed, per bucket; L{None} for a bucket
        without requests.
        """
        return [p.errors / p.requests if p.requests else None for p in self.points]

    def ttft_p50(self) -> list[float | None]:
        return [p.ttft_p50 for p in self.points]

    def ttft_p99(self) -> list[float | None]:
        return [p.ttft_p99 for p in self.points]

    def tokens_per_minute(self) -> list[float | None]:
        return [p.tokens * 60.0 / self.bucket if p.known else None for p in self.points]


def quantile(samples: Sequence[float], q: float) -> float | None:
    """
    The nearest-rank C{q} quantile (0 < C{q} <= 1) of C{samples}; L{None}
    when there are none.
    """
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, -(-round(q * 1000) * len(ordered) // 1000))  # ceil(q * n), q in 1/1000s
    return ordered[min(rank, len(ordered)) - 1]


@implementer(ILogObserver)
class History:
    """
    The observer: L{attach} it to the exchange's events; L{snapshot}
    reads it.

    @ivar since: when it was first attached (clock seconds), L{None} before.
    """

    def __init__(self, clock: IReactorTime, bucket: float = BUCKET, slots: int = SLOTS,
                 samples: int = SAMPLES) -> None:
        self.clock = clock
        self.bucket = bucket
        self.samples = samples
        self._ring: list[_Bucket] = [_Bucket(None) for _ in range(slots)]
        self.since: float | None = None

    def attach(self, events: ExchangeEvents) -> None:
        """
        Observe C{events} from now on (again and again: once).
        """
        if self.since is None:
            self.since = self.clock.seconds()
        events.addObserver(self)

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == REPLY_NAMESPACE and event.get("method") == "POST":
            self._reply(event)

    def _current(self) -> _Bucket:
        """
        The bucket of now, emptied first if its slot held an older one.
        """
        index = int(self.clock.seconds() // self.bucket)
        slot = index % len(self._ring)
        current = self._ring[slot]
        if current.index != index:
            current = self._ring[slot] = _Bucket(index)
        return current

    def _reply(self, event: LogEvent) -> None:
        current = self._current()
        current.requests += 1
        status = event.get("status")
        if isinstance(status, int) and status >= 500:
            current.errors += 1
        usage = event.get("usage")
        if type(usage) is dict:
            total = usage.get("total_tokens")
            current.tokens += total if type(total) is int and total > 0 \
                else usage_counts(usage)["total"]
        if event.get("route") is not None and isinstance(status, int) and status < 400:
            first = event.get("time_to_first_event")
            self._ttft(current, event.get("duration") if first is None else first)

    def _ttft(self, current: _Bucket, seconds: Any) -> None:
        if not isinstance(seconds, (int, float)) or seconds < 0:
            return
        if len(current.ttft) < self.samples:
            current.ttft.append(float(seconds))
        else:  # full: the oldest sample makes room
            current.ttft[current.seen % self.samples] = float(seconds)
        current.seen += 1

    def snapshot(self) -> Snapshot:
        """
        The last L{SLOTS} buckets up to now, oldest first; an interval
        nothing was counted in is a zero bucket.
        """
        now = int(self.clock.seconds() // self.bucket)
        size = len(self._ring)
        points = []
        for index in range(now - size + 1, now + 1):
            b = self._ring[index % size]
            start = index * self.bucket
            if b.index != index:
                known = self.since is not None and start + self.bucket > self.since
                points.append(Point(start, known))
                continue
            points.append(Point(start, True, b.requests, b.errors, b.tokens,
                                quantile(b.ttft, 0.5), quantile(b.ttft, 0.99)))
        return Snapshot(tuple(points), self.bucket)


__all__ = ["BUCKET", "SAMPLES", "SLOTS", "History", "Point", "Snapshot", "quantile"]
