# -*- test-case-name: tests.test_routing_aliases -*-
"""
Model name rewrites (C{model_aliases}).

An alias is a regular expression and a replacement.  The first rule whose
pattern matches (Python C{re.match}: anchored at the start only) rewrites
the model with C{match.expand}, so C{\\1} and C{\\g<name>} work.  A
replacement may be any selector text, including C{a|b} and C{?params}.

Rules are compiled with the configuration (L{llmproxy.config.compile_alias},
re-exported here): bad patterns and replacements raise L{ValueError} then,
so a broken configuration fails at startup, not per request.
"""

from __future__ import annotations

from typing import Sequence

from llmproxy.config import AliasRule, compile_alias, parse_alias_flag

__all__ = [
    "AliasRule",
    "compile_alias",
    "parse_alias_flag",
    "apply_aliases",
    "alias_targets",
]


def apply_aliases(rules: Sequence[AliasRule], model: str) -> str | None:
    """
    Rewrite a model name with the first matching rule.

    @param rules: the rules, in priority order.
    @param model: the model (selector) text the client asked for.
    @return: the expanded replacement of the first rule whose pattern
        matches at the start of C{model}, or L{None} if none matches.
    """
    for rule in rules:
        match = rule.pattern.match(model)
        if match is not None:
            return match.expand(rule.replacement)
    return None


def alias_targets(rules: Sequence[AliasRule]) -> tuple[str, ...]:
    """
    The literal replacements, for the C{/v1/models} listing.

    A replacement containing a backslash uses template syntax (a group
    reference or an escape) and is left out.

    @param rules: the rules.
    @return: the distinct literal replacements, in rule order.
    """
    literal = (rule.replacement for rule in rules if "\\" not in rule.replacement)
    return tuple(dict.fromkeys(literal))
