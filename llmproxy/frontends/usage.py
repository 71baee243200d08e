# -*- test-case-name: tests.test_codex_backend -*-
"""
The usage limits of the subscription accounts llmproxy serves with, pooled,
in the shape of ChatGPT's own usage status (C{GET /backend-api/wham/usage},
what the Codex CLI reads): a Codex CLI pointed at llmproxy sees the limits
of the pool, not of one account, and does not stop while some account can
still serve.

Backends that have such accounts offer them through an optional method,
C{quota()}: each account's key name, plan, C{limited_until} and its
C{primary} and C{secondary} windows (C{used_percent}, C{window_minutes},
C{resets_at}), or L{None}.

Pooled, a window's C{used_percent} is the mean over the accounts (an
account without data has used nothing of it, a limited one all of it),
and it resets when the first account's window does.  The whole pool is
limited (C{limit_reached}) when every account is.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

from llmproxy.errors import ProxyError
from llmproxy.exchange.runtime import Runtime

#: The plan shown when no account has said its own.
DEFAULT_PLAN = "plus"


class Pooled(NamedTuple):
    """
    One account, as the pool sees it.

    @ivar limited_until: when it may serve again, if it may not now.
    """

    quota: Mapping[str, Any]
    limited_until: float | None


async def accounts(runtime: Runtime, now: float) -> list[Pooled]:
    """
    Every account of the runtime's backends that have some, with whether
    it is limited now (by its usage limit, or cooling in its key pool).
    """
    found = []
    up = runtime.upstreams
    for name, backend in up.backends.items():
        quota = getattr(backend, "quota", None)
        if quota is None:
            continue
        pool = up.pools[name]
        keys = {key.name: key for key in pool.keys}
        for account in await quota():
            key = keys.get(account["key"])
            until = max(account.get("limited_until") or 0.0,
                        pool.state(key).cooldown_until if key is not None else 0.0)
            found.append(Pooled(account, until if until > now else None))
    return found


def _window(which: str, pooled: Sequence[Pooled], now: float) -> dict[str, int] | None:
    """
    One window across the accounts, or L{None} when none reports it.
    """
    used: list[float] = []
    resets: list[float] = []
    minutes: list[int] = []
    for account in pooled:
        window = account.quota.get(which)
        share = 0.0
        if window is not None:
            minutes += [window["window_minutes"]] if window.get("window_minutes") else []
            reset = window.get("resets_at")
            if reset is None or reset > now:
                share = float(window["used_percent"])
                resets += [reset] if reset is not None else []
        if account.limited_until is not None and (window is not None or which == "primary"):
            share = 100.0
            resets.append(account.limited_until)
        used.append(share)
    if not minutes and not resets and not any(used):
        return None
    length = max(minutes, default=0) * 60
    reset_at = min(resets) if resets else now + length
    return {
        "used_percent": round(sum(used) / len(used)),
        "limit_window_seconds": length,
        "reset_after_seconds": max(0, math.ceil(reset_at - now)),
        "reset_at": math.ceil(reset_at),
    }


def usage_payload(pooled: Sequence[Pooled], now: float) -> dict[str, Any]:
    """
    The pooled usage status of C{pooled} (not empty).
    """
    plans = [a.quota["plan"] for a in pooled if isinstance(a.quota.get("plan"), str)]
    allowed = any(a.limited_until is None for a in pooled)
    return {
        "plan_type": plans[0] if plans else DEFAULT_PLAN,
        "rate_limit": {
            "allowed": allowed,
            "limit_reached": not allowed,
            "primary_window": _window("primary", pooled, now),
            "secondary_window": _window("secondary", pooled, now),
        },
        "credits": None,
    }


async def pooled_usage(runtime: Runtime, now: float) -> dict[str, Any]:
    """
    The pooled usage status of the runtime's accounts.

    @raise ProxyError: 404 when no backend has accounts.
    """
    pooled = await accounts(runtime, now)
    if not pooled:
        raise ProxyError("No backend of this llmproxy has ChatGPT accounts", status=404,
                         type="invalid_request_error", code="not_found")
    return usage_payload(pooled, now)


__all__ = ["DEFAULT_PLAN", "Pooled", "accounts", "pooled_usage", "usage_payload"]
