# -*- test-case-name: tests.test_routing_aliases -*-
"""
Tests for L{llmproxy.routing.aliases}.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.routing.aliases import (
    AliasRule,
    alias_targets,
    apply_aliases,
    compile_alias,
    parse_alias_flag,
)


class CompileAliasTests(SynchronousTestCase):
    """
    Tests for L{compile_alias}.
    """

    def test_compiles(self) -> None:
        """
        A valid rule keeps its pattern text and replacement.
        """
        rule = compile_alias(r"gpt-(\d)", r"openai:gpt-\1")
        self.assertEqual(rule.pattern.pattern, r"gpt-(\d)")
        self.assertEqual(rule.replacement, r"openai:gpt-\1")

    def test_invalidPattern(self) -> None:
        """
        An invalid regex raises L{ValueError} naming the pattern and the
        regex error.
        """
        error = self.assertRaises(ValueError, compile_alias, "gpt-(4", "x")
        self.assertIn("'gpt-(4'", str(error))
        self.assertIn("missing ), unterminated subpattern", str(error))

    def test_missingGroup(self) -> None:
        """
        A replacement referring to a group the pattern lacks is rejected at
        compile time, not at request time.
        """
        self.assertRaises(ValueError, compile_alias, "gpt-(4)", r"x:\2")
        self.assertRaises(ValueError, compile_alias, "gpt-(?P<v>4)", r"x:\g<w>")
        self.assertRaises(ValueError, compile_alias, "gpt", "x\\")
        error = self.assertRaises(ValueError, compile_alias, "gpt", r"\q")
        self.assertIn(r"'\\q'", str(error))

    def test_empty(self) -> None:
        """
        Empty patterns and replacements are rejected.
        """
        self.assertRaises(ValueError, compile_alias, "", "gpt-4o")
        self.assertRaises(ValueError, compile_alias, "gpt", "")


class ParseAliasFlagTests(SynchronousTestCase):
    """
    Tests for L{parse_alias_flag}.
    """

    def assertParts(self, text: str, pattern: str, replacement: str) -> None:
        """
        Assert how C{text} is split.
        """
        rule = parse_alias_flag(text)
        self.assertEqual((rule.pattern.pattern, rule.replacement), (pattern, replacement))

    def test_simple(self) -> None:
        """
        C{PATTERN=REPLACEMENT}.
        """
        self.assertParts("fast=openai:gpt-4o-mini", "fast", "openai:gpt-4o-mini")

    def test_equalsInReplacement(self) -> None:
        """
        A replacement with C{?params} keeps its C{=} signs.
        """
        self.assertParts(
            "gpt-4o=openai:gpt-4o?temperature=0.2&top_p=1",
            "gpt-4o",
            "openai:gpt-4o?temperature=0.2&top_p=1",
        )

    def test_equalsInPatternConstructs(self) -> None:
        """
        C{=} inside regex constructs is part of the pattern.
        """
        self.assertParts("(?=gpt)(.*)=b:\\1", "(?=gpt)(.*)", "b:\\1")
        self.assertParts("(?<=x)y=z", "(?<=x)y", "z")
        self.assertParts("(?P<m>a)(?P=m)=b", "(?P<m>a)(?P=m)", "b")
        self.assertParts("[=]+=b?x=1", "[=]+", "b?x=1")

    def test_escapedEquals(self) -> None:
        """
        C{\\=} is a literal C{=} in the pattern.
        """
        self.assertParts("a\\=b=c", "a\\=b", "c")
        self.assertEqual(apply_aliases([parse_alias_flag("a\\=b=c")], "a=b"), "c")

    def test_noEquals(self) -> None:
        """
        Text without C{=} is rejected.
        """
        error = self.assertRaises(ValueError, parse_alias_flag, "gpt-4o")
        self.assertIn("PATTERN=REPLACEMENT", str(error))

    def test_invalidPattern(self) -> None:
        """
        A pattern that no C{=} completes is reported with its regex error.
        """
        error = self.assertRaises(ValueError, parse_alias_flag, "gpt-(4=x")
        self.assertIn("'gpt-(4'", str(error))

    def test_emptyParts(self) -> None:
        """
        Empty patterns and replacements are rejected.
        """
        self.assertRaises(ValueError, parse_alias_flag, "=x")
        self.assertRaises(ValueError, parse_alias_flag, "x=")


class ApplyAliasesTests(SynchronousTestCase):
    """
    Tests for L{apply_aliases}.
    """

    def test_firstMatchWins(self) -> None:
        """
        The first matching rule is used even if a later one also matches.
        """
        rules = [
            compile_alias("gpt-4o-mini", "a:mini"),
            compile_alias("gpt-4o", "b:big"),
            compile_alias("gpt", "c:any"),
        ]
        self.assertEqual(apply_aliases(rules, "gpt-4o-mini"), "a:mini")
        self.assertEqual(apply_aliases(rules, "gpt-4o"), "b:big")
        self.assertEqual(apply_aliases(rules, "gpt-3.5"), "c:any")

    def test_anchoredAtStartOnly(self) -> None:
        """
        Patterns match at the start (C{re.match}), not anywhere, and not
        necessarily to the end.
        """
        rules = [compile_alias("gpt-4o", "x")]
        self.assertEqual(apply_aliases(rules, "gpt-4o-2024"), "x")
        self.assertIsNone(apply_aliases(rules, "my-gpt-4o"))

    def test_backReferences(self) -> None:
        """
        Numbered and named groups are expanded.
        """
        rules = [
            compile_alias(r"claude-(\w+)$", r"openrouter:anthropic/claude-\1"),
            compile_alias(r"(?P<name>llama.*)", r"groq:\g<name>"),
        ]
        self.assertEqual(
            apply_aliases(rules, "claude-haiku"), "openrouter:anthropic/claude-haiku"
        )
        self.assertEqual(apply_aliases(rules, "llama-3-8b"), "groq:llama-3-8b")

    def test_selectorReplacements(self) -> None:
        """
        Replacements may be failover lists with parameters.
        """
        rules = [compile_alias("best", "openai:gpt-4o?temperature=0.2|openrouter:openai/gpt-4o")]
        self.assertEqual(
            apply_aliases(rules, "best"),
            "openai:gpt-4o?temperature=0.2|openrouter:openai/gpt-4o",
        )

    def test_noMatch(self) -> None:
        """
        No matching rule gives L{None}.
        """
        self.assertIsNone(apply_aliases([], "gpt-4o"))
        self.assertIsNone(apply_aliases([compile_alias("o3", "x")], "gpt-4o"))

    @given(st.text(min_size=1), st.text(min_size=1).filter(lambda r: "\\" not in r))
    def test_literalRule(self, name: str, target: str) -> None:
        """
        An escaped literal pattern maps exactly that name to a literal
        target, and a name it is not a prefix of is left alone.
        """
        rules = [compile_alias(re.escape(name), target)]
        self.assertEqual(apply_aliases(rules, name), target)
        self.assertEqual(apply_aliases(rules, name + "-suffix"), target)
        other = "b" if name.startswith("a") else "a"
        self.assertIsNone(apply_aliases(rules, other + name))

    @given(st.text(alphabet="ab=(?)<P![]\\.*:1", min_size=1))
    def test_flagOnlyValueError(self, text: str) -> None:
        """
        Flag parsing either gives a usable rule or raises L{ValueError}.
        """
        try:
            rule = parse_alias_flag(text)
        except ValueError:
            return
        self.assertIsInstance(rule, AliasRule)
        apply_aliases([rule], text)


class AliasTargetsTests(SynchronousTestCase):
    """
    Tests for L{alias_targets}.
    """

    def test_literalTargets(self) -> None:
        """
        Literal replacements are listed once each, in rule order; templates
        are left out.
        """
        rules = [
            compile_alias("fast", "openai:gpt-4o-mini"),
            compile_alias(r"gpt-(.*)", r"openai:gpt-\1"),
            compile_alias("best", "openai:gpt-4o|openrouter:openai/gpt-4o"),
            compile_alias("quick", "openai:gpt-4o-mini"),
            compile_alias(r"(?P<n>x)", r"y:\g<n>"),
        ]
        self.assertEqual(
            alias_targets(rules),
            ("openai:gpt-4o-mini", "openai:gpt-4o|openrouter:openai/gpt-4o"),
        )

    def test_none(self) -> None:
        """
        No rules, no targets.
        """
        self.assertEqual(alias_targets([]), ())
