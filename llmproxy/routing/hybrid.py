# -*- test-case-name: tests.test_hybrid_pure -*-
"""
The hybrid selector, C{hybrid:[reasoning,execution][?setting=value&...]}:
a reasoning model plans, an execution model answers (behaviour.md section
10).

C{reasoning} and C{execution} are selectors (C{backend:model?params}), or
failover lists and route names; the two are separated by the one comma
outside any query value's brackets (a comma inside a query value is sent
percent-encoded, C{%2C}).  The optional query after C{]} overrides the
hybrid settings (L{llmproxy.config.hybrid.SETTING_NAMES}).  A failover list
may hold hybrid elements: C{|} is only a separator outside brackets.

Errors are L{InvalidRequest} with C{param="model"} and
C{code="invalid_model_selector"}, like every selector error.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmproxy.config.hybrid import HYBRID, SETTING_NAMES, HybridConfig, setting_value, with_settings
from llmproxy.errors import InvalidRequest
from llmproxy.routing.selector import ERROR_CODE, MAX_ROUTE_ELEMENTS, parse_query

_PREFIX = HYBRID + ":["

__all__ = [
    "HYBRID", "HybridSelector", "check_settings", "decide", "is_hybrid", "parse_hybrid",
    "split_failover", "with_settings",
]


@dataclass(frozen=True)
class HybridSelector:
    """
    One parsed hybrid selector: the two phases' selector texts and the raw
    setting overrides.
    """

    reasoning: str
    execution: str
    params: tuple[tuple[str, str], ...] = ()


def _invalid(text: str, reason: str) -> InvalidRequest:
    shown = text if len(text) <= 80 else text[:80] + "..."
    return InvalidRequest(f"Invalid model selector {shown!r}: {reason}", code=ERROR_CODE,
                          param="model")


def is_hybrid(text: str) -> bool:
    """
    Whether C{text} (one failover element) is a hybrid selector.
    """
    return text.strip()[:len(_PREFIX)].lower() == _PREFIX


def split_failover(text: str) -> list[str]:
    """
    The elements of failover list C{text}, split at the C{|} outside
    brackets.
    """
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth = max(0, depth - 1)
        elif c == "|" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if len(parts) > MAX_ROUTE_ELEMENTS:
        raise _invalid(text, f"a failover list may have at most {MAX_ROUTE_ELEMENTS} elements, "
                             f"not {len(parts)}")
    return parts


def parse_hybrid(text: str) -> HybridSelector:
    """
    Parse C{hybrid:[reasoning,execution]} with its optional C{?query}.
    """
    stripped = text.strip()
    if not is_hybrid(stripped):
        raise _invalid(stripped, "a hybrid selector starts with 'hybrid:['")
    close = stripped.rfind("]")
    if close < 0:
        raise _invalid(stripped, "the hybrid selector's '[' is never closed")
    inner, rest = stripped[len(_PREFIX):close], stripped[close + 1:]
    if rest and not rest.startswith("?"):
        raise _invalid(stripped, "only '?setting=value' may follow the hybrid selector's ']'")
    if "[" in inner or "]" in inner:
        raise _invalid(stripped, "a hybrid selector's phase cannot be hybrid")
    phases = inner.split(",")
    if len(phases) != 2 or not all(p.strip() for p in phases):
        raise _invalid(stripped, "expected hybrid:[reasoning_backend:model,"
                                 "execution_backend:model] (two selectors, one comma)")
    params = parse_query(stripped, rest[1:]) if rest else ()
    check_settings(stripped, params)
    return HybridSelector(phases[0].strip(), phases[1].strip(), params)


def check_settings(text: str, params: tuple[tuple[str, str], ...]) -> None:
    """
    Reject an unknown setting or a bad value in a hybrid selector's query.
    """
    for name, value in params:
        if name not in SETTING_NAMES:
            raise _invalid(text, f"unknown hybrid setting {name!r}; known: "
                                 f"{', '.join(SETTING_NAMES)}")
        try:
            setting_value(name, value)
        except ValueError as e:
            raise _invalid(text, f"hybrid setting {name!r} must be {e}, not {value!r}")


def decide(settings: HybridConfig, turn: int | None, tuned: bool, draw: float) -> str | None:
    """
    Whether a request of a hybrid route gets the reasoning phase: L{None}
    when it does, else why not (C{tuned}: edit precision sets the
    probability to 0 for it; C{probability}: the draw in [0, 1) missed).
    A conversation's C{turn} (0 for its first request; L{None} without a
    conversation) below C{force_turns} always gets it, unless tuned.
    """
    if tuned:
        return "tuned"
    if turn is not None and turn < settings.force_turns:
        return None
    return None if draw < settings.probability else "probability"
