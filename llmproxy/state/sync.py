# -*- test-case-name: tests.test_state_sync -*-
"""
Key pools, circuit breakers and subscription accounts' usage windows
across processes: what one learns, the others apply.

The hot path keeps reading this process's own L{KeyPool}s and
L{ModelBreakers}; L{FactSync} hooks them so that a cooldown or a circuit
this process learns is published (L{StateStore.publish}, no waiting), and
applies the facts other processes publish to the pools and breakers of
the runtime serving now.  Nothing here runs for a request that learns
nothing.
"""

from __future__ import annotations

from typing import Callable, Mapping

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llmproxy.backends.base import Backend
from llmproxy.backends.codex import CodexBackend, Window
from llmproxy.backends.health import ModelBreakers
from llmproxy.backends.keypool import KeyPool
from llmproxy.state.base import (
    ACCOUNT, CIRCUIT, KEY_COOLED, Fact, StateStore, StateUnavailable,
)

#: How long an account's usage windows hold when no reset is known (s).
ACCOUNT_KEPT = 3600.0


class FactSync:
    """
    Publishes what the pools and breakers of C{pools()} / C{breakers()}
    learn and applies what other processes learnt.

    @ivar pools: the key pools serving now, by backend name.
    @ivar breakers: the circuit breakers serving now, by backend name.
    """

    log = Logger()

    def __init__(
        self, state: StateStore, clock: IReactorTime,
        pools: Callable[[], Mapping[str, KeyPool]],
        breakers: Callable[[], Mapping[str, ModelBreakers]],
        backends: Callable[[], Mapping[str, Backend]] = dict,
    ) -> None:
        self.state = state
        self.clock = clock
        self.pools = pools
        self.breakers = breakers
        self.backends = backends
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> Deferred[None]:
        """
        Hook the pools and breakers, listen to the others, and apply the
        facts current now (a store that does not answer is caught up with
        when it is back).
        """
        self.attach()
        self._unsubscribe = self.state.subscribe(self.apply)
        return Deferred.fromCoroutine(self._current())

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def _current(self) -> None:
        try:
            facts = await self.state.facts()
        except CancelledError:
            raise
        except StateUnavailable:
            return
        for fact in facts:
            if fact.origin != self.state.origin:
                self.apply(fact)

    def attach(self) -> None:
        """
        Hook the pools and breakers serving now (again after a reload:
        new ones are not hooked yet).
        """
        for name, pool in self.pools().items():
            pool.on_cool = self._cooled(name)
        for name, breakers in self.breakers().items():
            breakers.on_change = self._circuit(name)
        for name, backend in self.backends().items():
            if isinstance(backend, CodexBackend):
                backend.on_windows = self._windows(name)

    def _cooled(self, backend: str) -> Callable[[str, float, str, str], None]:
        def publish(key: str, until: float, reason: str, error: str) -> None:
            self.state.publish(Fact(KEY_COOLED, backend, key, until, reason, {"error": error}))
        return publish

    def _circuit(self, backend: str) -> Callable[[str, float | None], None]:
        def publish(model: str, opened_at: float | None) -> None:
            breakers = self.breakers().get(backend)
            if opened_at is None or breakers is None:
                fact = Fact(CIRCUIT, backend, model, 0.0, "closed")
            else:
                fact = Fact(CIRCUIT, backend, model, opened_at + breakers.cooldown, "open",
                            {"opened_at": opened_at})
            self.state.publish(fact)
        return publish

    def _windows(self, backend: str) -> Callable[[str, dict[str, Window]], None]:
        def publish(key: str, windows: dict[str, Window]) -> None:
            resets = [w.resets_at for w in windows.values() if w.resets_at is not None]
            until = max(resets, default=self.clock.seconds() + ACCOUNT_KEPT)
            self.state.publish(Fact(ACCOUNT, backend, key, until, "windows", {
                "windows": {which: w.shown() for which, w in windows.items()}}))
        return publish

    def apply(self, fact: Fact) -> None:
        """
        Apply another process's fact to the pools and breakers serving now
        (a backend or key this configuration lacks is ignored; so is a
        cooldown or an open circuit already over).
        """
        if fact.kind == KEY_COOLED:
            pool = self.pools().get(fact.backend)
            if pool is not None and fact.until > self.clock.seconds():
                pool.apply_cooldown(fact.subject, fact.until, fact.reason,
                                    str(fact.detail.get("error", fact.reason)))
        elif fact.kind == ACCOUNT:
            self._apply_windows(fact)
        elif fact.kind == CIRCUIT:
            breakers = self.breakers().get(fact.backend)
            if breakers is None:
                return
            opened_at = fact.detail.get("opened_at")
            if fact.reason == "open" and isinstance(opened_at, (int, float)) \
                    and fact.until > self.clock.seconds():
                breakers.apply_open(fact.subject, float(opened_at))
            elif fact.reason == "closed":
                breakers.apply_closed(fact.subject)


    def _apply_windows(self, fact: Fact) -> None:
        backend = self.backends().get(fact.backend)
        shown = fact.detail.get("windows")
        if not isinstance(backend, CodexBackend) or not isinstance(shown, dict) \
                or fact.until <= self.clock.seconds():
            return
        try:
            windows = {which: Window(float(w["used_percent"]), w.get("window_minutes"),
                                     w.get("resets_at")) for which, w in shown.items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return  # not what this version writes
        backend.apply_windows(fact.subject, windows)


__all__ = ["ACCOUNT_KEPT", "FactSync"]
