# -*- test-case-name: tests.test_affinity -*-
"""
How much of each key's prompts the upstream served from its prompt cache:
the prompt and cached tokens of the answers' C{usage}, per key name, for
the status endpoint (how well prompt-cache affinity works,
L{llmproxy.routing.affinity}).

Chat Completions report C{usage.prompt_tokens} and
C{usage.prompt_tokens_details.cached_tokens}; the Responses API
C{usage.input_tokens} and C{usage.input_tokens_details.cached_tokens}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(slots=True)
class Counts:
    """
    One key's totals: answers that reported usage, their prompt tokens,
    and how many of those were cached.
    """

    answers: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def shown(self) -> dict[str, Any]:
        """
        The status entry: the totals and the cached share (L{None} before
        any prompt token).
        """
        share = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None
        return {"answers": self.answers, "prompt_tokens": self.prompt_tokens,
                "cached_tokens": self.cached_tokens,
                "cached_share": None if share is None else round(share, 4)}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def tokens_of(usage: Mapping[str, Any]) -> tuple[int, int] | None:
    """
    The prompt and cached tokens of a C{usage} object of either dialect;
    L{None} when it names no prompt tokens.  Cached tokens are at most the
    prompt's (0 when not reported).
    """
    prompt = _count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    if prompt is None:
        prompt = _count(usage.get("input_tokens"))
        details = usage.get("input_tokens_details")
    if prompt is None:
        return None
    cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
    return prompt, min(cached or 0, prompt)


class PromptCacheCounts:
    """
    The totals of a backend's keys, by key name.
    """

    def __init__(self) -> None:
        self._counts: dict[str, Counts] = {}

    def record(self, name: str, usage: Mapping[str, Any]) -> None:
        """
        Count an answer of key C{name} whose usage is C{usage}.
        """
        tokens = tokens_of(usage)
        if tokens is None:
            return
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = Counts()
        counts.answers += 1
        counts.prompt_tokens += tokens[0]
        counts.cached_tokens += tokens[1]

    def shown(self, name: str) -> dict[str, Any]:
        """
        The status entry of key C{name}.
        """
        return (self._counts.get(name) or Counts()).shown()

    def inherit(self, previous: PromptCacheCounts, names: set[str]) -> None:
        """
        Take over C{previous}'s totals of the keys named C{names} (a reload).
        """
        for name in names & previous._counts.keys():
            old = previous._counts[name]
            self._counts[name] = Counts(old.answers, old.prompt_tokens, old.cached_tokens)


__all__ = ["Counts", "PromptCacheCounts", "tokens_of"]
