# -*- test-case-name: tests.test_translate_responses_request -*-
"""
Tests for L{llmproxy.translate.responses_request}, and for the shared field
tables of L{llmproxy.translate.requests} through it.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.errors import InvalidRequest
from llmproxy.translate.chat_request import chat_to_responses_request
from llmproxy.translate.requests import Translated
from llmproxy.translate.responses_request import responses_to_chat_request
from tests.test_translate_chat_request import chat_requests


def _to_chat(history: list[dict[str, Any]] | None = None, **resp: Any) -> Translated:
    """
    Translate a Responses request given as keyword arguments (with a
    default model and input).
    """
    resp.setdefault("model", "gpt-x")
    if "messages" not in resp:
        resp.setdefault("input", "hi")
    return responses_to_chat_request(resp, history or ())


class ResponsesToChatRequestTests(SynchronousTestCase):
    """
    Tests for L{responses_to_chat_request}.
    """

    def test_stringInput(self) -> None:
        """
        A string input is one user message.
        """
        result = _to_chat(input="hello")
        self.assertEqual(
            result.body, {"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}]}
        )
        self.assertEqual(result.dropped, ())

    def test_instructionsThenHistoryThenInput(self) -> None:
        """
        C{instructions} is a leading system message, followed by the
        history and then the input.
        """
        history = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
        result = _to_chat(history, instructions="Be nice.", input="q2")
        self.assertEqual(
            result.body["messages"],
            [
                {"role": "system", "content": "Be nice."},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"},
            ],
        )

    def test_historyNotModified(self) -> None:
        """
        A C{function_call} right after the history starts a new assistant
        message instead of modifying the history's last one, and the
        history is copied.
        """
        history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        before = copy.deepcopy(history)
        result = _to_chat(
            history,
            input=[{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
        )
        self.assertEqual(history, before)
        self.assertEqual(len(result.body["messages"]), 3)
        result.body["messages"][0]["content"] = "changed"
        self.assertEqual(history, before)

    def test_messageParts(self) -> None:
        """
        A single text part becomes a string; mixed parts become Chat parts,
        with images as C{image_url {url, detail}}.
        """
        result = _to_chat(
            input=[
                {"role": "user", "content": [{"type": "input_text", "text": "one"}]},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "see"},
                        {"type": "input_image", "image_url": "https://x/i.png", "detail": "low"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"role": "developer", "content": "dev"},
            ]
        )
        self.assertEqual(
            result.body["messages"],
            [
                {"role": "user", "content": "one"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/i.png", "detail": "low"},
                        },
                    ],
                },
                {"role": "assistant", "content": "ok"},
                {"role": "developer", "content": "dev"},
            ],
        )

    def test_functionCallsMerge(self) -> None:
        """
        Consecutive C{function_call} items merge into one assistant message,
        attached to a directly preceding assistant text message; outputs
        become tool messages.
        """
        result = _to_chat(
            input=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
                {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "b", "arguments": "[]"},
                {"type": "function_call_output", "call_id": "c1", "output": "r1"},
                {"type": "function_call_output", "call_id": "c2", "output": "r2"},
                {"type": "function_call", "call_id": "c3", "name": "a", "arguments": "{}"},
            ]
        )
        messages = result.body["messages"]
        self.assertEqual(
            messages[1],
            {
                "role": "assistant",
                "content": "checking",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "b", "arguments": "[]"}},
                ],
            },
        )
        self.assertEqual(messages[2], {"role": "tool", "tool_call_id": "c1", "content": "r1"})
        self.assertEqual(messages[3], {"role": "tool", "tool_call_id": "c2", "content": "r2"})
        self.assertEqual(
            messages[4],
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c3", "type": "function", "function": {"name": "a", "arguments": "{}"}}
                ],
            },
        )
        self.assertEqual(len(messages), 5)

    def test_reasoningItemsDropped(self) -> None:
        """
        Reasoning items are dropped and reported once.
        """
        result = _to_chat(
            input=[
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"role": "user", "content": "hi"},
                {"type": "reasoning", "id": "rs_2", "summary": []},
            ]
        )
        self.assertEqual(result.body["messages"], [{"role": "user", "content": "hi"}])
        self.assertEqual(result.dropped, ("input.reasoning",))

    def test_messagesAlias(self) -> None:
        """
        C{messages} is accepted in place of C{input}, including Chat-shaped
        messages.
        """
        chat_messages = [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": "r"},
        ]
        result = _to_chat(messages=chat_messages)
        self.assertEqual(result.body["messages"], chat_messages)
        self.assertEqual(result.dropped, ())

    def test_invalidInput(self) -> None:
        """
        A missing input, or one that is neither a string nor a list, is a
        400 naming C{input}.
        """
        for bad in (
            {"model": "m"},
            {"model": "m", "input": 3},
            {"model": "m", "input": {"role": "user"}},
        ):
            with self.assertRaises(InvalidRequest) as caught:
                responses_to_chat_request(bad)
            self.assertEqual(caught.exception.param, "input")

    def test_unknownItemRejected(self) -> None:
        """
        Items a Chat upstream cannot carry are a 400.
        """
        with self.assertRaises(InvalidRequest) as caught:
            _to_chat(input=[{"type": "web_search_call", "id": "ws"}])
        self.assertEqual(caught.exception.param, "input")

    def test_toolsNested(self) -> None:
        """
        Flat function tools are nested.
        """
        result = _to_chat(
            tools=[
                {
                    "type": "function",
                    "name": "f",
                    "description": "d",
                    "parameters": {"type": "object"},
                    "strict": True,
                }
            ]
        )
        self.assertEqual(
            result.body["tools"],
            [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "description": "d",
                        "parameters": {"type": "object"},
                        "strict": True,
                    },
                }
            ],
        )

    def test_hostedToolsDropped(self) -> None:
        """
        Tools a Chat upstream cannot run (hosted tools) are left out and
        reported once per type; function tools stay, in order, and those of
        a namespace are flattened in its place.
        """
        function = {"type": "function", "name": "exec_command", "parameters": {}}
        translated = _to_chat(tools=[
            {"type": "web_search"}, function,
            {"type": "namespace", "name": "multi_agent_v1", "tools": [function]},
            {"type": "web_search", "search_context_size": "low"},
        ])
        self.assertEqual([t["function"]["name"] for t in translated.body["tools"]],
                         ["exec_command", "multi_agent_v1__exec_command"])
        self.assertEqual(translated.dropped, ("tools.web_search",))

    def test_onlyHostedTools(self) -> None:
        """
        With every tool left out, no C{tools} goes upstream; an empty list
        stays as it was.
        """
        translated = _to_chat(tools=[{"type": "file_search"}])
        self.assertNotIn("tools", translated.body)
        self.assertEqual(translated.dropped, ("tools.file_search",))
        self.assertEqual(_to_chat(tools=[]).body["tools"], [])

    def test_toolChoice(self) -> None:
        """
        A flat forced function is nested; strings pass; a hosted choice
        falls back to C{auto}, reported.
        """
        self.assertEqual(
            _to_chat(tool_choice={"type": "function", "name": "f"}).body["tool_choice"],
            {"type": "function", "function": {"name": "f"}},
        )
        self.assertEqual(_to_chat(tool_choice="none").body["tool_choice"], "none")
        hosted = _to_chat(tool_choice={"type": "web_search_preview"})
        self.assertEqual((hosted.body["tool_choice"], hosted.dropped), ("auto", ("tool_choice",)))

    def test_textFormat(self) -> None:
        """
        C{text.format} becomes C{response_format} (json_schema nested back)
        and C{text.verbosity} becomes C{verbosity}.
        """
        result = _to_chat(
            text={
                "format": {
                    "type": "json_schema",
                    "name": "n",
                    "schema": {"type": "object"},
                    "strict": False,
                },
                "verbosity": "high",
            }
        )
        self.assertEqual(
            result.body["response_format"],
            {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": False},
            },
        )
        self.assertEqual(result.body["verbosity"], "high")
        self.assertNotIn("text", result.body)

    def test_responseFormatAlias(self) -> None:
        """
        C{response_format} is accepted in place of C{text.format}, in either
        shape; C{text.format} wins when both are given.
        """
        nested = {"type": "json_schema", "json_schema": {"name": "n", "schema": {}}}
        self.assertEqual(_to_chat(response_format=nested).body["response_format"], nested)
        self.assertEqual(
            _to_chat(response_format={"type": "json_schema", "name": "n", "schema": {}}).body[
                "response_format"
            ],
            nested,
        )
        for order in (True, False):
            fields: dict[str, Any] = {
                "response_format": nested,
                "text": {"format": {"type": "json_object"}},
            }
            if not order:
                fields = dict(reversed(list(fields.items())))
            self.assertEqual(
                _to_chat(None, **fields).body["response_format"], {"type": "json_object"}
            )

    def test_limitsAndReasoning(self) -> None:
        """
        C{max_output_tokens} becomes C{max_completion_tokens},
        C{reasoning.effort} becomes C{reasoning_effort}; a reasoning summary
        request is dropped and reported.
        """
        result = _to_chat(max_output_tokens=50, reasoning={"effort": "low", "summary": "auto"})
        self.assertEqual(result.body["max_completion_tokens"], 50)
        self.assertEqual(result.body["reasoning_effort"], "low")
        self.assertNotIn("reasoning", result.body)
        self.assertEqual(result.dropped, ("reasoning.summary",))

    def test_streamAsksForUsage(self) -> None:
        """
        A streamed request asks the Chat upstream for usage.
        """
        body = _to_chat(stream=True, stream_options={"include_obfuscation": False}).body
        self.assertEqual(body["stream"], True)
        self.assertEqual(body["stream_options"], {"include_usage": True})
        body = _to_chat(stream=False).body
        self.assertEqual(body["stream"], False)
        self.assertNotIn("stream_options", body)

    def test_topLogprobs(self) -> None:
        """
        C{top_logprobs} passes and turns Chat C{logprobs} on, which Chat
        requires alongside it.
        """
        body = _to_chat(top_logprobs=3).body
        self.assertEqual((body["top_logprobs"], body["logprobs"]), (3, True))

    def test_sameNameFields(self) -> None:
        """
        Fields with the same name and meaning pass unchanged.
        """
        fields = {
            "user": "u",
            "metadata": {"k": "v"},
            "parallel_tool_calls": True,
            "temperature": 0.5,
            "top_p": 0.5,
            "service_tier": "auto",
            "prompt_cache_key": "k",
            "safety_identifier": "s",
        }
        result = _to_chat(None, **fields)
        for key, value in fields.items():
            self.assertEqual(result.body[key], value, key)
        self.assertEqual(result.dropped, ())

    def test_droppedFields(self) -> None:
        """
        Responses-only fields and unknown fields are dropped and reported;
        unset ones are not.
        """
        result = _to_chat(
            store=False,
            previous_response_id="resp_1",
            include=["reasoning.encrypted_content"],
            truncation="auto",
            background=False,
            conversation=None,
            prompt={"id": "p"},
            max_tool_calls=3,
            text={"format": {"type": "text"}, "extra": 1},
            bogus=True,
        )
        self.assertEqual(
            result.dropped,
            (
                "store",
                "previous_response_id",
                "include",
                "truncation",
                "background",
                "prompt",
                "max_tool_calls",
                "text.extra",
                "bogus",
            ),
        )
        for key in ("store", "previous_response_id", "include", "bogus", "text"):
            self.assertNotIn(key, result.body)

    def test_imageByFileIdRejected(self) -> None:
        """
        Images given by file id cannot reach a Chat upstream.
        """
        with self.assertRaises(InvalidRequest):
            _to_chat(
                input=[
                    {
                        "role": "user",
                        "content": [{"type": "input_image", "file_id": "f", "detail": "auto"}],
                    }
                ]
            )

    @settings(max_examples=40)
    @given(chat_requests())
    def test_inputNotModified(self, chat: dict[str, Any]) -> None:
        """
        Translating a Responses request never modifies it or the history.
        """
        resp = chat_to_responses_request(chat).body
        history = [{"role": "user", "content": "earlier"}]
        before = copy.deepcopy((resp, history))
        result = responses_to_chat_request(resp, history)
        self.assertEqual((resp, history), before)
        for message in result.body["messages"]:
            message["content"] = "mutated"
        self.assertEqual((resp, history), before)
