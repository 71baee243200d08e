"""
Tests for L{llmproxy.adapt.pipeline}, L{llmproxy.adapt.steps} and the
reasoning step as a pipeline step: the pure pipeline, without I/O.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.adapt.pipeline import (
    BOTH_DIALECTS,
    PROXY_FIELD_PREFIX,
    Context,
    Pipeline,
    Shaped,
    Step,
)
from llmproxy.adapt.reasoning import REASONING, adapt_chat_for_reasoning, is_reasoning_model
from llmproxy.adapt.steps import DEFAULT_PIPELINE, default_pipeline
from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.dialects import CHAT, RESPONSES

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
dialects = st.sampled_from([CHAT, RESPONSES])

KNOB = PROXY_FIELD_PREFIX + "tag"
OTHER_KNOB = PROXY_FIELD_PREFIX + "other"


def context(model: str = "gpt-4o", dialect: str = CHAT, upstream: str | None = None,
            reasoning: re.Pattern[str] | None = None) -> Context:
    return Context("openai", model, dialect, dialect if upstream is None else upstream, reasoning)


def setting(name: str, value: Any, *, dialects: frozenset[str] = BOTH_DIALECTS,
            consumes: frozenset[str] = frozenset(), label: str = "") -> Step:
    """
    A step that sets C{name} to C{value} (a changed body, nothing dropped).
    """
    def shape(body: Mapping[str, Any], ctx: Context) -> Shaped:
        return Shaped({**body, name: value}, (), True)
    return Step(label or f"set-{name}", shape, dialects, consumes)


def dropping(*names: str) -> Step:
    """
    A step that removes C{names} and reports the ones it found.
    """
    def shape(body: Mapping[str, Any], ctx: Context) -> Shaped:
        found = tuple(name for name in names if name in body)
        if not found:
            return Shaped(body)
        return Shaped({k: v for k, v in body.items() if k not in names}, found, True)
    return Step("drop-" + "-".join(names), shape)


class Recorder:
    """
    Steps that record the order they ran in and the body and context each
    saw, and change nothing.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any], Context]] = []

    def step(self, name: str, dialects: frozenset[str] = BOTH_DIALECTS,
             consumes: frozenset[str] = frozenset()) -> Step:
        def shape(body: Mapping[str, Any], ctx: Context) -> Shaped:
            self.seen.append((name, dict(body), ctx))
            # A copy reported as unchanged: the pipeline must keep the
            # body it gave, not this one.
            return Shaped(dict(body), (), False)
        return Step(name, shape, dialects, consumes)

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.seen]


def to_other(body: Mapping[str, Any]) -> Shaped:
    """
    A stand-in translation: marks the body, drops C{"untranslatable"}.
    """
    kept = {k: v for k, v in body.items() if k != "untranslatable"}
    dropped = ("untranslatable",) if "untranslatable" in body else ()
    return Shaped({**kept, "translated": True}, dropped, True)


class UntouchedTests(SynchronousTestCase):
    """
    A body no step changes comes out as the very object that went in.
    """

    @given(json_objects, dialects)
    @settings(deadline=None)
    def test_identity_pipeline(self, body: dict[str, Any], dialect: str) -> None:
        """
        The empty pipeline returns the body itself, unchanged, nothing dropped.
        """
        before = copy.deepcopy(body)
        shaped = Pipeline().run(body, context(dialect=dialect))
        self.assertIs(shaped.body, body)
        self.assertEqual((shaped.dropped, shaped.changed), ((), False))
        self.assertEqual(body, before)

    @given(json_objects, dialects)
    @settings(deadline=None)
    def test_steps_reporting_no_change(self, body: dict[str, Any], dialect: str) -> None:
        """
        Steps that report no change (even returning a copy) leave the body
        object as it was given, and every step saw the body itself.
        """
        recorder = Recorder()
        pipeline = Pipeline((recorder.step("a"), recorder.step("b")))
        shaped = pipeline.run(body, context(dialect=dialect))
        self.assertIs(shaped.body, body)
        self.assertFalse(shaped.changed)
        self.assertEqual(recorder.names, ["a", "b"])

    @given(json_objects.filter(lambda b: KNOB not in b), dialects)
    @settings(deadline=None)
    def test_absent_proxy_fields(self, body: dict[str, Any], dialect: str) -> None:
        """
        A pipeline that consumes a proxy-only field the body lacks leaves
        the body untouched, and its steps see no knobs.
        """
        recorder = Recorder()
        shaped = Pipeline((recorder.step("a", consumes=frozenset({KNOB})),)).run(
            body, context(dialect=dialect))
        self.assertIs(shaped.body, body)
        self.assertFalse(shaped.changed)
        self.assertEqual(dict(recorder.seen[0][2].knobs), {})

    def test_default_pipeline_on_plain_models(self) -> None:
        """
        The default pipeline leaves a body for a non-reasoning model as it
        is, whichever dialect it is in.
        """
        body = {"model": "gpt-4o", "temperature": 0.5, "max_tokens": 9,
                "messages": [{"role": "system", "content": "x"}]}
        for dialect in (CHAT, RESPONSES):
            shaped = DEFAULT_PIPELINE.run(body, context(dialect=dialect))
            self.assertIs(shaped.body, body)
            self.assertFalse(shaped.changed)


class OrderTests(SynchronousTestCase):
    """
    Steps run in order, each on the body the previous one returned, and
    their dropped parameters are gathered in that order.
    """

    def test_each_step_sees_the_previous_result(self) -> None:
        recorder = Recorder()
        pipeline = Pipeline((setting("first", 1), recorder.step("look"), setting("second", 2)))
        body = {"model": "m"}
        shaped = pipeline.run(body, context())
        self.assertEqual(shaped.body, {"model": "m", "first": 1, "second": 2})
        self.assertEqual(list(shaped.body), ["model", "first", "second"])
        self.assertTrue(shaped.changed)
        [(_, seen, _)] = recorder.seen
        self.assertEqual(seen, {"model": "m", "first": 1})
        self.assertEqual(body, {"model": "m"})

    def test_later_step_wins(self) -> None:
        pipeline = Pipeline((setting("user", "a"), setting("user", "b", label="again")))
        shaped = pipeline.run({}, context())
        self.assertEqual(shaped.body, {"user": "b"})

    def test_dropped_gathered_from_several_steps(self) -> None:
        pipeline = Pipeline((dropping("top_p", "seed"), setting("x", 1), dropping("logprobs")))
        body = {"seed": 1, "logprobs": True, "top_p": 0.1, "model": "m"}
        shaped = pipeline.run(body, context())
        self.assertEqual(shaped.dropped, ("top_p", "seed", "logprobs"))
        self.assertEqual(shaped.body, {"model": "m", "x": 1})

    def test_steps_and_translation_dropped_in_order(self) -> None:
        """
        What steps before translation dropped comes first, then what the
        translation dropped, then what steps after it dropped.
        """
        chat_only = Step("chat-only", dropping("seed").shape, frozenset({CHAT}))
        pipeline = Pipeline((chat_only, dropping("top_p")))
        body = {"seed": 1, "top_p": 0.5, "untranslatable": 2}
        shaped = pipeline.run(body, context(dialect=RESPONSES, upstream=CHAT), to_other)
        self.assertEqual(shaped.dropped, ("top_p", "untranslatable", "seed"))
        self.assertEqual(shaped.body, {"translated": True})

    def test_names_are_unique(self) -> None:
        with self.assertRaises(ValueError) as raised:
            Pipeline((setting("x", 1), setting("x", 2)))
        self.assertIn("set-x", str(raised.exception))


class DialectTests(SynchronousTestCase):
    """
    Steps run before translation when they understand the client's body,
    after it when they understand only the upstream's, else not at all.
    """

    def _through(self, client: str, upstream: str) -> tuple[Recorder, Shaped]:
        recorder = Recorder()
        pipeline = Pipeline((
            recorder.step("chat", frozenset({CHAT})),
            recorder.step("both"),
            recorder.step("responses", frozenset({RESPONSES})),
        ))
        translate = None if client == upstream else to_other
        shaped = pipeline.run({"model": "m"}, context(dialect=client, upstream=upstream),
                              translate)
        return recorder, shaped

    def test_chat_to_responses(self) -> None:
        recorder, shaped = self._through(CHAT, RESPONSES)
        self.assertEqual(recorder.names, ["chat", "both", "responses"])
        dialects_seen = [ctx.dialect for _, _, ctx in recorder.seen]
        self.assertEqual(dialects_seen, [CHAT, CHAT, RESPONSES])
        self.assertEqual(recorder.seen[2][1], {"model": "m", "translated": True})
        self.assertTrue(shaped.changed)

    def test_responses_to_chat(self) -> None:
        recorder, _ = self._through(RESPONSES, CHAT)
        self.assertEqual(recorder.names, ["both", "responses", "chat"])
        self.assertEqual([ctx.dialect for _, _, ctx in recorder.seen], [RESPONSES, RESPONSES, CHAT])
        self.assertEqual(recorder.seen[2][1], {"model": "m", "translated": True})

    def test_same_dialect(self) -> None:
        for dialect, expected in ((CHAT, ["chat", "both"]), (RESPONSES, ["both", "responses"])):
            recorder, shaped = self._through(dialect, dialect)
            self.assertEqual(recorder.names, expected)
            self.assertFalse(shaped.changed)
            self.assertTrue(all(ctx.upstream == dialect for _, _, ctx in recorder.seen))

    def test_translation_alone_changes_the_body(self) -> None:
        shaped = Pipeline().run({"model": "m"}, context(dialect=CHAT, upstream=RESPONSES),
                                to_other)
        self.assertEqual(shaped, Shaped({"model": "m", "translated": True}, (), True))

    def test_step_dialects_checked(self) -> None:
        self.assertRaises(ValueError, setting, "x", 1, dialects=frozenset())
        self.assertRaises(ValueError, setting, "x", 1, dialects=frozenset({"completions"}))


class ProxyFieldTests(SynchronousTestCase):
    """
    Proxy-only fields are taken out of the body before any step or
    translation, and handed to every step.
    """

    @given(json_objects, json_values, st.booleans(), dialects)
    @settings(deadline=None)
    def test_consumed(self, body: dict[str, Any], value: Any, other: bool,
                      dialect: str) -> None:
        body = {**body, KNOB: value}
        if other:
            body[OTHER_KNOB] = [value]
        recorder = Recorder()
        pipeline = Pipeline((recorder.step("a", consumes=frozenset({KNOB})),
                             recorder.step("b", consumes=frozenset({OTHER_KNOB}))))
        before = copy.deepcopy(body)
        shaped = pipeline.run(body, context(dialect=dialect))
        rest = {k: v for k, v in before.items() if k not in (KNOB, OTHER_KNOB)}
        self.assertEqual(shaped.body, rest)
        self.assertTrue(shaped.changed)
        self.assertEqual(shaped.dropped, ())
        knobs = {KNOB: value, **({OTHER_KNOB: [value]} if other else {})}
        for _, seen, ctx in recorder.seen:
            self.assertEqual(seen, rest)
            self.assertEqual(dict(ctx.knobs), knobs)
        self.assertEqual(body, before)

    def test_never_translated(self) -> None:
        """
        Translation gets the body without them (so they are not reported as
        dropped either), and steps after translation still see them.
        """
        recorder = Recorder()
        pipeline = Pipeline((recorder.step("after", frozenset({CHAT}), frozenset({KNOB})),))
        shaped = pipeline.run({"model": "m", KNOB: "v", "untranslatable": 1},
                              context(dialect=RESPONSES, upstream=CHAT), to_other)
        self.assertEqual(shaped, Shaped({"model": "m", "translated": True}, ("untranslatable",), True))
        [(_, _, ctx)] = recorder.seen
        self.assertEqual(dict(ctx.knobs), {KNOB: "v"})

    def test_unclaimed_fields_are_forwarded(self) -> None:
        """
        A field under the prefix that no step consumes is not llmproxy's.
        """
        body = {"model": "m", KNOB: 1}
        shaped = Pipeline((setting("x", 1, consumes=frozenset({OTHER_KNOB})),)).run(
            body, context())
        self.assertEqual(shaped.body, {"model": "m", KNOB: 1, "x": 1})

    def test_prefix_required(self) -> None:
        with self.assertRaises(ValueError) as raised:
            setting("x", 1, consumes=frozenset({"temperature", KNOB}))
        self.assertIn("temperature", str(raised.exception))
        self.assertNotIn(KNOB, str(raised.exception))

    def test_pipeline_consumes_union(self) -> None:
        pipeline = Pipeline((setting("x", 1, consumes=frozenset({KNOB})),
                             setting("y", 1, consumes=frozenset({KNOB, OTHER_KNOB}))))
        self.assertEqual(pipeline.consumes, {KNOB, OTHER_KNOB})


messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                           "content": st.text(max_size=8) | st.lists(st.fixed_dictionaries(
                               {"type": st.sampled_from(["text", "image_url"]),
                                "text": st.text(max_size=5)}), max_size=2)}),
    max_size=4,
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages},
    optional={name: st.floats(0, 1) for name in ("temperature", "top_p", "presence_penalty")}
    | {"max_tokens": st.integers(1, 9), "max_completion_tokens": st.integers(1, 9),
       "reasoning_effort": st.sampled_from(["low", "high"]), "logprobs": st.booleans(),
       "seed": st.integers(0, 9)},
)
models = st.sampled_from(["gpt-4o", "o1-preview", "o1-mini", "o1", "o3-mini", "gpt-5.1",
                          "custom-think"])
patterns = st.sampled_from([None, re.compile("custom-")])


class ReasoningStepTests(SynchronousTestCase):
    """
    L{REASONING} in a pipeline does what L{adapt_chat_for_reasoning} does,
    and is the first step of every configuration's pipeline.
    """

    @given(chat_bodies, models, patterns)
    @settings(deadline=None)
    def test_same_as_the_function(self, body: dict[str, Any], model: str,
                                  pattern: re.Pattern[str] | None) -> None:
        shaped = Pipeline((REASONING,)).run(body, context(model, reasoning=pattern))
        adapted = adapt_chat_for_reasoning(body, model, pattern)
        self.assertEqual(shaped.body, adapted.body)
        self.assertEqual(shaped.dropped, adapted.dropped)
        self.assertEqual(shaped.changed, adapted.body != body or bool(adapted.dropped))
        if not shaped.changed:
            self.assertIs(shaped.body, body)
        if not is_reasoning_model(model, pattern):
            self.assertFalse(shaped.changed)

    def test_chat_only(self) -> None:
        """
        A Responses body for a reasoning model, sent to a Responses
        upstream, is not touched (as before the pipeline).
        """
        body = {"model": "o1", "temperature": 1, "instructions": "x"}
        shaped = Pipeline((REASONING,)).run(body, context("o1", RESPONSES))
        self.assertIs(shaped.body, body)
        self.assertFalse(shaped.changed)

    def test_default_pipeline(self) -> None:
        config = build_config({"default_backend": "mock", "backends": {"mock": {"type": "mock"}}},
                              environ={}, kinds=REGISTRY.kinds)
        pipeline = default_pipeline(config)
        self.assertIn(REASONING, pipeline.steps)
        self.assertEqual(pipeline, DEFAULT_PIPELINE)
