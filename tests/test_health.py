# -*- test-case-name: tests.test_health -*-
"""
Tests for L{llmproxy.backends.health}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.health import CircuitBreaker


def _open_breaker(
    threshold: int = 3, cooldown: float = 30.0
) -> tuple[CircuitBreaker, Clock]:
    """
    A breaker that has just opened after C{threshold} failures.
    """
    clock = Clock()
    breaker = CircuitBreaker(clock, threshold=threshold, cooldown=cooldown)
    breaker.log = Logger(observer=lambda event: None)
    for _ in range(threshold):
        breaker.record_failure()
    return breaker, clock


class CircuitBreakerTests(SynchronousTestCase):
    """
    Tests for L{CircuitBreaker}.
    """

    def test_starts_closed(self) -> None:
        """
        A new breaker is closed and allows every request.
        """
        breaker = CircuitBreaker(Clock())
        self.assertEqual(breaker.state, "closed")
        self.assertTrue(all(breaker.allow() for _ in range(10)))

    def test_opens_at_threshold(self) -> None:
        """
        Only the C{threshold}-th consecutive failure opens the breaker.
        """
        breaker = CircuitBreaker(Clock(), threshold=3)
        breaker.log = Logger(observer=lambda event: None)
        breaker.record_failure()
        breaker.record_failure()
        self.assertEqual(breaker.state, "closed")
        self.assertTrue(breaker.allow())
        breaker.record_failure()
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.allow())

    def test_success_resets_count(self) -> None:
        """
        Failures must be consecutive: a success in between resets the count.
        """
        breaker = CircuitBreaker(Clock(), threshold=2)
        breaker.record_failure()
        breaker.record_success()
        breaker.record_failure()
        self.assertEqual(breaker.state, "closed")
        self.assertEqual(breaker.consecutive_failures, 1)

    def test_single_probe_after_cooldown(self) -> None:
        """
        After the cooldown exactly one probe is allowed.
        """
        breaker, clock = _open_breaker(cooldown=30.0)
        clock.advance(29.9)
        self.assertFalse(breaker.allow())
        clock.advance(0.1)
        self.assertEqual(breaker.state, "half-open")
        self.assertTrue(breaker.allow())
        self.assertFalse(breaker.allow())
        self.assertFalse(breaker.allow())

    def test_probe_success_closes(self) -> None:
        """
        A successful probe closes the breaker.
        """
        breaker, clock = _open_breaker()
        clock.advance(30)
        self.assertTrue(breaker.allow())
        breaker.record_success()
        self.assertEqual(breaker.state, "closed")
        self.assertTrue(breaker.allow())
        self.assertTrue(breaker.allow())

    def test_probe_failure_waits_one_probe_interval(self) -> None:
        """
        A failed probe keeps the breaker open for one probe interval, not a
        whole cooldown: the next probe goes then.
        """
        breaker, clock = _open_breaker(cooldown=30.0)
        breaker.probe_interval = 5.0
        clock.advance(30)
        self.assertTrue(breaker.allow())
        clock.advance(2)
        breaker.record_failure()
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.allow())
        clock.advance(4.9)
        self.assertFalse(breaker.allow())
        clock.advance(0.1)
        self.assertTrue(breaker.allow())

    def test_late_failure_while_open(self) -> None:
        """
        Failures of requests that started before opening do not extend the
        open period.
        """
        breaker, clock = _open_breaker(cooldown=30.0)
        clock.advance(20)
        breaker.record_failure()
        clock.advance(10)
        self.assertTrue(breaker.allow())

    def test_lost_probe_retried(self) -> None:
        """
        A probe that never reports is given up after another cooldown (the
        longer of cooldown and probe interval).
        """
        breaker, clock = _open_breaker(cooldown=30.0)
        clock.advance(30)
        self.assertTrue(breaker.allow())
        clock.advance(29)
        self.assertFalse(breaker.allow())
        clock.advance(1)
        self.assertTrue(breaker.allow())
        self.assertFalse(breaker.allow())

    def test_status(self) -> None:
        """
        The status reports state, counts and the time left.
        """
        breaker, clock = _open_breaker(threshold=2, cooldown=30.0)
        clock.advance(12)
        self.assertEqual(
            breaker.status(),
            {
                "state": "open",
                "consecutive_failures": 2,
                "threshold": 2,
                "cooldown": 30.0,
                "probe_interval": 5.0,
                "next_probe_in": 18.0,
                "probing": False,
            },
        )
        breaker.record_success()
        self.assertEqual(breaker.status()["state"], "closed")
        self.assertEqual(breaker.status()["next_probe_in"], 0.0)

    def test_logs_transitions(self) -> None:
        """
        Opening and closing are logged.
        """
        events: list[LogEvent] = []
        breaker = CircuitBreaker(Clock(), threshold=1)
        breaker.log = Logger(observer=events.append)
        breaker.record_failure()
        breaker.record_success()
        self.assertEqual(len(events), 2)

    def test_invalid_settings(self) -> None:
        """
        A threshold below 1, a negative cooldown or a probe interval that
        is not positive is rejected.
        """
        self.assertRaises(ValueError, CircuitBreaker, Clock(), threshold=0)
        self.assertRaises(ValueError, CircuitBreaker, Clock(), cooldown=-1)
        self.assertRaises(ValueError, CircuitBreaker, Clock(), probe_interval=0)

    @given(st.integers(min_value=1, max_value=10), st.lists(st.booleans(), max_size=40))
    def test_opens_iff_trailing_failures(
        self, threshold: int, results: list[bool]
    ) -> None:
        """
        With the clock stopped, the breaker is open exactly when some run of
        consecutive failures reached the threshold after the last success.
        """
        breaker = CircuitBreaker(Clock(), threshold=threshold)
        breaker.log = Logger(observer=lambda event: None)
        for ok in results:
            if ok:
                breaker.record_success()
            else:
                breaker.record_failure()
        trailing = 0
        for ok in results:
            trailing = 0 if ok else trailing + 1
        self.assertEqual(breaker.state == "open", trailing >= threshold)
        self.assertEqual(breaker.allow(), trailing < threshold)
