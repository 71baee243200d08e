# -*- test-case-name: tests.test_adapt_reasoning -*-
"""
Tests for L{llmproxy.adapt.reasoning}.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.adapt.reasoning import (
    LEGACY_REASONING_MODELS,
    adapt_chat_for_reasoning,
    is_reasoning_model,
)

_UNSUPPORTED = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)


class IsReasoningModelTests(SynchronousTestCase):
    """
    Tests for L{is_reasoning_model} and the default patterns.
    """

    def test_reasoningModels(self) -> None:
        """
        The o-series and gpt-5 family are reasoning models.
        """
        for model in [
            "o1",
            "o1-preview",
            "o1-mini-2024-09-12",
            "o1-2024-12-17",
            "o3",
            "o3-mini",
            "o3-pro",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5.1",
        ]:
            self.assertTrue(is_reasoning_model(model), model)

    def test_otherModels(self) -> None:
        """
        GPT-4 models and look-alikes are not.
        """
        for model in ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o10x", "o1x", "o2", "gpt-50", "my-o3", ""]:
            self.assertFalse(is_reasoning_model(model), model)

    def test_customPattern(self) -> None:
        """
        A given pattern replaces the default.
        """
        pattern = re.compile("deepseek-r1")
        self.assertTrue(is_reasoning_model("deepseek-r1-distill", pattern))
        self.assertFalse(is_reasoning_model("o3", pattern))

    def test_legacyPattern(self) -> None:
        """
        Only o1-preview and o1-mini (with date suffixes) are legacy.
        """
        for model in ["o1-preview", "o1-mini", "o1-mini-2024-09-12"]:
            self.assertIsNotNone(LEGACY_REASONING_MODELS.match(model), model)
        for model in ["o1", "o3-mini", "o4-mini", "gpt-5-mini"]:
            self.assertIsNone(LEGACY_REASONING_MODELS.match(model), model)


class AdaptFieldsTests(SynchronousTestCase):
    """
    Tests for the parameter changes of L{adapt_chat_for_reasoning}.
    """

    def test_notReasoning(self) -> None:
        """
        Other models get an equal copy with nothing reported.
        """
        body = {"model": "gpt-4o", "max_tokens": 5, "temperature": 0.3}
        result = adapt_chat_for_reasoning(body, "gpt-4o")
        self.assertEqual(result.body, body)
        self.assertIsNot(result.body, body)
        self.assertEqual((result.dropped, result.renamed), ((), ()))

    def test_renameMaxTokensInPlace(self) -> None:
        """
        C{max_tokens} becomes C{max_completion_tokens} at the same position.
        """
        body = {"model": "o3", "max_tokens": 50, "stream": True}
        result = adapt_chat_for_reasoning(body, "o3")
        self.assertEqual(
            list(result.body.items()),
            [("model", "o3"), ("max_completion_tokens", 50), ("stream", True)],
        )
        self.assertEqual(result.renamed, (("max_tokens", "max_completion_tokens"),))
        self.assertEqual(result.dropped, ())

    def test_bothCaps(self) -> None:
        """
        With both caps present, C{max_completion_tokens} is kept and
        C{max_tokens} is reported dropped.
        """
        body = {"max_tokens": 50, "max_completion_tokens": 80}
        result = adapt_chat_for_reasoning(body, "gpt-5")
        self.assertEqual(result.body, {"max_completion_tokens": 80})
        self.assertEqual(result.dropped, ("max_tokens",))
        self.assertEqual(result.renamed, ())

    def test_dropsInBodyOrder(self) -> None:
        """
        Sampling, penalty and log-probability fields are dropped and listed
        in body order; other fields stay.
        """
        body: dict[str, Any] = {"model": "o4-mini"}
        for name in reversed(_UNSUPPORTED):
            body[name] = 1
        body.update(tools=[], reasoning_effort="high", n=1)
        result = adapt_chat_for_reasoning(body, "o4-mini")
        self.assertEqual(result.dropped, tuple(reversed(_UNSUPPORTED)))
        self.assertEqual(
            result.body, {"model": "o4-mini", "tools": [], "reasoning_effort": "high", "n": 1}
        )

    def test_legacyDropsReasoningEffort(self) -> None:
        """
        o1-mini does not accept C{reasoning_effort}.
        """
        result = adapt_chat_for_reasoning({"reasoning_effort": "low"}, "o1-mini")
        self.assertEqual(result.body, {})
        self.assertEqual(result.dropped, ("reasoning_effort",))

    def test_customPattern(self) -> None:
        """
        The pattern decides whether the model is adapted.
        """
        body = {"temperature": 0.5}
        pattern = re.compile("my-thinker")
        self.assertEqual(adapt_chat_for_reasoning(body, "my-thinker", pattern).body, {})
        self.assertEqual(adapt_chat_for_reasoning(body, "o3", pattern).body, body)


class AdaptMessagesTests(SynchronousTestCase):
    """
    Tests for the message changes of L{adapt_chat_for_reasoning}.
    """

    def test_systemBecomesDeveloper(self) -> None:
        """
        Newer reasoning models get C{developer} instead of C{system}; other
        roles and fields are untouched.
        """
        messages = [
            {"role": "system", "content": "Be brief.", "name": "s"},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": "Dev"},
        ]
        result = adapt_chat_for_reasoning({"messages": messages}, "o3-mini")
        self.assertEqual(
            result.body["messages"],
            [
                {"role": "developer", "content": "Be brief.", "name": "s"},
                {"role": "user", "content": "Hi"},
                {"role": "developer", "content": "Dev"},
            ],
        )
        self.assertEqual(messages[0]["role"], "system")

    def test_legacyMergeIntoFirstUser(self) -> None:
        """
        o1-preview gets all system/developer text prefixed to the first
        user message, separated by blank lines, and nothing else moves.
        """
        messages = [
            {"role": "system", "content": "Rule one."},
            {"role": "user", "content": "Question?"},
            {"role": "assistant", "content": "Answer."},
            {"role": "developer", "content": [{"type": "text", "text": "Rule two."}]},
            {"role": "user", "content": "Again?"},
        ]
        result = adapt_chat_for_reasoning({"messages": messages}, "o1-preview")
        self.assertEqual(
            result.body["messages"],
            [
                {"role": "user", "content": "Rule one.\n\nRule two.\n\nQuestion?"},
                {"role": "assistant", "content": "Answer."},
                {"role": "user", "content": "Again?"},
            ],
        )

    def test_legacyMergeIntoParts(self) -> None:
        """
        A user message with content parts gets the text prefixed to its
        first text part, or a new leading text part.
        """
        image = {"type": "image_url", "image_url": {"url": "data:x"}}
        system = {"role": "system", "content": "Sys."}
        result = adapt_chat_for_reasoning(
            {"messages": [system, {"role": "user", "content": [{"type": "text", "text": "Look"}, image]}]},
            "o1-mini",
        )
        self.assertEqual(
            result.body["messages"],
            [{"role": "user", "content": [{"type": "text", "text": "Sys.\n\nLook"}, image]}],
        )
        result = adapt_chat_for_reasoning(
            {"messages": [system, {"role": "user", "content": [image]}]}, "o1-mini"
        )
        self.assertEqual(
            result.body["messages"],
            [{"role": "user", "content": [{"type": "text", "text": "Sys."}, image]}],
        )

    def test_legacyNoUserMessage(self) -> None:
        """
        Without a user message the merged text becomes one, where the first
        instruction message was.
        """
        messages = [
            {"role": "assistant", "content": "Earlier."},
            {"role": "system", "content": "A"},
            {"role": "developer", "content": "B"},
        ]
        result = adapt_chat_for_reasoning({"messages": messages}, "o1-mini")
        self.assertEqual(
            result.body["messages"],
            [
                {"role": "assistant", "content": "Earlier."},
                {"role": "user", "content": "A\n\nB"},
            ],
        )

    def test_legacyEmptyInstructions(self) -> None:
        """
        Instruction messages without text are removed and change nothing
        else.
        """
        messages = [{"role": "system", "content": ""}, {"role": "user", "content": "Q"}]
        result = adapt_chat_for_reasoning({"messages": messages}, "o1-mini")
        self.assertEqual(result.body["messages"], [{"role": "user", "content": "Q"}])

    def test_inputNotMutated(self) -> None:
        """
        Neither the body nor its messages are changed.
        """
        body = {
            "model": "o1-mini",
            "max_tokens": 3,
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "text", "text": "U"}]},
            ],
        }
        before = copy.deepcopy(body)
        for model in ["o1-mini", "o3"]:
            adapt_chat_for_reasoning(body, model)
        self.assertEqual(body, before)

    def test_malformedMessagesTolerated(self) -> None:
        """
        Messages that are not objects are passed through for later
        validation.
        """
        result = adapt_chat_for_reasoning({"messages": ["x", {"role": "system"}]}, "o3")
        self.assertEqual(result.body["messages"], ["x", {"role": "developer"}])
        result = adapt_chat_for_reasoning({"messages": "x"}, "o1-mini")
        self.assertEqual(result.body["messages"], "x")

    @given(
        st.dictionaries(
            st.sampled_from([*_UNSUPPORTED, "max_tokens", "max_completion_tokens", "stream", "n", "model"]),
            st.integers(),
        ),
        st.sampled_from(["o1-mini", "o3", "gpt-5-nano"]),
    )
    def test_fieldAccounting(self, body: dict[str, Any], model: str) -> None:
        """
        No rejected field survives, and every input field is kept, renamed
        or reported dropped.
        """
        snapshot = dict(body)
        result = adapt_chat_for_reasoning(body, model)
        self.assertEqual(body, snapshot)
        self.assertFalse(set(result.body) & {*_UNSUPPORTED, "max_tokens"})
        renamed = dict(result.renamed)
        for key in body:
            outcomes = [key in result.body, key in result.dropped, key in renamed]
            self.assertEqual(outcomes.count(True), 1, key)
        self.assertTrue(set(result.body) <= set(body) | {"max_completion_tokens"})
        if "max_tokens" in body or "max_completion_tokens" in body:
            expected = body.get("max_completion_tokens", body.get("max_tokens"))
            self.assertEqual(result.body["max_completion_tokens"], expected)
