# -*- test-case-name: tests.test_health -*-
"""
A circuit breaker per backend instance.

After C{threshold} consecutive failures the breaker opens and the backend is
skipped for C{cooldown} seconds.  Then a single probe request is let through
(half-open): its success closes the breaker, its failure reopens it for
another cooldown.  A probe that never reports (for instance because its
request was cancelled) is given up after one more cooldown, and a new probe
is allowed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


class CircuitBreaker:
    """
    Tracks consecutive failures of one backend instance.

    @ivar threshold: consecutive failures that open the breaker.
    @ivar cooldown: seconds the breaker stays open before a probe.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, *, threshold: int = 5, cooldown: float = 30.0
    ) -> None:
        """
        @param clock: the time source.
        @param threshold: consecutive failures that open the breaker (>= 1).
        @param cooldown: seconds to stay open before probing (>= 0).
        @raise ValueError: on a threshold below 1 or a negative cooldown.
        """
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if cooldown < 0:
            raise ValueError("cooldown must not be negative")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None

    def _cooldown_over(self) -> bool:
        """
        Whether the open period has elapsed (only meaningful when open).
        """
        assert self._opened_at is not None
        return self._clock.seconds() >= self._opened_at + self.cooldown

    def _probe_pending(self) -> bool:
        """
        Whether a probe is in flight and has not yet been given up.
        """
        if self._probe_started is None:
            return False
        return self._clock.seconds() < self._probe_started + self.cooldown

    @property
    def state(self) -> str:
        """
        C{"closed"}, C{"open"} (skipping) or C{"half-open"} (cooldown over,
        a probe may be or is in flight).
        """
        if self._opened_at is None:
            return CLOSED
        return HALF_OPEN if self._cooldown_over() else OPEN

    @property
    def consecutive_failures(self) -> int:
        """
        Failures since the last success.
        """
        return self._failures

    def allow(self) -> bool:
        """
        Whether a request may go to this backend now.

        Closed: always.  Open: not until the cooldown is over; then exactly
        one caller gets C{True} (the probe) and the others C{False} until the
        probe reports through L{record_success} or L{record_failure}.
        """
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN or self._probe_pending():
            return False
        self._probe_started = self._clock.seconds()
        return True

    def record_success(self) -> None:
        """
        A request succeeded: close the breaker and forget past failures.
        """
        if self._opened_at is not None:
            self.log.info("circuit closed after a successful request")
        self._failures = 0
        self._opened_at = None
        self._probe_started = None

    def record_failure(self) -> None:
        """
        A request failed: count it, open the breaker at the threshold, and
        reopen it when the half-open probe failed.

        Failures reported while open (requests that started earlier) are
        counted but do not extend the open period.
        """
        self._failures += 1
        if self._opened_at is None:
            if self._failures >= self.threshold:
                self._open()
        elif self._cooldown_over():
            self._open()

    def _open(self) -> None:
        """
        Open (or reopen) the breaker for one cooldown from now.
        """
        self._opened_at = self._clock.seconds()
        self._probe_started = None
        self.log.warn(
            "circuit open for {cooldown}s after {failures} failures",
            cooldown=self.cooldown,
            failures=self._failures,
        )

    def status(self) -> dict[str, Any]:
        """
        The breaker's state for the status endpoint.

        @return: C{state}, C{consecutive_failures}, C{threshold},
            C{cooldown} and C{cooldown_left} (seconds until a probe may go).
        """
        left = 0.0
        if self._opened_at is not None:
            left = max(0.0, self._opened_at + self.cooldown - self._clock.seconds())
        return {
            "state": self.state,
            "consecutive_failures": self._failures,
            "threshold": self.threshold,
            "cooldown": self.cooldown,
            "cooldown_left": left,
        }
