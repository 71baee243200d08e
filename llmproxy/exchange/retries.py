# -*- test-case-name: tests.test_retries -*-
"""
When to try the same target again (same backend, model and key) before
the next route element, and after how long; no I/O.

Two failures are worth a second try on the target the user put first:

 - a 429 whose retry hint is short (at most C{retry_same_max_wait}): the
   attempt waits the hint and goes again, instead of failing over at once;
   without a hint it fails over (the key cools for the default cooldown);
 - a transient failure: a 5xx, or a connection refused, reset or broken
   before the answer's first event.  A timeout is not retried on the same
   target: it already spent the backend's whole timeout of the request's
   budget, and the next element is the better bet.  Neither is any other
   4xx: the same request would get the same answer.

Each target gets at most C{retries_per_target} such retries in one
request.  The wait is C{max(hint, backoff)}: the upstream's retry hint
when it gave one (so a target is never asked again within its
C{Retry-After}), and at least a full-jitter exponential backoff
(C{draw × min(cap, base × 2^n)}, C{draw} in [0, 1) from the runtime's
injected jitter source).  A wait that would reach the end of the
request's budget is not taken: the request fails over instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmproxy.config import FailureConfig
from llmproxy.exchange.outcome import Outcome


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """
    The same-target retry settings of one configuration.

    @ivar retries: retries of one target per request.
    @ivar base: the backoff of the first retry, before jitter.
    @ivar cap: the longest wait for the same target: C{retry_same_max_wait}
        within C{max_wait} (the loop gives up on longer waits).
    """

    retries: int
    base: float
    cap: float

    @classmethod
    def of(cls, failure: FailureConfig) -> RetryPolicy:
        return cls(failure.retries_per_target, failure.retry_backoff_base,
                   min(failure.retry_same_max_wait, failure.max_wait))


def backoff(retry: int, base: float, cap: float, draw: float) -> float:
    """
    The full-jitter backoff before retry number C{retry} (from 0): a
    C{draw} in [0, 1] of C{min(cap, base × 2^retry)}.
    """
    ceiling = cap if retry >= 64 else min(cap, base * (2 ** retry))
    return max(0.0, min(1.0, draw)) * ceiling


def same_target_wait(
    policy: RetryPolicy, outcome: Outcome, transient: bool, retry_after: float | None,
    retries: int, time_left: float, draw: float,
) -> float | None:
    """
    How long to wait before trying a failed attempt's target again, or
    L{None} to move on.

    @param outcome: the failure's outcome.
    @param transient: whether the failure was a 5xx or a broken connection.
    @param retry_after: the upstream's retry hint, if any.
    @param retries: the same-target retries the target had already.
    @param time_left: seconds left of the request's budget.
    @param draw: the jitter, in [0, 1].
    """
    if retries >= policy.retries:
        return None
    if outcome is Outcome.RATE_LIMITED:
        if retry_after is None:
            return None
    elif not (transient and outcome is Outcome.RETRY_NEXT):
        return None
    hint = retry_after or 0.0
    if hint > policy.cap:
        return None
    wait = max(hint, backoff(retries, policy.base, policy.cap, draw))
    return wait if wait < time_left else None


__all__ = ["RetryPolicy", "backoff", "same_target_wait"]
