# -*- test-case-name: tests.test_health,tests.test_breakers -*-
"""
Circuit breakers: one per (backend, model) that has been failing.

A L{CircuitBreaker} opens after C{threshold} consecutive failures; the
model is then skipped (when its route has anywhere else to go) for
C{cooldown} seconds.  After that it is half-open: one real request at a
time is let through as a probe.  A probe's success closes the breaker; its
failure (the request itself fails over, so probing loses nothing) lets the
next probe go C{probe_interval} seconds later, not a whole cooldown later,
so a recovered model is back in use within about one interval.  A probe
that never reports (its request was cancelled) is given up after
C{max(cooldown, probe_interval)}, and another may go.

L{ModelBreakers} holds one backend's breakers by model.  Only models that
are failing have one (a success drops it: a fresh breaker is the same as
none), at most C{limit} of them; failures of further models fold into one
shared breaker, so clients naming ever new models cannot grow memory
without bound.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"

#: How many failing models of one backend get a breaker of their own.
MODEL_LIMIT = 64

#: Longer model names share the overflow breaker (no upstream has such).
LONGEST_MODEL = 200

#: The status key of the breaker shared by the models beyond the limit.
OTHER_MODELS = "*"


def _check(threshold: int, cooldown: float, probe_interval: float) -> None:
    """
    @raise ValueError: on a threshold below 1, a negative cooldown or a
        probe interval that is not positive.
    """
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    if cooldown < 0:
        raise ValueError("cooldown must not be negative")
    if probe_interval <= 0:
        raise ValueError("probe_interval must be positive")


class CircuitBreaker:
    """
    Tracks the consecutive failures of one model of one backend.

    @ivar threshold: consecutive failures that open the breaker.
    @ivar cooldown: seconds the breaker stays open before the first probe.
    @ivar probe_interval: seconds from a failed probe to the next one.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, *, threshold: int = 5, cooldown: float = 30.0,
        probe_interval: float = 5.0, name: str = "",
    ) -> None:
        """
        @param clock: the time source.
        @param name: what the log lines call it (C{backend:model}).
        @raise ValueError: on settings L{_check} refuses.
        """
        _check(threshold, cooldown, probe_interval)
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_interval = probe_interval
        self.name = name
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_failed_at: float | None = None
        self._probe_started: float | None = None

    def _next_probe(self) -> float:
        """
        When the next probe may go (only meaningful when open): a cooldown
        after opening, then a probe interval after the last failed probe
        (by the current settings, so a new configuration applies at once).
        """
        if self._probe_failed_at is not None:
            return self._probe_failed_at + self.probe_interval
        assert self._opened_at is not None
        return self._opened_at + self.cooldown

    def _probe_pending(self, now: float) -> bool:
        """
        Whether a probe is in flight and has not yet been given up.
        """
        if self._probe_started is None:
            return False
        return now < self._probe_started + max(self.cooldown, self.probe_interval)

    @property
    def state(self) -> str:
        """
        C{"closed"}, C{"open"} (skipping) or C{"half-open"} (a probe may
        go, or is in flight).
        """
        if self._opened_at is None:
            return CLOSED
        return HALF_OPEN if self._clock.seconds() >= self._next_probe() else OPEN

    @property
    def opened_at(self) -> float | None:
        """
        When the breaker opened; L{None} when closed.
        """
        return self._opened_at

    def open_since(self, opened_at: float) -> None:
        """
        Open as of C{opened_at} (another process saw the failures), unless
        already open.
        """
        if self._opened_at is None:
            self._failures = max(self._failures, self.threshold)
            self._opened_at = opened_at
            self.log.info("circuit {name} open: another process opened it", name=self.name)

    @property
    def consecutive_failures(self) -> int:
        """
        Failures since the last success.
        """
        return self._failures

    @property
    def holding(self) -> bool:
        """
        Whether the breaker is keeping requests away right now (open, or
        half-open with its probe in flight).
        """
        if self._opened_at is None:
            return False
        now = self._clock.seconds()
        return now < self._next_probe() or self._probe_pending(now)

    def allow(self) -> bool:
        """
        Whether a request may go now.

        Closed: always.  Otherwise exactly one caller gets C{True} once the
        next probe is due (that request is the probe), and the others
        C{False} until it reports through L{record_success} or
        L{record_failure} (or is given up).
        """
        if self._opened_at is None:
            return True
        now = self._clock.seconds()
        if now < self._next_probe() or self._probe_pending(now):
            return False
        self._probe_started = now
        return True

    def record_success(self) -> None:
        """
        A request succeeded: close the breaker and forget past failures.
        """
        if self._opened_at is not None:
            self.log.info("circuit {name} closed after a successful request", name=self.name)
        self._failures = 0
        self._opened_at = self._probe_failed_at = self._probe_started = None

    def record_failure(self) -> None:
        """
        A request failed: count it, open the breaker at the threshold, and
        when half-open (a probe failed) let the next probe go one probe
        interval from now.

        Failures reported while open (requests that started earlier) are
        counted but do not delay the next probe.
        """
        self._failures += 1
        now = self._clock.seconds()
        if self._opened_at is None:
            if self._failures >= self.threshold:
                self._opened_at = now
                self.log.warn(
                    "circuit {name} open for {cooldown}s after {failures} failures",
                    name=self.name, cooldown=self.cooldown, failures=self._failures)
        elif now >= self._next_probe():
            self._probe_failed_at = now
            self._probe_started = None

    def status(self) -> dict[str, Any]:
        """
        The breaker's state for the status endpoint.

        @return: C{state}, C{consecutive_failures}, C{threshold},
            C{cooldown}, C{probe_interval}, C{next_probe_in} (seconds until
            a probe may go: 0 when closed or due) and C{probing} (whether a
            probe is in flight).
        """
        now = self._clock.seconds()
        opened = self._opened_at is not None
        left = max(0.0, self._next_probe() - now) if opened else 0.0
        return {
            "state": self.state,
            "consecutive_failures": self._failures,
            "threshold": self.threshold,
            "cooldown": self.cooldown,
            "probe_interval": self.probe_interval,
            "next_probe_in": left,
            "probing": opened and self._probe_pending(now),
        }


class ModelBreakers:
    """
    The circuit breakers of one backend, by model.

    A model without a breaker is closed; a breaker is made at the model's
    first failure and dropped at its next success.  With C{limit} models
    failing at once, a further model takes the place of one whose breaker
    is not holding requests away, else it shares the overflow breaker
    (which then also governs every model without a breaker of its own,
    until one of them succeeds).
    """

    def __init__(
        self, clock: IReactorTime, *, threshold: int = 5, cooldown: float = 30.0,
        probe_interval: float = 5.0, limit: int = MODEL_LIMIT, name: str = "",
    ) -> None:
        """
        @param name: the backend's name, for log lines.
        @raise ValueError: on settings L{_check} refuses.
        """
        _check(threshold, cooldown, probe_interval)
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_interval = probe_interval
        self.limit = limit
        self.name = name
        self._clock = clock
        self._models: dict[str, CircuitBreaker] = {}
        self._overflow: CircuitBreaker | None = None
        #: Told when a model's own breaker opens (model, when) or closes
        #: (model, L{None}) here: how other processes hear of it.
        self.on_change: Callable[[str, float | None], None] | None = None

    def retune(self, threshold: int, cooldown: float, probe_interval: float) -> None:
        """
        New settings (a new configuration), for every breaker held.
        """
        _check(threshold, cooldown, probe_interval)
        self.threshold, self.cooldown, self.probe_interval = threshold, cooldown, probe_interval
        for breaker in self._held():
            breaker.threshold, breaker.cooldown = threshold, cooldown
            breaker.probe_interval = probe_interval

    def _held(self) -> list[CircuitBreaker]:
        extra = [self._overflow] if self._overflow is not None else []
        return list(self._models.values()) + extra

    def breaker(self, model: str) -> CircuitBreaker | None:
        """
        The breaker governing C{model}: its own, else the overflow one if
        there is one; L{None} means closed.
        """
        return self._models.get(model) or self._overflow

    def allow(self, model: str) -> bool:
        """
        Whether a request for C{model} may go now (see
        L{CircuitBreaker.allow}: a C{True} may make it the probe).
        """
        breaker = self._models.get(model) or self._overflow
        return breaker is None or breaker.allow()

    def record_success(self, model: str) -> None:
        """
        A request for C{model} succeeded: its breaker closes and is dropped.
        """
        breaker = self._models.pop(model, None)
        if breaker is None:
            breaker, self._overflow = self._overflow, None
        elif breaker.opened_at is not None and self.on_change is not None:
            self.on_change(model, None)
        if breaker is not None:
            breaker.record_success()

    def record_failure(self, model: str) -> None:
        """
        A request for C{model} failed: counted on its breaker, made now if
        it has none.
        """
        breaker = self._models.pop(model, None) or self._make(model)
        if breaker is not self._overflow:
            self._models[model] = breaker  # last failed, last evicted
        was_open = breaker.opened_at is not None
        breaker.record_failure()
        opened = breaker.opened_at
        if not was_open and opened is not None and breaker is not self._overflow \
                and self.on_change is not None:
            self.on_change(model, opened)

    def apply_open(self, model: str, opened_at: float) -> None:
        """
        Another process opened C{model}'s breaker at C{opened_at}: open it
        here too (made if need be; not when only the overflow one is left).
        """
        breaker = self._models.get(model) or self._make(model)
        if breaker is not self._overflow:
            self._models[model] = breaker
            breaker.open_since(opened_at)

    def apply_closed(self, model: str) -> None:
        """
        Another process saw C{model} succeed: its breaker here closes.
        """
        breaker = self._models.pop(model, None)
        if breaker is not None:
            breaker.record_success()

    def _make(self, model: str) -> CircuitBreaker:
        """
        A new breaker for C{model}, or the overflow one when every place is
        taken by a breaker that is holding requests away.
        """
        if len(model) <= LONGEST_MODEL:
            if len(self._models) >= self.limit:
                idle = next((m for m, b in self._models.items() if not b.holding), None)
                if idle is not None:
                    del self._models[idle]
            if len(self._models) < self.limit:
                return self._new(f"{self.name}:{model}")
        if self._overflow is None:
            self._overflow = self._new(f"{self.name}:{OTHER_MODELS}")
        return self._overflow

    def _new(self, name: str) -> CircuitBreaker:
        return CircuitBreaker(self._clock, threshold=self.threshold, cooldown=self.cooldown,
                              probe_interval=self.probe_interval, name=name)

    def status(self) -> dict[str, dict[str, Any]]:
        """
        The status of each failing model's breaker (the overflow one as
        C{"*"}); a model not listed is closed with no failures.
        """
        out = {model: b.status() for model, b in self._models.items()}
        if self._overflow is not None:
            out[OTHER_MODELS] = self._overflow.status()
        return out
