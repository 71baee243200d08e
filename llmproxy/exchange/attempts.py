# -*- test-case-name: tests.test_attempts,tests.test_failover -*-
"""
The attempts of one request: its route's targets × keys, in the failover
policy's order, with the key bookkeeping that makes one bad key never fail
a request while its backend has another.

This is the pure-ish half of the exchange: it decides what to try next and
how long to wait, drops the route elements that lack a key, and records
each attempt's verdict on its backend's key pool and on the circuit
breaker of its backend's model;
L{llmproxy.exchange.exchange} does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime

from llmproxy.backends.keypool import INVALID
from llmproxy.config import ApiKey
from llmproxy.errors import ProxyError
from llmproxy.exchange.outcome import Outcome, Verdict
from llmproxy.exchange.runtime import Upstreams
from llmproxy.routing.affinity import CONVERSATION, preference
from llmproxy.routing.plan import plan_attempts
from llmproxy.routing.resolve import Route, Target

#: Outcomes that condemn a key, not its backend.
KEY_OUTCOMES = frozenset({Outcome.RATE_LIMITED, Outcome.NEXT_KEY, Outcome.QUOTA})


@dataclass
class Slot:
    """
    One attempt: the route element (by position) and the key to use.

    @ivar ready_at: when it may be tried again: after a keyless element's
        429, or before a same-target retry (keyed elements also follow their
        key's cooldown).
    @ivar retries: the same-target retries it had (L{AttemptQueue.failed}).
    @ivar repeat: whether the request already tried this element and key.
    """

    index: int
    target: Target
    key: ApiKey | None
    ready_at: float = 0.0
    retries: int = 0
    repeat: bool = False


def _distinct(targets: Sequence[Target]) -> list[Target]:
    """
    The route's targets without repeats (same backend, model, pinned key
    and body): a target is never tried twice with the same key.
    """
    kept: list[Target] = []
    for target in targets:
        if not any((t.backend, t.model, t.key) == (target.backend, target.model, target.key)
                   and t.body == target.body for t in kept):
            kept.append(target)
    return kept


def keyed_route(route: Route, upstreams: Upstreams) -> Route:
    """
    The route without the elements whose backend needs a key it does not
    have; if that is every element, the error names what to set.
    """
    backends = upstreams.backends
    keyed = [t for t in route.targets
             if backends[t.backend].config.keys or not backends[t.backend].config.key_env]
    if keyed:
        return route if len(keyed) == len(route.targets) else replace(route, targets=tuple(keyed))
    first = route.targets[0]
    config = backends[first.backend].config
    raise ProxyError(
        f"No API key for backend {first.backend!r}: set {config.key_env}",
        status=500, type="server_error", code="missing_api_key",
    )


class AttemptQueue:
    """
    What to try next for one request.

    @ivar queue: the attempts still planned, in order.
    @ivar parked: rate-limited attempts that may be retried once their key
        (or, keyless, their backend) has cooled down.
    @ivar hold: an attempt to retry on the same target before anything
        else (L{failed}): nothing is taken until it is ready.
    """

    def __init__(
        self, route: Route, upstreams: Upstreams, clock: IReactorTime, default_cooldown: float,
        conversation: str | None = None,
    ) -> None:
        """
        @param conversation: the request's conversation key: its keys come
            in its affinity order (L{llmproxy.routing.affinity}) on the
            backends that keep one.
        """
        self.up = upstreams
        self.clock = clock
        self.default_cooldown = default_cooldown
        self.targets = _distinct(route.targets)
        rotation: dict[str, list[ApiKey]] = {}
        for target in self.targets:
            if target.key is None and target.backend not in rotation:
                rotation[target.backend] = self._ordered(target.backend, conversation)
        self.keys = [
            [k for k in upstreams.pools[t.backend].keys if k.name == t.key]
            if t.key is not None else rotation[t.backend]
            for t in self.targets
        ]
        self.queue = self._plan(route.policy)
        self.parked: list[Slot] = []
        self.hold: Slot | None = None
        self.tried: set[tuple[int, str | None]] = set()

    def _ordered(self, name: str, conversation: str | None) -> list[ApiKey]:
        """
        This request's order of backend C{name}'s keys: the conversation's
        when the backend keeps affinity, else the rotation's.
        """
        backend = self.up.backends.get(name)
        # A backend may rank its keys (an account's quota left).
        prefer = getattr(backend, "key_preference", None)
        if conversation is not None and backend is not None \
                and backend.config.affinity == CONVERSATION:
            return self.up.pools[name].ordered(preference(conversation, prefer), advance=False)
        return self.up.pools[name].ordered(prefer)

    def _plan(self, policy: str) -> list[Slot]:
        """
        The policy's order of element × key (elements by position).
        """
        if len(self.targets) == 1:
            # The common case, without the general planner: every key of
            # the one element (policy m: its first key; spares come later).
            target, keys = self.targets[0], self.keys[0]
            if not keys:
                return [Slot(0, target, None)]
            return [Slot(0, target, key) for key in (keys[:1] if policy in ("m", "ordered")
                                                      else keys)]
        elements = [(t.backend, str(i), len(self.keys[i])) for i, t in enumerate(self.targets)]
        return [self._slot(int(a.model), a.key_index) for a in plan_attempts(elements, policy)]

    def _slot(self, index: int, key_index: int | None) -> Slot:
        key = None if key_index is None else self.keys[index][key_index]
        return Slot(index, self.targets[index], key)

    @property
    def backends(self) -> set[str]:
        """
        The backends of the route.
        """
        return {t.backend for t in self.targets}

    def empty(self) -> bool:
        """
        Whether nothing is left to try, now or later.
        """
        return not self.queue and not self.parked and self.hold is None

    def _ready(self, slot: Slot) -> bool:
        if slot.ready_at > self.clock.seconds():
            return False
        return slot.key is None or self.up.pools[slot.target.backend].available(slot.key)

    def _free_key(self, slot: Slot) -> ApiKey | None:
        """
        A free key for C{slot}'s element that this request has neither
        tried nor queued for it.
        """
        queued = {s.key.name for s in self.queue if s.index == slot.index and s.key is not None}
        pool = self.up.pools[slot.target.backend]
        for key in self.keys[slot.index]:
            if key.name not in queued and (slot.index, key.name) not in self.tried \
                    and pool.available(key):
                return key
        return None

    def next(self) -> Slot | None:
        """
        Take the next attempt: the first whose key is free (a planned key
        that started cooling meanwhile is swapped for a free one) and whose
        model's circuit lets it go (closed, or its half-open probe); failing
        that, the first with a free key, since skipping open circuits must
        not leave nothing.  L{None} when every planned attempt has to wait.
        A held retry goes first, once ready; until then nothing goes.
        """
        if self.hold is not None:
            held = self._held()
            if held is not None or self.hold is not None:
                return held  # the retry, or None while it waits
        chosen = fallback = None
        for slot in self.queue:
            if not self._ready(slot):
                spare = self._free_key(slot) if slot.key is not None else None
                if spare is None:
                    continue
                slot.key = spare
            if self.up.breakers[slot.target.backend].allow(slot.target.model):
                chosen = slot
                break
            fallback = fallback or slot
        chosen = chosen or fallback
        if chosen is not None:
            self.queue.remove(chosen)
            self._taken(chosen)
        return chosen

    def _taken(self, slot: Slot) -> None:
        name = slot.key.name if slot.key is not None else None
        slot.repeat = (slot.index, name) in self.tried
        self.tried.add((slot.index, name))

    def _held(self) -> Slot | None:
        """
        The held retry if it may go now.  It is let go (and the queue goes
        on) when its circuit opened, or when its key now cools for longer
        than the hold allowed (another request's 429): it is parked then.
        """
        held = self.hold
        assert held is not None
        if self._ready(held):
            self.hold = None
            if self.up.breakers[held.target.backend].allow(held.target.model):
                self._taken(held)
                return held
        elif held.key is not None and self.up.pools[held.target.backend].state(
                held.key).cooldown_until > held.ready_at:
            self.hold = None
            self.parked.append(held)
        return None

    def failed(
        self, slot: Slot, outcome: Outcome, retry_after: float | None,
        same: float | None = None,
    ) -> None:
        """
        Record a failed attempt.  A key-level failure gives the element its
        next free key right away, whatever the policy; failing that, a
        same-target wait (C{same} seconds, L{llmproxy.exchange.retries})
        holds the attempt to be retried first; a rate-limited attempt is
        parked to be retried once it has cooled down; one that does not fit
        its model drops the element.
        """
        if outcome is Outcome.NEXT_ELEMENT:
            self._drop_model(slot.target)
            return
        if outcome in KEY_OUTCOMES and slot.key is not None and not any(
            s.index == slot.index for s in self.queue
        ):
            spare = self._free_key(slot)
            if spare is not None:
                self.queue.insert(0, Slot(slot.index, slot.target, spare))
                same = None
        if same is not None and outcome not in (Outcome.NEXT_KEY, Outcome.QUOTA) \
                and not self._element_free(slot.index):
            slot.retries += 1
            slot.ready_at = self.clock.seconds() + same
            self.hold = slot
            return
        if outcome is Outcome.RATE_LIMITED:
            if slot.key is None:
                wait = retry_after if retry_after is not None else self.default_cooldown
                slot.ready_at = self.clock.seconds() + wait
            self.parked.append(slot)

    def _element_free(self, index: int) -> bool:
        """
        Whether the element has another attempt queued that may go now.
        """
        return any(s.index == index and self._ready(s) for s in self.queue)

    def _drop_model(self, target: Target) -> None:
        """
        Forget every attempt of C{target}'s backend and model.
        """
        def other(s: Slot) -> bool:
            return (s.target.backend, s.target.model) != (target.backend, target.model)
        self.queue = [s for s in self.queue if other(s)]
        self.parked = [s for s in self.parked if other(s)]

    def elsewhere(self, target: Target) -> bool:
        """
        Whether any attempt is left on another backend or model than
        C{target}'s.
        """
        return any((s.target.backend, s.target.model) != (target.backend, target.model)
                   for s in self.queue + self.parked)

    def wake(self) -> None:
        """
        After a wait: parked attempts go back in the queue.
        """
        self.queue.extend(self.parked)
        self.parked = []

    def _wait_for(self, slot: Slot) -> float:
        now = self.clock.seconds()
        if slot.key is None:
            return max(0.0, slot.ready_at - now)
        cooling = self.up.pools[slot.target.backend].state(slot.key).cooldown_until
        return max(0.0, slot.ready_at - now, cooling - now)

    def wait(self) -> float | None:
        """
        Seconds until some queued or parked attempt may run (the held one,
        if any); L{None} when none ever will (every key exhausted or
        invalid for long).
        """
        if self.hold is not None:
            return self._wait_for(self.hold)
        waits = [self._wait_for(s) for s in self.queue + self.parked]
        return min(waits) if waits else None

    def all_invalid(self) -> bool:
        """
        Whether every waiting attempt's key was rejected by the upstream.
        """
        slots = self.queue + self.parked
        reasons = {self.up.pools[s.target.backend].state(s.key).reason
                   for s in slots if s.key is not None}
        return bool(slots) and reasons == {INVALID} and all(s.key is not None for s in slots)

    def quota_exhausted(self) -> bool:
        """
        Whether every key of every backend of the route is out of quota.
        """
        return all(self.up.pools[b].all_quota_exhausted() for b in self.backends)

    def soonest_key(self) -> float | None:
        """
        Seconds until the first key of the route's backends is free.
        """
        now = self.clock.seconds()
        waits = [
            max(0.0, pool.state(key).cooldown_until - now)
            for pool in (self.up.pools[b] for b in self.backends)
            for key in pool.keys
        ]
        return min(waits) if waits else None

    # bookkeeping: what an attempt's end says about its key and backend

    def record_success(self, slot: Slot, usage: Mapping[str, Any] | None = None) -> None:
        """
        The attempt was answered and relayed: its backend's model works,
        and so does its key, whose prompt-cache totals count the answer's
        C{usage}.
        """
        self.up.breakers[slot.target.backend].record_success(slot.target.model)
        if slot.key is not None:
            pool = self.up.pools[slot.target.backend]
            pool.mark_ok(slot.key)
            if usage is not None:
                pool.prompt_cache.record(slot.key.name, usage)

    def record_failure(self, slot: Slot) -> None:
        """
        The attempt's backend failed it (no answer, or a broken one).
        """
        self.up.breakers[slot.target.backend].record_failure(slot.target.model)

    def record_verdict(self, slot: Slot, verdict: Verdict) -> None:
        """
        The backend answered with an error status: a failover-eligible one
        counts against the backend's model; any other is the key's or the
        client's business, and cools the key when it says so.
        """
        backend, key = slot.target.backend, slot.key
        outcome = verdict.outcome
        if outcome is Outcome.RETRY_NEXT:
            self.up.breakers[backend].record_failure(slot.target.model)
            return
        self.up.breakers[backend].record_success(slot.target.model)
        if key is None:
            return
        pool = self.up.pools[backend]
        if outcome is Outcome.RATE_LIMITED:
            pool.mark_rate_limited(key, verdict.retry_after, exact=verdict.exact)
        elif outcome is Outcome.NEXT_KEY:
            pool.mark_invalid(key, seconds=verdict.retry_after)
        elif outcome is Outcome.QUOTA:
            pool.mark_quota(key)
