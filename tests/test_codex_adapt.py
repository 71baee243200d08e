"""
The Codex wire rules (L{llmproxy.adapt.codex}), a pure step: what it does
to any Responses body bound for an C{openai-codex} backend, that it leaves
every other target's body alone, and where the exchange applies it.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.adapt.codex import (
    CODEX_RULES, DEFAULT_INSTRUCTIONS, STRIPPED, conversation_key, shape_for_codex,
)
from llmproxy.adapt.pipeline import Context
from llmproxy.adapt.steps import DEFAULT_PIPELINE
from llmproxy.dialects import CHAT, CODEX, RESPONSES
from llmproxy.exchange.prepare import prepare_chat, prepare_responses
from llmproxy.routing.resolve import Target

CODEX_CONTEXT = Context("chatgpt", "gpt-5.1-codex", RESPONSES, RESPONSES, backend_type=CODEX)

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
items = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                        "content": st.text(max_size=12)}), max_size=4)
fields = st.sampled_from(sorted(STRIPPED | {"store", "stream", "instructions", "input",
                                            "prompt_cache_key", "tools", "reasoning", "user"}))
bodies = st.dictionaries(fields, values, max_size=8).map(lambda b: {"model": "m", **b})


class RuleTests(SynchronousTestCase):
    @given(bodies)
    def test_every_rule_holds_and_only_stripped_fields_go(self, body: dict[str, Any]) -> None:
        before = copy.deepcopy(body)
        shaped = shape_for_codex(body, CODEX_CONTEXT)
        out = shaped.body
        self.assertEqual(body, before)
        self.assertIs(out["store"], False)
        self.assertIs(out["stream"], True)
        self.assertTrue(isinstance(out["instructions"], str) and out["instructions"])
        self.assertTrue(out["prompt_cache_key"])
        self.assertFalse(STRIPPED & set(out))
        expected = {n for n in body if n in STRIPPED} | (
            {"store"} if "store" in body and body["store"] is not False else set())
        self.assertEqual(set(shaped.dropped), expected)
        for name, value in body.items():
            if name not in STRIPPED | {"store", "stream", "instructions", "prompt_cache_key"}:
                self.assertEqual(out[name], value)
        if isinstance(body.get("instructions"), str) and body["instructions"]:
            self.assertEqual(out["instructions"], body["instructions"])
        if body.get("prompt_cache_key"):
            self.assertEqual(out["prompt_cache_key"], body["prompt_cache_key"])

    @given(bodies, st.sampled_from(["openai", "openai-responses", "mock", ""]),
           st.sampled_from([CHAT, RESPONSES]))
    def test_other_backend_types_are_left_alone(
        self, body: dict[str, Any], backend_type: str, upstream: str
    ) -> None:
        context = Context("b", "m", RESPONSES, upstream, backend_type=backend_type)
        shaped = shape_for_codex(body, context)
        self.assertEqual((shaped.body, shaped.dropped, shaped.changed), (body, (), False))

    def test_a_conforming_body_is_untouched(self) -> None:
        body = {"model": "m", "input": [], "store": False, "stream": True,
                "instructions": "x", "prompt_cache_key": "k"}
        self.assertFalse(shape_for_codex(body, CODEX_CONTEXT).changed)

    def test_defaults(self) -> None:
        out = shape_for_codex({"model": "m", "input": "hi", "instructions": None},
                              CODEX_CONTEXT).body
        self.assertEqual(out["instructions"], DEFAULT_INSTRUCTIONS)


class ConversationKeyTests(SynchronousTestCase):
    @given(st.text(max_size=10), items, items, items)
    def test_every_turn_keeps_the_key(
        self, instructions: str, first: list[Any], later: list[Any], other: list[Any]
    ) -> None:
        start = [{"role": "user", "content": "start"}]
        turn1 = {"instructions": instructions, "input": start + first}
        turn2 = {"instructions": instructions, "input": start + first + later}
        self.assertEqual(conversation_key(turn1), conversation_key(turn2))
        elsewhere = {"instructions": instructions,
                     "input": [{"role": "user", "content": "elsewhere"}] + other}
        self.assertNotEqual(conversation_key(turn1), conversation_key(elsewhere))

    @given(st.text(max_size=10), st.text(max_size=10))
    def test_instructions_count(self, a: str, b: str) -> None:
        if a != b:
            self.assertNotEqual(conversation_key({"instructions": a, "input": "x"}),
                                conversation_key({"instructions": b, "input": "x"}))


def _target(body: Mapping[str, Any]) -> Target:
    return Target("chatgpt", "gpt-5.1-codex", body, False)


class PrepareTests(SynchronousTestCase):
    def test_in_the_default_pipeline(self) -> None:
        self.assertIn(CODEX_RULES, DEFAULT_PIPELINE.steps)

    def test_chat_client_gets_the_rules_after_translation(self) -> None:
        body = {"model": "gpt-5.1-codex", "max_tokens": 9, "metadata": {"a": "b"},
                "messages": [{"role": "user", "content": "hi"}]}
        out, dropped = prepare_chat(_target(body), json.dumps(body).encode(), RESPONSES,
                                    backend_type=CODEX)
        sent = json.loads(out)
        self.assertEqual((sent["store"], sent["stream"]), (False, True))
        self.assertEqual(sent["instructions"], DEFAULT_INSTRUCTIONS)
        self.assertFalse(STRIPPED & set(sent))
        self.assertIn("max_output_tokens", dropped)
        self.assertIn("metadata", dropped)

    def test_responses_client_and_other_types(self) -> None:
        body = {"model": "gpt-5.1-codex", "input": "hi", "temperature": 1}
        raw = json.dumps(body).encode()
        out, dropped = prepare_responses(_target(body), raw, RESPONSES, backend_type=CODEX)
        self.assertEqual(dropped, ("temperature",))
        self.assertIs(json.loads(out)["store"], False)
        same, none = prepare_responses(_target(body), raw, RESPONSES,
                                       backend_type="openai-responses")
        self.assertEqual((same, none), (raw, ()))
