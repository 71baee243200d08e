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


def _count(data: Any, *names: str) -> int:
    """
    The first of C{names} in C{data} that is a count, else 0.
    """
    if not isinstance(data, Mapping):
        return 0
    for name in names:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def usage_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """
    The counts of a usage object of either dialect, in the line's order.
    """
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    completion = _count(usage, "completion_tokens", "output_tokens")
    total = _count(usage, "total_tokens") or prompt + completion
    cached = _count(usage.get("prompt_tokens_details") or usage.get("input_tokens_details"),
                    "cached_tokens")
    reasoning = _count(usage.get("completion_tokens_details")
                       or usage.get("output_tokens_details"), "reasoning_tokens")
    return {"prompt": prompt, "completion": completion, "total": total, "cached": cached,
            "reasoning": reasoning}


def usage_line(usage: Mapping[str, Any]) -> str:
    """
    The counts of C{usage} as C{name=count} pairs, space separated.
    """
    return " ".join(f"{name}={count}" for name, count in usage_counts(usage).items())
