# -*- test-case-name: tests.test_routing_selector -*-
"""
Tests for L{llmproxy.routing.selector}.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.errors import InvalidRequest
from llmproxy.routing.selector import Selector, parse_failover, parse_selector


def _model_char(c: str) -> bool:
    """
    Whether C{c} may appear in a model name.
    """
    return c.isprintable() and not c.isspace() and c not in "?|^!"


_backends = st.from_regex(r"[A-Za-z0-9_.-]+", fullmatch=True).filter(
    lambda b: b.split(".", 1)[0].lower() not in ("alias", "auto")
)
_models = st.text(st.characters().filter(_model_char), min_size=1)
_params = st.lists(
    st.tuples(st.text(min_size=1), st.text()),
    unique_by=lambda pair: pair[0],
    max_size=5,
).map(tuple)


@st.composite
def _selectors(draw: st.DrawFn) -> Selector:
    """
    Generate selectors that L{parse_selector} can produce.
    """
    backend = draw(st.none() | _backends)
    model = draw(_models)
    if backend is None:
        colon, slash = model.find(":"), model.find("/")
        assume(colon < 0 or 0 <= slash < colon)
    return Selector(backend=backend, model=model, params=draw(_params))


class ParseSelectorTests(SynchronousTestCase):
    """
    Tests for L{parse_selector}.
    """

    def assertRejected(self, text: str) -> InvalidRequest:
        """
        Assert that C{text} is rejected as a model selector.
        """
        error: InvalidRequest = self.assertRaises(InvalidRequest, parse_selector, text)
        self.assertEqual(error.status, 400)
        self.assertEqual(error.param, "model")
        self.assertEqual(error.code, "invalid_model_selector")
        return error

    def test_bareModel(self) -> None:
        """
        A plain model name has no backend and no parameters.
        """
        self.assertEqual(parse_selector("gpt-4o"), Selector(None, "gpt-4o"))

    def test_backendPrefix(self) -> None:
        """
        C{backend:model} names the backend.
        """
        self.assertEqual(parse_selector("openai:gpt-4o"), Selector("openai", "gpt-4o"))

    def test_pinnedInstance(self) -> None:
        """
        A backend name may contain a dot to pin an instance.
        """
        self.assertEqual(
            parse_selector("openai.2:gpt-4o"), Selector("openai.2", "gpt-4o")
        )

    def test_colonAfterSlashIsModel(self) -> None:
        """
        A colon after the first slash belongs to the model name.
        """
        self.assertEqual(
            parse_selector("meta-llama/llama-3-8b:free"),
            Selector(None, "meta-llama/llama-3-8b:free"),
        )

    def test_colonBeforeSlashIsBackend(self) -> None:
        """
        A colon before the first slash splits off the backend; later colons
        stay in the model.
        """
        self.assertEqual(
            parse_selector("openrouter:anthropic/claude-3-haiku:beta"),
            Selector("openrouter", "anthropic/claude-3-haiku:beta"),
        )

    def test_colonRuleIgnoresQuery(self) -> None:
        """
        Slashes and colons in the query do not affect the backend split.
        """
        self.assertEqual(
            parse_selector("vendor/model:free?x=a:b"),
            Selector(None, "vendor/model:free", (("x", "a:b"),)),
        )
        self.assertEqual(
            parse_selector("openai:gpt-4o?x=a/b"),
            Selector("openai", "gpt-4o", (("x", "a/b"),)),
        )

    def test_params(self) -> None:
        """
        Query parameters are kept as strings, in order.
        """
        self.assertEqual(
            parse_selector("openai:gpt-4o?top_p=0.9&temperature=0.2"),
            Selector("openai", "gpt-4o", (("top_p", "0.9"), ("temperature", "0.2"))),
        )

    def test_paramsDecoded(self) -> None:
        """
        Names and values are percent- and plus-decoded; only the first C{=}
        and the first C{?} are separators.
        """
        self.assertEqual(
            parse_selector("m?t%65mp=a+b%26c&y=1=2&z=what?"),
            Selector(None, "m", (("temp", "a b&c"), ("y", "1=2"), ("z", "what?"))),
        )

    def test_emptyValueAllowed(self) -> None:
        """
        An empty value is syntactically fine; validation is left to
        L{llmproxy.routing.params}.
        """
        self.assertEqual(parse_selector("m?x="), Selector(None, "m", (("x", ""),)))

    def test_surroundingWhitespace(self) -> None:
        """
        Whitespace around the selector is ignored.
        """
        self.assertEqual(parse_selector("  openai:gpt-4o\n"), Selector("openai", "gpt-4o"))

    def test_emptyOrBlank(self) -> None:
        """
        Empty and whitespace-only text is rejected.
        """
        for text in ["", "   ", "\t\n"]:
            self.assertRejected(text)

    def test_emptyParts(self) -> None:
        """
        An empty backend before C{:} or an empty model is rejected.
        """
        for text in [":gpt-4o", "openai:", "openai:?x=1", "?x=1"]:
            self.assertRejected(text)

    def test_internalWhitespace(self) -> None:
        """
        Whitespace and control characters inside the selector are rejected.
        """
        for text in ["gpt 4o", "openai:gpt-4o?x=a b", "gpt\x00", "gpt\x7f4"]:
            self.assertRejected(text)

    def test_badBackendName(self) -> None:
        """
        Backend names may only use letters, digits, C{_}, C{.} and C{-}.
        """
        error = self.assertRejected("my@backend:gpt-4o")
        self.assertIn("my@backend", error.message)

    def test_reservedPrefixes(self) -> None:
        """
        C{alias:} and C{auto:} are reserved, in any case and with an
        instance suffix.
        """
        for text in ["alias:fast", "auto:x", "AUTO:x", "alias.1:x"]:
            error = self.assertRejected(text)
            self.assertIn("reserved", error.message)

    def test_reservedNameInsideModelAllowed(self) -> None:
        """
        The reserved words only matter as a backend prefix.
        """
        self.assertEqual(parse_selector("vendor/alias:x"), Selector(None, "vendor/alias:x"))
        self.assertEqual(parse_selector("autos:x"), Selector("autos", "x"))

    def test_weightedAndParallelReserved(self) -> None:
        """
        C{^} and C{!} outside the query are rejected as unsupported
        weighted/parallel selectors.
        """
        for text in ["a^b", "openai:gpt-4o!", "a!b?x=1"]:
            error = self.assertRejected(text)
            self.assertIn("weighted", error.message)
            self.assertIn("parallel", error.message)

    def test_reservedCharsInQueryAllowed(self) -> None:
        """
        C{^} and C{!} inside the query are plain value characters.
        """
        self.assertEqual(
            parse_selector("m?x=^!"), Selector(None, "m", (("x", "^!"),))
        )

    def test_failoverRejected(self) -> None:
        """
        A single selector cannot be a failover list.
        """
        self.assertRejected("a|b")

    def test_malformedQuery(self) -> None:
        """
        Pairs without C{=}, empty names and stray separators are rejected.
        """
        for text in ["m?x", "m?=1", "m?", "m?x=1&", "m?x=1&&y=2", "m?%3D=1&=2"]:
            self.assertRejected(text)

    def test_duplicateParam(self) -> None:
        """
        A name given twice, even in different encodings, is rejected.
        """
        error = self.assertRejected("m?x=1&%78=2")
        self.assertIn("'x'", error.message)

    def test_longTextShortenedInMessage(self) -> None:
        """
        The error message does not echo unbounded input.
        """
        error = self.assertRejected("a b" + "x" * 10000)
        self.assertLess(len(error.message), 300)

    @given(st.text())
    def test_arbitraryTextOnlyInvalidRequest(self, text: str) -> None:
        """
        Arbitrary text either parses or raises L{InvalidRequest}.
        """
        try:
            parse_selector(text)
        except InvalidRequest:
            pass

    @given(st.text(alphabet="ab/:?=&|^!%+. 2.-_"))
    def test_selectorishTextOnlyInvalidRequest(self, text: str) -> None:
        """
        Text made of the grammar's own characters either parses into a
        consistent selector or raises L{InvalidRequest}; a parsed model
        never holds the prefix or the query.
        """
        try:
            selector = parse_selector(text)
        except InvalidRequest:
            return
        self.assertNotIn("?", selector.model)
        self.assertTrue(selector.model)
        if selector.backend is not None:
            self.assertTrue(text.strip().startswith(selector.backend + ":"))

    @given(_selectors())
    def test_roundTrip(self, selector: Selector) -> None:
        """
        C{parse_selector(str(s)) == s} for every representable selector.
        """
        self.assertEqual(parse_selector(str(selector)), selector)

    @given(st.text(alphabet="ab/:?=&%+.2-_"))
    def test_canonicalFormStable(self, text: str) -> None:
        """
        Whatever parses re-parses identically from its canonical form.
        """
        try:
            selector = parse_selector(text)
        except InvalidRequest:
            return
        self.assertEqual(parse_selector(str(selector)), selector)


class SelectorStrTests(SynchronousTestCase):
    """
    Tests for C{Selector.__str__}.
    """

    def test_plain(self) -> None:
        """
        Simple selectors render as they are written.
        """
        self.assertEqual(str(Selector(None, "gpt-4o")), "gpt-4o")
        self.assertEqual(
            str(Selector("openai", "gpt-4o", (("temperature", "0.5"), ("top_k", "3")))),
            "openai:gpt-4o?temperature=0.5&top_k=3",
        )

    def test_encoding(self) -> None:
        """
        Separators and spaces in names and values are encoded.
        """
        text = str(Selector(None, "m", (("a&b", "x=y z|1"),)))
        self.assertEqual(text, "m?a%26b=x%3Dy+z%7C1")


class ParseFailoverTests(SynchronousTestCase):
    """
    Tests for L{parse_failover}.
    """

    def assertRejected(self, text: str) -> InvalidRequest:
        """
        Assert that C{text} is rejected as a failover selector.
        """
        error: InvalidRequest = self.assertRaises(InvalidRequest, parse_failover, text)
        self.assertEqual(error.param, "model")
        self.assertEqual(error.code, "invalid_model_selector")
        return error

    def test_single(self) -> None:
        """
        One selector gives a one-element tuple.
        """
        self.assertEqual(parse_failover("openai:gpt-4o"), (Selector("openai", "gpt-4o"),))

    def test_ordered(self) -> None:
        """
        Elements keep their order and their own parameters.
        """
        self.assertEqual(
            parse_failover("openai:gpt-4o?temperature=0.1|openrouter:openai/gpt-4o|x"),
            (
                Selector("openai", "gpt-4o", (("temperature", "0.1"),)),
                Selector("openrouter", "openai/gpt-4o"),
                Selector(None, "x"),
            ),
        )

    def test_whitespaceAroundElements(self) -> None:
        """
        Whitespace around each element is ignored.
        """
        self.assertEqual(
            parse_failover(" a | b:c "), (Selector(None, "a"), Selector("b", "c"))
        )

    def test_emptyElements(self) -> None:
        """
        Empty elements and empty text are rejected.
        """
        for text in ["", " ", "a||b", "a|", "|a", "a| |b"]:
            self.assertRejected(text)

    def test_badElement(self) -> None:
        """
        An invalid element rejects the whole list.
        """
        self.assertRejected("a|alias:b")
        error = self.assertRejected("a|b^2")
        self.assertIn("weighted", error.message)

    @given(st.lists(_selectors(), min_size=1, max_size=4))
    def test_roundTrip(self, selectors: list[Selector]) -> None:
        """
        Joining canonical forms with C{|} parses back to the same list.
        """
        text = "|".join(str(s) for s in selectors)
        self.assertEqual(parse_failover(text), tuple(selectors))

    @given(st.text())
    def test_arbitraryTextOnlyInvalidRequest(self, text: str) -> None:
        """
        Arbitrary text either parses or raises L{InvalidRequest}.
        """
        try:
            result = parse_failover(text)
        except InvalidRequest:
            return
        self.assertEqual(len(result), text.count("|") + 1)
