# -*- test-case-name: tests.test_routing_precedence -*-
"""
Tests for L{llmproxy.routing.precedence}.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.routing.precedence import apply_precedence

_names = st.sampled_from(["temperature", "top_p", "top_k", "verbosity", "model", "stream", "n"])
_values = st.integers() | st.floats(allow_nan=False) | st.text() | st.booleans()
_bodies = st.dictionaries(_names, _values | st.none())
_settings = st.dictionaries(_names, _values)


class ApplyPrecedenceTests(SynchronousTestCase):
    """
    Tests for L{apply_precedence}.
    """

    def test_uriOverridesBody(self) -> None:
        """
        A URI parameter replaces the body's value in place.
        """
        result = apply_precedence(
            {"model": "m", "temperature": 1.0, "stream": True}, {"temperature": 0.2}, {}
        )
        self.assertEqual(
            list(result.items()), [("model", "m"), ("temperature", 0.2), ("stream", True)]
        )

    def test_defaultsFillOnly(self) -> None:
        """
        Defaults fill missing fields but never replace sent ones.
        """
        result = apply_precedence(
            {"model": "m", "top_p": 0.5}, {}, {"top_p": 0.9, "temperature": 0.7}
        )
        self.assertEqual(result, {"model": "m", "top_p": 0.5, "temperature": 0.7})

    def test_uriOverridesDefaults(self) -> None:
        """
        A URI parameter beats a default for a field the client left out.
        """
        result = apply_precedence({}, {"temperature": 0.1}, {"temperature": 0.9})
        self.assertEqual(result, {"temperature": 0.1})

    def test_nullCountsAsNotSent(self) -> None:
        """
        A field sent as C{null} is filled by a default, in place.
        """
        result = apply_precedence(
            {"temperature": None, "model": "m"}, {}, {"temperature": 0.4}
        )
        self.assertEqual(list(result.items()), [("temperature", 0.4), ("model", "m")])

    def test_newKeysAppended(self) -> None:
        """
        New keys follow the body's keys, URI parameters first.
        """
        result = apply_precedence({"model": "m"}, {"top_k": 3}, {"verbosity": "low"})
        self.assertEqual(list(result), ["model", "top_k", "verbosity"])

    def test_tokenCapSpellings(self) -> None:
        """
        A URI C{max_tokens} overrides the client's C{max_completion_tokens}
        under the client's spelling, and a default cap is not added next
        to a cap the client sent.
        """
        result = apply_precedence({"max_completion_tokens": 100}, {"max_tokens": 20}, {})
        self.assertEqual(result, {"max_completion_tokens": 20})
        result = apply_precedence({"max_output_tokens": 100}, {}, {"max_tokens": 5})
        self.assertEqual(result, {"max_output_tokens": 100})
        result = apply_precedence({"max_completion_tokens": None}, {"max_tokens": 7}, {})
        self.assertEqual(result, {"max_completion_tokens": 7})
        result = apply_precedence({}, {}, {"max_tokens": 5})
        self.assertEqual(result, {"max_tokens": 5})

    def test_inputsNotMutated(self) -> None:
        """
        The body is copied, not changed.
        """
        body: dict[str, Any] = {"temperature": 1, "messages": [{"role": "user"}]}
        before = copy.deepcopy(body)
        result = apply_precedence(body, {"temperature": 0.5}, {"top_p": 0.1})
        self.assertEqual(body, before)
        self.assertIsNot(result, body)

    @given(_bodies, _settings, _settings)
    def test_uriWins(
        self, body: dict[str, Any], uri: dict[str, Any], defaults: dict[str, Any]
    ) -> None:
        """
        Every URI parameter ends up in the result unchanged.
        """
        result = apply_precedence(body, uri, defaults)
        for name, value in uri.items():
            self.assertEqual(result[name], value)

    @given(_bodies, _settings, _settings)
    def test_defaultsNeverBeatBody(
        self, body: dict[str, Any], uri: dict[str, Any], defaults: dict[str, Any]
    ) -> None:
        """
        A field the client sent keeps its value unless a URI parameter
        overrides it; a default is used only for fields neither gives.
        """
        result = apply_precedence(body, uri, defaults)
        for name, value in body.items():
            if name not in uri and value is not None:
                self.assertEqual(result[name], value)
        for name, value in defaults.items():
            if name not in uri and body.get(name) is None:
                self.assertEqual(result[name], value)

    @given(_bodies, _settings, _settings)
    def test_nothingElseChanges(
        self, body: dict[str, Any], uri: dict[str, Any], defaults: dict[str, Any]
    ) -> None:
        """
        Only URI and default fields can change; body order is kept and
        the result has exactly the union of the keys.
        """
        snapshot = dict(body)
        result = apply_precedence(body, uri, defaults)
        self.assertEqual(body, snapshot)
        self.assertEqual(list(result)[: len(body)], list(body))
        self.assertEqual(set(result), set(body) | set(uri) | set(defaults))
        for name, value in body.items():
            if name not in uri and name not in defaults:
                self.assertEqual(result[name], value)
