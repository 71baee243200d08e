# -*- test-case-name: tests.test_routing_aliases -*-
"""
Model name rewrites (C{model_aliases}).

An alias is a regular expression and a replacement.  The first rule whose
pattern matches (Python C{re.match}: anchored at the start only) rewrites
the model with C{match.expand}, so C{\\1} and C{\\g<name>} work.  A
replacement may be any selector text, including C{a|b} and C{?params}.

Bad patterns and replacements raise L{ValueError} when the rule is
compiled, so a broken configuration fails at startup, not per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "AliasRule",
    "compile_alias",
    "parse_alias_flag",
    "apply_aliases",
    "alias_targets",
]


@dataclass(frozen=True)
class AliasRule:
    """
    One rewrite rule.

    @ivar pattern: the compiled pattern, applied with C{pattern.match}.
    @ivar replacement: the C{match.expand} template producing the new
        selector text.
    """

    pattern: re.Pattern[str]
    replacement: str


def _check_template(compiled: re.Pattern[str], replacement: str) -> None:
    """
    Make sure C{replacement} is a valid template for C{compiled}: no
    reference to a missing group and no bad escape.

    Substituting into an empty string parses the template without needing
    a match.

    @param compiled: the rule's pattern.
    @param replacement: the template.
    @raise ValueError: if the template is invalid.
    """
    try:
        compiled.sub(replacement, "")
    except (re.error, IndexError) as e:
        raise ValueError(
            f"invalid model alias replacement {replacement!r} "
            f"for pattern {compiled.pattern!r}: {e}"
        ) from None


def compile_alias(pattern: str, replacement: str) -> AliasRule:
    """
    Compile one alias rule.

    @param pattern: the regular expression, matched at the start of the
        model name.
    @param replacement: the selector text to produce; may use C{\\1} and
        C{\\g<name>}.
    @return: the compiled rule.
    @raise ValueError: naming the bad pattern and the regex error, or the
        bad replacement; also for an empty pattern (use C{.*} to match
        everything) or an empty replacement.
    """
    if not pattern:
        raise ValueError("model alias pattern is empty (use '.*' to match any model)")
    if not replacement:
        raise ValueError(f"model alias replacement for pattern {pattern!r} is empty")
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid model alias pattern {pattern!r}: {e}") from None
    _check_template(compiled, replacement)
    return AliasRule(pattern=compiled, replacement=replacement)


def _compiles(pattern: str) -> bool:
    """
    Tell whether C{pattern} is a complete regular expression.

    @param pattern: the candidate text.
    @return: L{True} if C{re.compile} accepts it.
    """
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def parse_alias_flag(text: str) -> AliasRule:
    """
    Parse a C{--model-alias PATTERN=REPLACEMENT} command-line value.

    The separator is the first C{=} whose left side is a complete regular
    expression.  An C{=} inside a regex construct such as C{(?=...)},
    C{(?<=...)}, C{(?P=name)} or C{[=]} leaves an incomplete regex on its
    left and so is skipped, and the replacement may itself contain C{=}
    (C{gpt-4o=openai:gpt-4o?temperature=0.2}).  Write C{\\=} for a literal
    C{=} at the top level of a pattern.

    @param text: the flag value.
    @return: the compiled rule.
    @raise ValueError: if there is no C{=}, no C{=} ends a valid pattern,
        or L{compile_alias} rejects the parts.
    """
    positions = [i for i, c in enumerate(text) if c == "="]
    if not positions:
        raise ValueError(f"expected PATTERN=REPLACEMENT, got {text!r}")
    for i in positions:
        if _compiles(text[:i]):
            return compile_alias(text[:i], text[i + 1 :])
    # No '=' ends a valid regex: report the regex error of the widest pattern.
    last = positions[-1]
    return compile_alias(text[:last], text[last + 1 :])


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
