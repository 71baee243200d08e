# -*- test-case-name: tests.test_plan -*-
"""
Tests for L{llmproxy.routing.plan}.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.routing.plan import Attempt, plan_attempts

ROUTE = [("openai", "gpt-4o", 3), ("openrouter", "openai/gpt-4o", 2), ("local", "llama", 0)]

_BACKENDS = ["openai", "openrouter", "groq", "local"]
_pair = st.tuples(st.sampled_from(_BACKENDS), st.sampled_from(["a", "b", "c"]))


@st.composite
def _route(draw: st.DrawFn, unique: bool) -> list[tuple[str, str, int]]:
    """
    A route whose key counts are consistent per backend (as in real
    configurations); with C{unique}, no element repeats.
    """
    sizes = {b: draw(st.integers(min_value=0, max_value=4)) for b in _BACKENDS}
    pairs = draw(st.lists(_pair, max_size=6, unique=unique))
    return [(b, m, sizes[b]) for b, m in pairs]


_routes = _route(unique=False)
_unique_routes = _route(unique=True)


def _expected_pairs(elements: list[tuple[str, str, int]]) -> Counter[Attempt]:
    """
    Every (element, key) attempt of a route with distinct elements.
    """
    return Counter(
        Attempt(b, m, i)
        for b, m, n in elements
        for i in (range(n) if n else [None])
    )


class PlanExamplesTests(SynchronousTestCase):
    """
    The policies on a fixed route.
    """

    def test_k(self) -> None:
        """
        C{k} tries every key of the first element only.
        """
        self.assertEqual(
            plan_attempts(ROUTE, "k"),
            (
                Attempt("openai", "gpt-4o", 0),
                Attempt("openai", "gpt-4o", 1),
                Attempt("openai", "gpt-4o", 2),
            ),
        )

    def test_k_keyless(self) -> None:
        """
        C{k} on a keyless first element is a single keyless attempt.
        """
        self.assertEqual(
            plan_attempts([("local", "llama", 0), ("openai", "x", 2)], "k"),
            (Attempt("local", "llama", None),),
        )

    def test_m(self) -> None:
        """
        C{m} and C{ordered} try each element with its first key.
        """
        expected = (
            Attempt("openai", "gpt-4o", 0),
            Attempt("openrouter", "openai/gpt-4o", 0),
            Attempt("local", "llama", None),
        )
        self.assertEqual(plan_attempts(ROUTE, "m"), expected)
        self.assertEqual(plan_attempts(ROUTE, "ordered"), expected)

    def test_km(self) -> None:
        """
        C{km} exhausts each element's keys before the next element.
        """
        self.assertEqual(
            plan_attempts(ROUTE, "km"),
            (
                Attempt("openai", "gpt-4o", 0),
                Attempt("openai", "gpt-4o", 1),
                Attempt("openai", "gpt-4o", 2),
                Attempt("openrouter", "openai/gpt-4o", 0),
                Attempt("openrouter", "openai/gpt-4o", 1),
                Attempt("local", "llama", None),
            ),
        )

    def test_mk(self) -> None:
        """
        C{mk} walks key positions, visiting every element at each.
        """
        self.assertEqual(
            plan_attempts(ROUTE, "mk"),
            (
                Attempt("openai", "gpt-4o", 0),
                Attempt("openrouter", "openai/gpt-4o", 0),
                Attempt("local", "llama", None),
                Attempt("openai", "gpt-4o", 1),
                Attempt("openrouter", "openai/gpt-4o", 1),
                Attempt("openai", "gpt-4o", 2),
            ),
        )

    def test_duplicates_dropped(self) -> None:
        """
        A repeated element is not tried twice.
        """
        route = [("openai", "gpt-4o", 1), ("groq", "l", 1), ("openai", "gpt-4o", 1)]
        self.assertEqual(
            plan_attempts(route, "m"),
            (Attempt("openai", "gpt-4o", 0), Attempt("groq", "l", 0)),
        )

    def test_empty_route(self) -> None:
        """
        An empty route plans nothing.
        """
        for policy in ("k", "m", "km", "mk", "ordered"):
            self.assertEqual(plan_attempts([], policy), ())

    def test_policy_case(self) -> None:
        """
        Policy names are case-insensitive.
        """
        self.assertEqual(plan_attempts(ROUTE, "KM"), plan_attempts(ROUTE, "km"))

    def test_unknown_policy(self) -> None:
        """
        An unknown policy is a C{ValueError} naming the allowed ones.
        """
        error = self.assertRaises(ValueError, plan_attempts, ROUTE, "weighted")
        for name in ("k", "m", "km", "mk", "ordered", "weighted"):
            self.assertIn(name, str(error))

    def test_negative_keys(self) -> None:
        """
        A negative key count is rejected.
        """
        self.assertRaises(ValueError, plan_attempts, [("a", "b", -1)], "m")


class PlanPropertyTests(SynchronousTestCase):
    """
    Properties of L{plan_attempts} over arbitrary routes.
    """

    @given(_routes, st.sampled_from(["k", "m", "km", "mk", "ordered"]))
    def test_no_duplicates(self, elements: list[tuple[str, str, int]], policy: str) -> None:
        """
        No attempt is ever planned twice, and keys are in range.
        """
        attempts = plan_attempts(elements, policy)
        self.assertEqual(len(attempts), len(set(attempts)))
        sizes = {(b, m): n for b, m, n in elements}
        for attempt in attempts:
            size = sizes[(attempt.backend, attempt.model)]
            if size == 0:
                self.assertIsNone(attempt.key_index)
            else:
                self.assertIn(attempt.key_index, range(size))

    @given(_unique_routes)
    def test_k_count(self, elements: list[tuple[str, str, int]]) -> None:
        """
        C{k} plans one attempt per key of the first element (one if keyless).
        """
        attempts = plan_attempts(elements, "k")
        expected = max(elements[0][2], 1) if elements else 0
        self.assertEqual(len(attempts), expected)
        if elements:
            self.assertEqual({(a.backend, a.model) for a in attempts}, {elements[0][:2]})

    @given(_routes)
    def test_m_count(self, elements: list[tuple[str, str, int]]) -> None:
        """
        C{m} plans one attempt per distinct element, in route order.
        """
        attempts = plan_attempts(elements, "m")
        pairs = list(dict.fromkeys((b, m) for b, m, _ in elements))
        self.assertEqual([(a.backend, a.model) for a in attempts], pairs)
        self.assertEqual(plan_attempts(elements, "ordered"), attempts)

    @given(_unique_routes)
    def test_km_mk_same_multiset(self, elements: list[tuple[str, str, int]]) -> None:
        """
        C{km} and C{mk} plan the same attempts: every key of every element.
        """
        expected = _expected_pairs(elements)
        self.assertEqual(Counter(plan_attempts(elements, "km")), expected)
        self.assertEqual(Counter(plan_attempts(elements, "mk")), expected)
        self.assertEqual(sum(expected.values()), sum(max(n, 1) for _, _, n in elements))

    @given(_unique_routes)
    def test_mk_key_order(self, elements: list[tuple[str, str, int]]) -> None:
        """
        In C{mk} key positions never decrease; in C{km} elements never repeat
        after being left.
        """
        positions = [a.key_index or 0 for a in plan_attempts(elements, "mk")]
        self.assertEqual(positions, sorted(positions))
        pairs = [(a.backend, a.model) for a in plan_attempts(elements, "km")]
        self.assertEqual(list(dict.fromkeys(pairs)), [e[:2] for e in elements])
        runs = [p for i, p in enumerate(pairs) if i == 0 or pairs[i - 1] != p]
        self.assertEqual(len(runs), len(set(runs)))
