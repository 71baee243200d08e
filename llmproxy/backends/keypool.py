# -*- test-case-name: tests.test_keypool -*-
"""
Per-backend API key pools: round-robin rotation and cooldowns.

A L{KeyPool} hands out a backend's keys in round-robin order and remembers
which keys are cooling down: rate-limited keys for the upstream's retry hint
(or a default), invalid keys (401/403) and quota-exhausted keys for a long,
configurable time.

Keys are only ever shown by name (C{openai#2}, C{OPENAI_API_KEY_3}); their
values never appear in C{repr}, C{str}, logs or status output.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llmproxy.backends.prompt_cache import PromptCacheCounts
from llmproxy.config import ApiKey

RATE_LIMITED = "rate_limited"
INVALID = "invalid"
QUOTA = "quota"


@dataclass
class KeyState:
    """
    The mutable health of one key.

    @ivar cooldown_until: unix time until which the key must not be used.
    @ivar reason: why it is (or was last) cooling: C{"rate_limited"},
        C{"invalid"} or C{"quota"}; L{None} when healthy.
    @ivar failures: failures since the last success.
    @ivar last_error: a short description of the last failure (never the
        key value).
    """

    cooldown_until: float = 0.0
    reason: str | None = None
    failures: int = 0
    last_error: str | None = None


class KeyPool:
    """
    The rotating set of keys of one backend.

    @ivar backend: the backend name, for logs.
    @ivar keys: the keys, in configuration order.
    """

    log = Logger()

    def __init__(
        self,
        backend: str,
        keys: Sequence[ApiKey],
        clock: IReactorTime,
        *,
        default_cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        auth_cooldown: float = 3600.0,
        quota_cooldown: float = 3600.0,
    ) -> None:
        """
        @param backend: the backend name.
        @param keys: its keys; may be empty (keyless backend).  Names must be
            unique.
        @param clock: the time source.
        @param default_cooldown: seconds a rate-limited key rests when the
            upstream gave no retry hint.
        @param max_cooldown: upper bound on a rate-limit cooldown.
        @param auth_cooldown: seconds an invalid (401/403) key rests.
        @param quota_cooldown: seconds a quota-exhausted key rests.
        @raise ValueError: on duplicate key names or negative durations.
        """
        names = [key.name for key in keys]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate key names for backend {backend!r}")
        durations = (default_cooldown, max_cooldown, auth_cooldown, quota_cooldown)
        if any(d < 0 for d in durations):
            raise ValueError("cooldowns must not be negative")
        self.backend = backend
        self.keys: tuple[ApiKey, ...] = tuple(keys)
        self._clock = clock
        self._default_cooldown = default_cooldown
        self._max_cooldown = max_cooldown
        self._auth_cooldown = auth_cooldown
        self._quota_cooldown = quota_cooldown
        self._states: dict[str, KeyState] = {name: KeyState() for name in names}
        self._counter = 0
        #: What the upstream served from its prompt cache, per key.
        self.prompt_cache = PromptCacheCounts()
        #: Told of each cooldown this process learns (key name, deadline,
        #: reason, error): how other processes hear of it (shared state).
        self.on_cool: Callable[[str, float, str, str], None] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"<KeyPool {self.backend!r} keys={[k.name for k in self.keys]}>"

    def _state(self, key: ApiKey) -> KeyState:
        """
        The state of C{key}.

        @raise KeyError: if C{key} does not belong to this pool.
        """
        state = self._states.get(key.name)
        if state is None or key not in self.keys:
            raise KeyError(f"{key.name} is not a key of backend {self.backend}")
        return state

    def _cooling(self, state: KeyState) -> bool:
        """
        Whether C{state} describes a key in an active cooldown.
        """
        return self._clock.seconds() < state.cooldown_until

    def state(self, key: ApiKey) -> KeyState:
        """
        A snapshot (copy) of C{key}'s state.

        @raise KeyError: if C{key} does not belong to this pool.
        """
        return replace(self._state(key))

    def ordered(
        self, prefer: Callable[[ApiKey], float] | None = None, *, advance: bool = True
    ) -> list[ApiKey]:
        """
        This request's key order; advances the rotation by one (unless not
        C{advance}: an order that C{prefer} decides leaves the rotation to
        the other requests).

        Keys come in round-robin order starting at the rotation counter, with
        the available keys first (so index 0 is the first available key) and
        the cooling ones after them, soonest free first.

        @param prefer: a score per key (its backend's hint, e.g. how much of
            an account's quota window is left): the available keys come
            highest first, in round-robin order among equals.
        @return: every key once; empty for a keyless backend.
        """
        if not self.keys:
            return []
        start = self._counter % len(self.keys)
        if advance:
            self._counter = start + 1
        rotated = self.keys[start:] + self.keys[:start]
        states = self._states
        free = [k for k in rotated if not self._cooling(states[k.name])]
        if prefer is not None:
            free.sort(key=lambda k: -prefer(k))
        cooling = [k for k in rotated if self._cooling(states[k.name])]
        cooling.sort(key=lambda k: states[k.name].cooldown_until)
        return free + cooling

    def available(self, key: ApiKey) -> bool:
        """
        Whether C{key} may be used now.

        @raise KeyError: if C{key} does not belong to this pool.
        """
        return not self._cooling(self._state(key))

    def next_free_in(self) -> float | None:
        """
        Seconds until the soonest key is free.

        @return: C{0.0} if a key is free now, L{None} for an empty pool.
        """
        if not self.keys:
            return None
        now = self._clock.seconds()
        soonest = min(s.cooldown_until for s in self._states.values())
        return max(0.0, soonest - now)

    def mark_ok(self, key: ApiKey) -> None:
        """
        Record a success: the key works, so any cooldown is lifted.

        @raise KeyError: if C{key} does not belong to this pool.
        """
        state = self._state(key)
        state.failures = 0
        state.reason = None
        state.cooldown_until = 0.0

    def mark_rate_limited(
        self, key: ApiKey, retry_after: float | None, *, error: str | None = None,
        exact: bool = False,
    ) -> None:
        """
        Record a 429: cool the key for C{retry_after} seconds (the default
        cooldown when L{None} or negative), at most C{max_cooldown}.  An
        existing later deadline is kept.

        @param error: optional safe description for the status output.
        @param exact: C{retry_after} is when the key's own limit resets (a
            subscription's usage window), not a hint: no C{max_cooldown}.
        @raise KeyError: if C{key} does not belong to this pool.
        """
        if retry_after is None or retry_after < 0:
            retry_after, exact = self._default_cooldown, False
        seconds = retry_after if exact else min(retry_after, self._max_cooldown)
        self._cool(key, seconds, RATE_LIMITED, error or "rate limited (429)")

    def mark_invalid(
        self, key: ApiKey, *, error: str | None = None, seconds: float | None = None
    ) -> None:
        """
        Record a 401/403: the key rests for C{auth_cooldown}, or for
        C{seconds} when the refusal said how long (a login that a local
        file can fix at any moment says 0).

        @param error: optional safe description for the status output.
        @raise KeyError: if C{key} does not belong to this pool.
        """
        self._cool(key, self._auth_cooldown if seconds is None else seconds, INVALID,
                   error or "rejected (401/403)")

    def mark_quota(self, key: ApiKey, *, error: str | None = None) -> None:
        """
        Record an C{insufficient_quota}: the key rests for C{quota_cooldown}.

        @param error: optional safe description for the status output.
        @raise KeyError: if C{key} does not belong to this pool.
        """
        self._cool(key, self._quota_cooldown, QUOTA, error or "insufficient_quota")

    def _cool(self, key: ApiKey, seconds: float, reason: str, error: str) -> None:
        """
        Start (or extend) a cooldown, keeping the later deadline.

        The reason follows the deadline that wins (an expired cooldown's
        deadline is in the past, so it always loses).
        """
        state = self._state(key)
        deadline = self._clock.seconds() + seconds
        state.failures += 1
        state.last_error = error
        if deadline >= state.cooldown_until:
            state.cooldown_until = deadline
            state.reason = reason
        if self.on_cool is not None and state.reason is not None:
            self.on_cool(key.name, state.cooldown_until, state.reason, error)
        self.log.info(
            "key {key} of {backend} cooling for {seconds:.1f}s: {reason}",
            key=key.name,
            backend=self.backend,
            seconds=max(0.0, state.cooldown_until - self._clock.seconds()),
            reason=state.reason,
        )

    def apply_cooldown(self, name: str, until: float, reason: str, error: str) -> None:
        """
        A cooldown another process learnt: the key named C{name} rests
        until C{until} (a later deadline already known is kept).  A name
        this pool does not have is ignored.
        """
        state = self._states.get(name)
        if state is None or until <= state.cooldown_until:
            return
        state.cooldown_until, state.reason, state.last_error = until, reason, error

    def inherit(self, previous: KeyPool) -> None:
        """
        Take over the health (and prompt-cache totals) of the keys
        C{previous} also has (same name and value) and its place in the
        rotation, so that a new pool for the same backend (a reload) keeps
        the cooldowns.
        """
        for key in self.keys:
            if key in previous.keys:
                self._states[key.name] = replace(previous._states[key.name])
        self._counter = previous._counter
        self.prompt_cache.inherit(previous.prompt_cache,
                                  {k.name for k in self.keys if k in previous.keys})

    def _current_reason(self, state: KeyState) -> str | None:
        """
        The reason of an active cooldown, L{None} if the key is usable.
        """
        return state.reason if self._cooling(state) else None

    def all_quota_exhausted(self) -> bool:
        """
        Whether no key can be used because of quota.

        True when the pool has keys, none is usable or merely rate-limited,
        and at least one is out of quota (the others, if any, being invalid).
        """
        reasons = {self._current_reason(s) for s in self._states.values()}
        return bool(self.keys) and QUOTA in reasons and reasons <= {QUOTA, INVALID}

    def status(self) -> list[dict[str, Any]]:
        """
        Per-key health for the status endpoint; never includes a key value.

        @return: one dict per key, in configuration order, with C{name},
            C{state} (C{ok}, C{rate_limited}, C{invalid} or C{quota}),
            C{cooldown_left}, C{recent_failures} and C{last_error}.
        """
        now = self._clock.seconds()
        return [self._key_status(key, now) for key in self.keys]

    def _key_status(self, key: ApiKey, now: float) -> dict[str, Any]:
        """
        The status entry of one key.
        """
        state = self._states[key.name]
        return {
            "name": key.name,
            "state": self._current_reason(state) or "ok",
            "cooldown_left": max(0.0, state.cooldown_until - now),
            "recent_failures": state.failures,
            "last_error": state.last_error,
        }
