"""
The pure parts of the hybrid backend: its selector and settings
(L{llmproxy.routing.hybrid}), the phases' bodies and the whole answer
(L{llmproxy.translate.hybrid}), the reasoning cutter and the client's
stream (L{llmproxy.translate.hybrid_stream}).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.config.hybrid import HybridConfig
from llmproxy.errors import InvalidRequest, ProxyError
from llmproxy.routing.hybrid import (
    HybridSelector, decide, is_hybrid, parse_hybrid, split_failover, with_settings,
)
from llmproxy.routing.resolve import resolve
from llmproxy.sse import SSEParser, encode_event
from llmproxy.testing import (
    chat_chunk, chat_completion, chat_request, make_config, openai_config,
    reasoning_delta_chunks, reasoning_summary_events, responses_events, responses_object,
    think_chunks,
)
from llmproxy.translate.hybrid import (
    add_usage, chosen_effort, execution_body, inject, merge_answer, reasoning_block, reasoning_body,
)
from llmproxy.translate.hybrid_stream import ReasoningCutter, ReasoningFailed, with_reasoning

NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
MODELS = st.from_regex(r"[a-z][a-z0-9.-]{0,12}(/[a-z0-9-]{1,6})?", fullmatch=True)
# Text without tags or the characters that would make one.
WORDS = st.text(st.characters(blacklist_characters="<>/", blacklist_categories=("Cs",)),
                min_size=1, max_size=12)


class SelectorTests(SynchronousTestCase):
    @given(NAMES, MODELS, NAMES, MODELS)
    def test_two_selectors(self, rb: str, rm: str, eb: str, em: str) -> None:
        text = f"hybrid:[{rb}:{rm}?temperature=0.5,{eb}:{em}]"
        self.assertTrue(is_hybrid(text))
        self.assertEqual(parse_hybrid(text),
                         HybridSelector(f"{rb}:{rm}?temperature=0.5", f"{eb}:{em}"))

    def test_settings_query(self) -> None:
        parsed = parse_hybrid("hybrid:[a:b,c:d]?hybrid_injection=user"
                              "&reasoning_injection_probability=0.25")
        self.assertEqual(with_settings(HybridConfig(), dict(parsed.params)),
                         HybridConfig(probability=0.25, injection="user"))

    def test_bad_forms(self) -> None:
        for text in ["hybrid:[a:b]", "hybrid:[a:b,c:d,e:f]", "hybrid:[a:b,c:d", "hybrid:[,c:d]",
                     "hybrid:[a:b,c:d]x", "hybrid:[a:b,hybrid:[c:d,e:f]]",
                     "hybrid:[a:b,c:d]?nope=1", "hybrid:[a:b,c:d]?hybrid_injection=both",
                     "hybrid:[a:b,c:d]?reasoning_injection_probability=2",
                     "hybrid:[a:b,c:d]?hybrid_reasoning_model_timeout=0",
                     "hybrid:[a:b,c:d]?hybrid_reasoning_force_initial_turns=x"]:
            with self.assertRaises(InvalidRequest, msg=text) as caught:
                parse_hybrid(text)
            self.assertEqual(caught.exception.code, "invalid_model_selector")

    @given(st.text(max_size=60))
    def test_only_invalid_request(self, text: str) -> None:
        try:
            parse_hybrid("hybrid:[" + text)
        except InvalidRequest:
            pass

    def test_failover_split_outside_brackets(self) -> None:
        self.assertEqual(split_failover("hybrid:[a:b|c:d,e:f]|g:h"),
                         ["hybrid:[a:b|c:d,e:f]", "g:h"])

    def test_resolved(self) -> None:
        config = make_config(openai_config("http://x/v1"))
        route = resolve(config, {"model": "hybrid:[openai:o3-mini,openai:gpt-4o-mini"
                                          "?temperature=0.2]|openai:gpt-4o", "messages": []})
        self.assertTrue(route.hybrid)
        hybrid = route.targets[0].hybrid
        assert hybrid is not None
        self.assertEqual([t.model for t in hybrid.reasoning.targets], ["o3-mini"])
        self.assertEqual(hybrid.execution.targets[0].body["temperature"], 0.2)
        self.assertEqual(route.targets[1].model, "gpt-4o")
        self.assertFalse(resolve(config, {"model": "gpt-4o", "messages": []}).hybrid)

    def test_unknown_phase_backend(self) -> None:
        config = make_config(openai_config("http://x/v1"))
        with self.assertRaises(InvalidRequest) as caught:
            resolve(config, {"model": "hybrid:[nope:o3,openai:gpt-4o]", "messages": []})
        self.assertEqual(caught.exception.code, "unknown_backend")


class DecideTests(SynchronousTestCase):
    @given(st.floats(0.0, 1.0, exclude_max=True))
    def test_probability_one_and_zero(self, draw: float) -> None:
        self.assertIsNone(decide(HybridConfig(probability=1.0), None, False, draw))
        self.assertEqual(decide(HybridConfig(probability=0.0), None, False, draw),
                         "probability")

    @given(st.integers(0, 10), st.integers(0, 10))
    def test_forced_turns(self, turn: int, force: int) -> None:
        settings = HybridConfig(probability=0.0, force_turns=force)
        self.assertEqual(decide(settings, turn, False, 0.5) is None, turn < force)

    def test_tuned_is_never_reasoned(self) -> None:
        self.assertEqual(decide(HybridConfig(), 0, True, 0.0), "tuned")


def _cut(events: list[bytes], cuts: list[int], last: int) -> ReasoningCutter:
    """
    Feed the bytes of C{events} in pieces split at C{cuts}; the cutter
    must end with the piece that completes event C{last}, not before, not
    later.
    """
    stream = b"".join(events)
    ends = [sum(len(e) for e in events[:i + 1]) for i in range(len(events))]
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    expected = min(b for b in bounds if b >= ends[last])
    cutter, parser, start = ReasoningCutter(), SSEParser(), 0
    for end in bounds:
        if cutter.feed(parser.feed(stream[start:end])):
            assert end == expected, (end, expected)
            return cutter
        start = end
    raise AssertionError("the reasoning never ended")


class CutterTests(SynchronousTestCase):
    @given(st.lists(WORDS, min_size=1, max_size=6), st.lists(WORDS, min_size=1, max_size=4),
           st.sampled_from(["think", "thinking"]), st.lists(st.integers(0, 10_000)))
    def test_close_tag_at_any_boundary(self, thoughts: list[str], answer: list[str], tag: str,
                                       cuts: list[int]) -> None:
        cutter = _cut(think_chunks("r", thoughts, answer, tag), cuts, 3 + len(thoughts))
        self.assertEqual(cutter.ended, "tag")
        self.assertEqual(cutter.text, "".join(thoughts).strip())

    @given(st.lists(WORDS, min_size=1, max_size=6), st.lists(WORDS, min_size=1, max_size=4),
           st.sampled_from(["reasoning_content", "reasoning"]),
           st.lists(st.integers(0, 10_000)))
    def test_delta_run(self, thoughts: list[str], answer: list[str], field: str,
                       cuts: list[int]) -> None:
        cutter = _cut(reasoning_delta_chunks("r", thoughts, answer, field), cuts,
                      1 + len(thoughts))
        self.assertEqual((cutter.ended, cutter.text), ("run", "".join(thoughts).strip()))

    @given(st.lists(WORDS, min_size=1, max_size=6), st.lists(st.integers(0, 10_000)))
    def test_responses_summary(self, thoughts: list[str], cuts: list[int]) -> None:
        cutter = _cut(reasoning_summary_events("r", thoughts, ["the ", "answer"]), cuts,
                      4 + len(thoughts))
        self.assertEqual((cutter.ended, cutter.text), ("run", "".join(thoughts).strip()))

    def test_plain_answer_ends_at_finish(self) -> None:
        cutter = _cut([encode_event(c) for c in [
            chat_chunk("r", {"content": "first do x, "}), chat_chunk("r", {"content": "then y"}),
            chat_chunk("r", {}, "stop")]], [], 2)
        self.assertEqual((cutter.ended, cutter.text), ("finish", "first do x, then y"))

    def test_responses_answer_ends_when_completed(self) -> None:
        events = responses_events("r", ["plan ", "it"])
        cutter = _cut(events, [], len(events) - 1)
        self.assertEqual((cutter.ended, cutter.text), ("finish", "plan it"))
        self.assertIsNotNone(cutter.usage)

    def test_error_event_fails(self) -> None:
        with self.assertRaises(ReasoningFailed):
            ReasoningCutter().feed(SSEParser().feed(encode_event(
                {"error": {"message": "overloaded"}})))


MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]), "content": WORDS}), max_size=6)


class BodyTests(SynchronousTestCase):
    @given(MESSAGES, st.sampled_from(["system", "user"]), WORDS)
    def test_inject_chat(self, messages: list[dict[str, Any]], mode: str, text: str) -> None:
        body = {"model": "m", "messages": messages}
        out = inject(body, "chat", text, mode)
        self.assertEqual(body["messages"], messages, "the client's body is not changed")
        block = reasoning_block(text)
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if mode == "user" and users:
            last = users[-1]
            self.assertEqual(out["messages"][last]["content"],
                             f"{block}\n\n{messages[last]['content']}")
            self.assertEqual(len(out["messages"]), len(messages))
        else:
            at = users[-1] if users else len(messages)
            self.assertEqual(out["messages"][at], {"role": "system", "content": block})
            self.assertEqual(out["messages"][:at] + out["messages"][at + 1:], messages)

    def test_inject_responses(self) -> None:
        self.assertEqual(inject({"input": "do it"}, "responses", "plan", "system")["input"],
                         [{"role": "system", "content": reasoning_block("plan")},
                          {"role": "user", "content": "do it"}])
        parts = [{"type": "input_text", "text": "do it"}]
        out = inject({"input": [{"type": "message", "role": "user", "content": parts}]},
                     "responses", "plan", "user")
        self.assertEqual(out["input"][0]["content"],
                         [{"type": "input_text", "text": reasoning_block("plan")}, *parts])

    def test_reasoning_body(self) -> None:
        body = chat_request(tools=[{"type": "function", "function": {"name": "f"}}],
                            tool_choice="auto", reasoning_effort="low", max_tokens=50,
                            response_format={"type": "json_object"})
        out = reasoning_body(body, "chat")
        self.assertEqual(set(out), {"model", "messages", "stream", "reasoning_effort"})
        self.assertEqual((out["stream"], out["reasoning_effort"]), (True, "high"))
        out = reasoning_body({"model": "m", "input": "x", "tools": [], "text": {"format": {}},
                              "max_output_tokens": 9}, "responses")
        self.assertEqual(out, {"model": "m", "input": "x", "stream": True, "text": {},
                               "reasoning": {"effort": "high", "summary": "auto"}})

    def test_selector_effort_wins(self) -> None:
        client = chat_request(reasoning_effort="low")
        self.assertEqual(chosen_effort(client, client, "chat"), "high")
        self.assertEqual(chosen_effort({**client, "reasoning_effort": "medium"}, client, "chat"),
                         "medium")
        self.assertEqual(chosen_effort({"reasoning": {"effort": "xhigh"}}, {}, "responses"),
                         "xhigh")

    def test_execution_body_turns_reasoning_off(self) -> None:
        body = chat_request(reasoning_effort="high")
        self.assertNotIn("reasoning_effort", execution_body(body, "chat", None, "system", False))
        self.assertEqual(execution_body(body, "chat", "p", "user", True)["reasoning_effort"],
                         "low")
        out = execution_body({"input": "x", "reasoning": {"effort": "high"}}, "responses",
                             None, "system", False)
        self.assertEqual(out, {"input": "x"})

    @given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6),
           st.integers(0, 10**6))
    def test_usage_sum(self, p1: int, c1: int, p2: int, c2: int) -> None:
        chat = {"prompt_tokens": p1, "completion_tokens": c1, "total_tokens": p1 + c1}
        responses = {"input_tokens": p2, "output_tokens": c2, "total_tokens": p2 + c2,
                     "output_tokens_details": {"reasoning_tokens": c2}}
        summed = add_usage(chat, responses, "chat")
        assert summed is not None
        self.assertEqual((summed["prompt_tokens"], summed["completion_tokens"],
                          summed["total_tokens"]), (p1 + p2, c1 + c2, p1 + c1 + p2 + c2))
        if c2:
            self.assertEqual(summed["completion_tokens_details"], {"reasoning_tokens": c2})
        back = add_usage(responses, chat, "responses")
        assert back is not None
        self.assertEqual(back["input_tokens"], p1 + p2)
        self.assertEqual(add_usage(chat, None, "chat"), chat)

    def test_merge_chat(self) -> None:
        answer = json.dumps(chat_completion("m", "done")).encode()
        out, usage = merge_answer(answer, "chat", "plan", {"prompt_tokens": 1,
                                                          "completion_tokens": 2})
        data = json.loads(out)
        self.assertEqual(data["choices"][0]["message"]["reasoning_content"], "plan")
        self.assertEqual(data["choices"][0]["message"]["content"], "done")
        self.assertEqual(data["usage"], usage)

    def test_merge_responses(self) -> None:
        answer = json.dumps(responses_object("m", "done")).encode()
        data = json.loads(merge_answer(answer, "responses", "plan", None)[0])
        self.assertEqual([i["type"] for i in data["output"]], ["reasoning", "message"])
        self.assertEqual(data["output"][0]["summary"][0]["text"], "plan")


class _Echo:
    """
    A transform that relays events as they are.
    """

    finished = True

    def events(self, raw: list[bytes]) -> bytes:
        return b"".join(raw)

    def end(self) -> bytes:
        return b""

    def error(self, error: ProxyError) -> bytes:
        return b"error"

    def final(self) -> dict[str, Any] | None:
        return None


class StreamTests(SynchronousTestCase):
    def test_chat_reasoning_first_once(self) -> None:
        transform = with_reasoning(_Echo(), "chat", "plan")
        events = [encode_event(chat_chunk("m", {"content": "a"}, ident="x1")),
                  encode_event(chat_chunk("m", {"content": "b"}, ident="x1"))]
        self.assertEqual(transform.events([]), b"")
        out = transform.events(events[:1]) + transform.events(events[1:])
        chunks = [e.json() for e in SSEParser().feed(out)]
        self.assertEqual(chunks[0]["choices"][0]["delta"]["reasoning_content"], "plan")
        self.assertEqual(chunks[0]["id"], "x1")
        self.assertEqual([c["choices"][0]["delta"].get("content") for c in chunks[1:]],
                         ["a", "b"])

    def test_responses_reasoning_item_first(self) -> None:
        transform = with_reasoning(_Echo(), "responses", "plan")
        raw = responses_events("m", ["a", "b"])
        out = transform.events(raw[:3]) + transform.events(raw[3:])
        events = [e.json() for e in SSEParser().feed(out)]
        kinds = [e["type"] for e in events]
        self.assertEqual(kinds[:3], ["response.created", "response.in_progress",
                                     "response.output_item.added"])
        self.assertEqual(events[2]["item"]["type"], "reasoning")
        self.assertIn("response.reasoning_summary_text.delta", kinds)
        message = [e for e in events if e["type"] == "response.output_item.added"][1]
        self.assertEqual(message["output_index"], 1)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        final = events[-1]["response"]["output"]
        self.assertEqual([i["type"] for i in final], ["reasoning", "message"])
