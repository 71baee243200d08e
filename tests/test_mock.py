# -*- test-case-name: tests.test_mock -*-
"""
Tests for L{llmproxy.backends.mock} (and the L{MemoryResponse} it answers
with).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import UNKNOWN_LENGTH

from llmproxy.dialects import CHAT
from llmproxy.backends.mock import MOCK_MODELS, STREAM_DELAY, MockBackend, reply_for
from llmproxy.backends.body import collect_body
from llmproxy.config import BackendConfig
from llmproxy.errors import InvalidRequest
from llmproxy.testing import sse_events

TOOLS = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "write_file", "parameters": {"type": "object"}}},
]


def _backend(**kwargs: Any) -> tuple[MockBackend, Clock]:
    clock = Clock()
    clock.advance(1700000000)
    return MockBackend(BackendConfig(name="mock", type="mock", base_url="", **kwargs), clock), clock


def _user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


class MockTestCase(SynchronousTestCase):
    """
    Helpers to send a body and read the answer off the clock.
    """

    def setUp(self) -> None:
        self.mock, self.clock = _backend()

    def send(self, body: dict[str, Any], stream: bool = False) -> tuple[int, Any]:
        """
        The status and the body (JSON, or the SSE events) of one answer.
        """
        response = self.successResultOf(
            self.mock.send(json.dumps({"model": "mock-echo", **body}).encode(), None, stream))
        d = collect_body(response, self.clock)
        for _ in range(1000):
            if d.called:
                break
            self.clock.advance(STREAM_DELAY)
        raw = self.successResultOf(d)
        if stream and response.code == 200:
            self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                             [b"text/event-stream"])
            return response.code, sse_events(raw)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        return response.code, json.loads(raw)

    def stream(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """
        The JSON chunks of a streamed answer, checking it ends in [DONE].
        """
        code, events = self.send(body, stream=True)
        self.assertEqual(code, 200)
        self.assertTrue(events[-1].done)
        self.assertEqual([e for e in events if e.done], [events[-1]])
        chunks = [e.json() for e in events[:-1]]
        for chunk in chunks:
            self.assertEqual(chunk["object"], "chat.completion.chunk")
            self.assertEqual(chunk["model"], "mock-echo")
        self.assertEqual(len({c["id"] for c in chunks}), 1)
        return chunks


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


class EchoTests(MockTestCase):
    """
    Plain answers echo the last user message.
    """

    def test_non_stream(self) -> None:
        """
        A chat.completion whose content is the last user message.
        """
        code, body = self.send({"messages": [
            {"role": "system", "content": "be brief"}, _user("first"),
            {"role": "assistant", "content": "ok"}, _user("hello  mock world"),
        ]})
        self.assertEqual(code, 200)
        self.assertEqual(body["object"], "chat.completion")
        self.assertEqual(body["model"], "mock-echo")
        self.assertEqual(body["created"], 1700000000)
        self.assertTrue(body["id"].startswith("chatcmpl-"))
        [choice] = body["choices"]
        self.assertEqual(choice["message"]["role"], "assistant")
        self.assertEqual(choice["message"]["content"], "hello  mock world")
        self.assertNotIn("tool_calls", choice["message"])
        self.assertEqual(choice["finish_reason"], "stop")
        self.assertEqual(body["usage"], {"prompt_tokens": 7, "completion_tokens": 3,
                                         "total_tokens": 10})

    def test_content_parts(self) -> None:
        """
        The text parts of a list content are joined with spaces.
        """
        _, body = self.send({"messages": [_user([
            {"type": "text", "text": "look at"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "text", "text": "this"},
        ])]})
        self.assertEqual(body["choices"][0]["message"]["content"], "look at this")

    def test_model_and_ids(self) -> None:
        """
        The requested model is echoed back, and every answer has a new id.
        """
        _, one = self.send({"model": "mock-other", "messages": [_user("a")]})
        _, two = self.send({"messages": [_user("a")]})
        self.assertEqual(one["model"], "mock-other")
        self.assertNotEqual(one["id"], two["id"])

    def test_stream(self) -> None:
        """
        A stream starts with the assistant role, its content deltas
        reassemble to the echo, it stops with C{finish_reason: stop} and
        ends with C{[DONE]}.
        """
        chunks = self.stream({"messages": [_user("the quick brown fox")]})
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        self.assertEqual(_content(chunks), "the quick brown fox")
        self.assertGreater(len(chunks), 4)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[-1]["choices"][0]["delta"], {})
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks[:-1]],
                         [None] * (len(chunks) - 1))
        self.assertNotIn("usage", chunks[-1])

    @settings(max_examples=40)
    @given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
    def test_stream_reassembles(self, text: str) -> None:
        """
        Whatever the text, the streamed deltas reassemble to it exactly.
        """
        self.mock, self.clock = _backend()
        self.assertEqual(_content(self.stream({"messages": [_user(text)]})), text)

    def test_stream_paced(self) -> None:
        """
        Streamed chunks are paced on the clock, not sent at once.
        """
        response = self.successResultOf(self.mock.send(
            json.dumps({"messages": [_user("a b c")]}).encode(), None, True))
        self.assertEqual(response.length, UNKNOWN_LENGTH)
        d = collect_body(response, self.clock)
        self.clock.advance(0)
        self.assertNoResult(d)
        self.clock.pump([STREAM_DELAY] * 20)
        self.assertTrue(self.successResultOf(d).endswith(b"data: [DONE]\n\n"))

    def test_include_usage(self) -> None:
        """
        With C{stream_options.include_usage}, a usage chunk with no choices
        comes after the finish chunk and before C{[DONE]}.
        """
        chunks = self.stream({"messages": [_user("one two three")],
                              "stream_options": {"include_usage": True}})
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"], {"prompt_tokens": 3, "completion_tokens": 3,
                                               "total_tokens": 6})
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(sum(1 for c in chunks if "usage" in c), 1)

    def test_json_mode(self) -> None:
        """
        A JSON C{response_format} makes the content a JSON object.
        """
        for fmt in ({"type": "json_object"},
                    {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}):
            _, body = self.send({"messages": [_user("hi")], "response_format": fmt})
            self.assertEqual(json.loads(body["choices"][0]["message"]["content"]), {"echo": "hi"})
            chunks = self.stream({"messages": [_user("hi")], "response_format": fmt})
            self.assertEqual(json.loads(_content(chunks)), {"echo": "hi"})
        _, body = self.send({"messages": [_user("hi")], "response_format": {"type": "text"}})
        self.assertEqual(body["choices"][0]["message"]["content"], "hi")


class ToolTests(MockTestCase):
    """
    With tools, the mock calls one.
    """

    def test_first_tool(self) -> None:
        """
        The first tool is called with the echo as C{{"input": ...}}.
        """
        _, body = self.send({"messages": [_user("find it")], "tools": TOOLS})
        [choice] = body["choices"]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertIsNone(choice["message"]["content"])
        [call] = choice["message"]["tool_calls"]
        self.assertEqual(call["type"], "function")
        self.assertTrue(call["id"])
        self.assertEqual(call["function"]["name"], "lookup")
        self.assertEqual(json.loads(call["function"]["arguments"]), {"input": "find it"})

    def test_forced_tool(self) -> None:
        """
        A forced C{tool_choice} picks that tool.
        """
        _, body = self.send({"messages": [_user("x")], "tools": TOOLS, "tool_choice": {
            "type": "function", "function": {"name": "write_file"}}})
        [call] = body["choices"][0]["message"]["tool_calls"]
        self.assertEqual(call["function"]["name"], "write_file")

    def test_tool_choice_none(self) -> None:
        """
        C{tool_choice: "none"} answers with text.
        """
        _, body = self.send({"messages": [_user("x")], "tools": TOOLS, "tool_choice": "none"})
        self.assertEqual(body["choices"][0]["message"]["content"], "x")
        self.assertEqual(body["choices"][0]["finish_reason"], "stop")

    def test_after_tool_result(self) -> None:
        """
        After a tool result the mock reports it instead of calling again.
        """
        messages = [
            _user("find it"),
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ]
        _, body = self.send({"messages": messages, "tools": TOOLS})
        message = body["choices"][0]["message"]
        self.assertEqual(message["content"], "Tool result: 42")
        self.assertNotIn("tool_calls", message)
        chunks = self.stream({"messages": messages, "tools": TOOLS})
        self.assertEqual(_content(chunks), "Tool result: 42")

    def test_stream_tool_call(self) -> None:
        """
        A streamed call: the id and name come first, the argument pieces
        join to the JSON arguments, and it finishes with C{tool_calls}.
        """
        chunks = self.stream({"messages": [_user("find it")], "tools": TOOLS})
        self.assertIsNone(chunks[0]["choices"][0]["delta"]["content"])
        calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                 if "tool_calls" in c["choices"][0]["delta"]]
        self.assertEqual(calls[0]["function"]["name"], "lookup")
        self.assertEqual(calls[0]["id"], "call_mock_0")
        self.assertEqual({c["index"] for c in calls}, {0})
        self.assertTrue(all("id" not in c for c in calls[1:]))
        arguments = "".join(c["function"]["arguments"] for c in calls)
        self.assertEqual(json.loads(arguments), {"input": "find it"})
        self.assertGreater(len(calls), 2)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(_content(chunks), "")


class InvalidTests(MockTestCase):
    """
    Bodies the mock cannot answer get an OpenAI-shaped 400.
    """

    def test_invalid_messages(self) -> None:
        """
        Missing, empty, non-list and non-object messages are a 400 naming
        the C{messages} parameter, streamed or not.
        """
        for body in ({}, {"messages": []}, {"messages": "hi"}, {"messages": ["hi"]},
                     {"messages": [_user("ok"), 3]}):
            for stream in (False, True):
                code, answer = self.send(body, stream=stream)
                self.assertEqual(code, 400, body)
                self.assertEqual(answer["error"]["param"], "messages")
                self.assertEqual(answer["error"]["type"], "invalid_request_error")
                self.assertEqual(set(answer["error"]), {"message", "type", "param", "code"})

    def test_reply_for_raises(self) -> None:
        """
        L{reply_for} raises L{InvalidRequest} rather than crashing.
        """
        self.assertRaises(InvalidRequest, reply_for, {"messages": [None]})
        self.assertEqual(reply_for({"messages": [_user("x")]}), ("x", None))


class ModelsTests(SynchronousTestCase):
    """
    Tests for L{MockBackend.models} and its dialect.
    """

    def test_models(self) -> None:
        """
        The default model list, or the configured one.
        """
        mock, _ = _backend()
        self.assertEqual(mock.dialect, CHAT)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(mock.models())),
                         list(MOCK_MODELS))
        mock, _ = _backend(models=("a", "b"))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(mock.models())), ["a", "b"])
