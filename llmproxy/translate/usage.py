# -*- test-case-name: tests.test_usage -*-
"""
A usage object's counts, whichever dialect reported it: Chat Completions'
C{prompt_tokens} / C{completion_tokens} (with C{prompt_tokens_details.
cached_tokens} and C{completion_tokens_details.reasoning_tokens}) or
Responses' C{input_tokens} / C{output_tokens} (with C{input_tokens_details}
and C{output_tokens_details}), as one compact line:

    prompt=12 completion=5 total=17 cached=0 reasoning=0

(the C{x-llmproxy-usage} header and the access log).  A count the upstream
did not report is 0, but for C{total}, which is then the sum of the other
two.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["usage_counts", "usage_line"]


def _count(value: Any) -> int:
    """
    C{value} when it is a count, else 0.
    """
    return value if type(value) is int and value >= 0 else 0


def _detail(usage: Mapping[str, Any], names: tuple[str, str], field: str) -> int:
    """
    A count inside the first of the detail objects C{names} that is one.
    """
    details = usage.get(names[0]) or usage.get(names[1])
    # a JSON object is a dict (isinstance on typing's Mapping costs µs)
    return _count(details.get(field)) if type(details) is dict else 0


_CACHED = ("prompt_tokens_details", "input_tokens_details")
_REASONING = ("completion_tokens_details", "output_tokens_details")


def usage_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """
    The counts of a usage object of either dialect, in the line's order.
    """
    get = usage.get
    prompt = _count(get("prompt_tokens")) or _count(get("input_tokens"))
    completion = _count(get("completion_tokens")) or _count(get("output_tokens"))
    return {"prompt": prompt, "completion": completion,
            "total": _count(get("total_tokens")) or prompt + completion,
            "cached": _detail(usage, _CACHED, "cached_tokens"),
            "reasoning": _detail(usage, _REASONING, "reasoning_tokens")}


def usage_line(usage: Mapping[str, Any]) -> str:
    """
    The counts of C{usage} as C{name=count} pairs, space separated.
    """
    c = usage_counts(usage)
    return (f"prompt={c['prompt']} completion={c['completion']} total={c['total']} "
            f"cached={c['cached']} reasoning={c['reasoning']}")
