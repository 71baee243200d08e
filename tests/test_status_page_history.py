"""
The status page's traffic history (L{llmproxy.frontends.history}): a ring
of 10-second buckets over the last 15 minutes, fed by the exchange's
events, on an injected clock.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.exchange.events import REPLY_NAMESPACE, ExchangeEvents
from llmproxy.frontends.history import SAMPLES, SLOTS, History, Point, quantile


def reply(status: int = 200, method: str = "POST", usage: Any = None) -> dict[str, Any]:
    return {"log_namespace": REPLY_NAMESPACE, "method": method, "status": status,
            "usage": usage}


def answered(first: float | None = 0.5, duration: float = 2.0, status: int = 200,
             route: str | None = "a:m") -> dict[str, Any]:
    """
    The reply event of a request an upstream answered (C{first}: its first
    event's time, L{None} for a whole answer).
    """
    return {**reply(status), "route": route, "time_to_first_event": first,
            "duration": duration}


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(10_000.0 - 10 * SLOTS)
        self.history = History(self.clock)
        self.events = ExchangeEvents()
        self.history.attach(self.events)
        self.clock.advance(10 * SLOTS)

    def last(self) -> Point:
        return self.history.snapshot().points[-1]

    def test_fifteen_minutes_of_ten_second_buckets(self) -> None:
        points = self.history.snapshot().points
        self.assertEqual(len(points), SLOTS)
        self.assertEqual((points[0].start, points[-1].start), (10_000.0 - 890, 10_000.0))
        self.assertEqual(set(points), {Point(p.start) for p in points})

    def test_nothing_known_before_it_is_attached(self) -> None:
        history = History(self.clock)
        self.assertEqual(history.snapshot().requests_per_second(), [None] * SLOTS)
        self.clock.advance(15)
        history.attach(self.events)
        history.attach(self.events)
        self.assertEqual(self.history.since, 10_000.0 - 10 * SLOTS)
        self.assertEqual(history.since, 10_015.0)
        self.events.reply({"method": "POST", "status": 200}, None)
        self.assertEqual(history.snapshot().requests_per_second()[-2:], [None, 0.1])
        self.assertEqual(history.snapshot().tokens_per_minute()[-2:], [None, 0.0])
        self.assertEqual(self.history.snapshot().requests_per_second()[-2:], [0.0, 0.1])

    def test_requests_errors_and_tokens(self) -> None:
        self.history(reply(200, usage={"prompt_tokens": 3, "completion_tokens": 4}))
        self.history(reply(502))
        self.history(reply(429, usage={"input_tokens": 5, "output_tokens": 1,
                                       "total_tokens": 6}))
        self.history(reply(200, method="GET"))  # a monitor, not traffic
        self.history({"log_namespace": "something.else", "method": "POST"})
        self.assertEqual((self.last().requests, self.last().errors, self.last().tokens),
                         (3, 1, 13))
        snapshot = self.history.snapshot()
        self.assertEqual(snapshot.requests_per_second()[-1], 0.3)
        self.assertEqual(snapshot.error_rate()[-1], 1 / 3)
        self.assertEqual(snapshot.error_rate()[0], None)
        self.assertEqual(snapshot.tokens_per_minute()[-1], 78.0)

    def test_time_to_first_token(self) -> None:
        for first in (0.1, 0.2, 0.3):
            self.history(answered(first=first))
        self.history(answered(first=None, duration=0.4))  # a whole answer
        self.history(answered(None, 0.01, status=429))  # the upstream's refusal relayed
        self.history(answered(None, 0.02, status=502, route=None))  # none answered
        self.history({**answered(9.0), "method": "GET"})
        self.assertEqual((self.last().ttft_p50, self.last().ttft_p99), (0.2, 0.4))
        snapshot = self.history.snapshot()
        self.assertEqual((snapshot.ttft_p50()[-1], snapshot.ttft_p99()[-1]), (0.2, 0.4))
        self.assertEqual(snapshot.ttft_p50()[0], None)

    def test_buckets_move_with_the_clock(self) -> None:
        self.history(reply())
        self.clock.advance(10)
        self.history(reply())
        self.history(reply())
        points = self.history.snapshot().points
        self.assertEqual([p.requests for p in points[-2:]], [1, 2])
        self.clock.advance(10 * (SLOTS - 2))
        self.assertEqual(self.history.snapshot().points[0].requests, 1)
        self.clock.advance(10)
        self.assertEqual([p.requests for p in self.history.snapshot().points[:2]], [2, 0])
        self.clock.advance(10)
        self.assertEqual(sum(p.requests for p in self.history.snapshot().points), 0)

    def test_a_slot_is_reused_for_its_next_bucket(self) -> None:
        self.history(reply())
        self.clock.advance(10 * SLOTS)
        self.history(reply(502))
        self.assertEqual((self.last().requests, self.last().errors), (1, 1))
        self.assertEqual(sum(p.requests for p in self.history.snapshot().points), 1)

    def test_samples_are_bounded_and_the_latest_kept(self) -> None:
        for _ in range(SAMPLES):
            self.history(answered(first=100.0))
        for _ in range(SAMPLES):
            self.history(answered(first=1.0))
        self.assertEqual((self.last().ttft_p50, self.last().ttft_p99), (1.0, 1.0))
        self.assertEqual(max(len(b.ttft) for b in self.history._ring), SAMPLES)

    def test_odd_values_are_ignored(self) -> None:
        self.history(answered(first=-1.0))
        self.history({**reply(), "route": "a:m"})  # no times
        self.history(reply(usage="not an object"))
        self.history({"log_namespace": REPLY_NAMESPACE, "method": "POST", "status": None})
        self.history({"log_namespace": "llmproxy.exchange.attempt", "outcome": "ok",
                      "time_to_first_event": 1.0, "duration": 2.0})  # not a reply
        self.assertEqual(self.last(), Point(10_000.0, requests=4))


class QuantileTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        self.assertIsNone(quantile([], 0.5))
        self.assertEqual(quantile([3.0], 0.99), 3.0)
        self.assertEqual(quantile([4.0, 1.0, 3.0, 2.0], 0.5), 2.0)
        self.assertEqual(quantile([float(i) for i in range(1, 101)], 0.99), 99.0)
        self.assertEqual(quantile([float(i) for i in range(1, 101)], 0.5), 50.0)

    @given(st.lists(st.floats(0, 1e9), min_size=1, max_size=200),
           st.sampled_from([0.5, 0.9, 0.99, 1.0]))
    def test_a_sample_with_enough_below(self, samples: list[float], q: float) -> None:
        found = quantile(samples, q)
        self.assertIn(found, samples)
        below = sum(1 for s in samples if s <= found)  # type: ignore[operator]
        self.assertGreaterEqual(below, q * len(samples) - 1e-9)
        self.assertLess(sum(1 for s in samples if s < found), q * len(samples))  # type: ignore[operator]
