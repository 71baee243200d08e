# -*- test-case-name: tests.test_translate_responses -*-
"""
Tests for L{llmproxy.translate.responses}.

The strategies and helpers here (L{chat_completions}, L{responses_requests},
L{responses_objects}, L{normalised_completion}, L{completion_summary}) are
shared with the stream tests, L{tests.test_translate_chat_to_responses} and
L{tests.test_translate_responses_to_chat}.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.errors import UpstreamError
from llmproxy.translate.responses import (
    chat_completion_to_response,
    chat_usage_to_responses,
    responses_to_chat_completion,
    responses_usage_to_chat,
)

RESPONSE_ID = "resp_abc123"

# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

_texts = st.text(max_size=15)
_nonempty = st.text(min_size=1, max_size=15)
_names = st.text("abcdefgh_", min_size=1, max_size=6)
_ids = st.text("abcdef0123", min_size=1, max_size=6).map(lambda suffix: f"call_{suffix}")
_arguments = st.dictionaries(_names, st.integers(-3, 3) | _texts, max_size=3).map(json.dumps)
_counts = st.integers(0, 10_000)
_tool_calls = st.lists(
    st.builds(
        lambda id, name, args: {
            "id": id,
            "type": "function",
            "function": {"name": name, "arguments": args},
        },
        _ids,
        _names,
        _arguments,
    ),
    max_size=3,
    unique_by=lambda call: call["id"],
)
_finish_reasons = st.sampled_from(["stop", "length", "content_filter", "tool_calls"])
_optional_texts = st.none() | _texts


@st.composite
def chat_usages(draw: st.DrawFn) -> dict[str, Any]:
    """
    A Chat usage object, with or without the details.
    """
    prompt, completion = draw(_counts), draw(_counts)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = {"cached_tokens": draw(st.integers(0, prompt))}
    if draw(st.booleans()):
        usage["completion_tokens_details"] = {"reasoning_tokens": draw(st.integers(0, completion))}
    return usage


_optional_usages = st.none() | chat_usages()


@st.composite
def chat_completions(draw: st.DrawFn) -> dict[str, Any]:
    """
    A C{chat.completion} with any mix of text, refusal, reasoning and tool
    calls.
    """
    message: dict[str, Any] = {
        "role": "assistant",
        "content": draw(_optional_texts),
        "refusal": draw(st.none() | _nonempty),
    }
    reasoning = draw(st.none() | _nonempty)
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    calls = draw(_tool_calls)
    if calls:
        message["tool_calls"] = calls
    completion: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": draw(st.integers(0, 2_000_000_000)),
        "model": draw(_names),
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": draw(_finish_reasons),
            }
        ],
    }
    usage = draw(_optional_usages)
    if usage is not None:
        completion["usage"] = usage
    return completion


_flat_tools = st.lists(
    st.builds(
        lambda name, strict: {
            "type": "function",
            "name": name,
            "parameters": {"type": "object", "properties": {}},
            "strict": strict,
        },
        _names,
        st.booleans(),
    ),
    max_size=2,
    unique_by=lambda tool: tool["name"],
)
_request_settings = (
    ("instructions", st.none() | _texts),
    ("max_output_tokens", st.none() | st.integers(1, 1000)),
    ("temperature", st.none() | st.floats(0, 2)),
    ("top_p", st.none() | st.floats(0, 1)),
    ("metadata", st.none() | st.dictionaries(_names, _texts, max_size=2)),
    ("previous_response_id", st.none() | st.just("resp_prev")),
    ("store", st.none() | st.booleans()),
    ("parallel_tool_calls", st.none() | st.booleans()),
    ("tool_choice", st.none() | st.sampled_from(["auto", "none", "required"])),
    (
        "reasoning",
        st.none() | st.builds(lambda effort: {"effort": effort}, st.sampled_from(["low", "high"])),
    ),
    (
        "text",
        st.none()
        | st.builds(
            lambda fmt, verbosity: {"format": fmt, "verbosity": verbosity},
            st.sampled_from(
                [
                    {"type": "text"},
                    {"type": "json_object"},
                    {"type": "json_schema", "name": "s", "schema": {}},
                ]
            ),
            st.sampled_from(["low", "medium", "high"]),
        ),
    ),
)


@st.composite
def responses_requests(draw: st.DrawFn) -> dict[str, Any] | None:
    """
    A Responses request (or L{None}) whose settings a response echoes.
    """
    if draw(st.booleans()):
        return None
    request: dict[str, Any] = {"model": draw(_names), "input": "hi"}
    tools = draw(_flat_tools)
    if tools:
        request["tools"] = tools
    for key, values in _request_settings:
        value = draw(values)
        if value is not None:
            request[key] = value
    return request


_output_texts = st.lists(
    st.one_of(
        st.builds(lambda text: {"type": "output_text", "text": text, "annotations": []}, _texts),
        st.builds(lambda text: {"type": "refusal", "refusal": text}, _texts),
    ),
    min_size=1,
    max_size=3,
)
_summaries = st.lists(
    st.builds(lambda text: {"type": "summary_text", "text": text}, _texts), max_size=2
)
_reasoning_contents = st.none() | st.lists(
    st.builds(lambda text: {"type": "reasoning_text", "text": text}, _texts), max_size=2
)
_item_kinds = st.lists(st.sampled_from(["reasoning", "message", "function_call"]), max_size=5)
_statuses = st.sampled_from(
    [("completed", None), ("incomplete", "max_output_tokens"), ("incomplete", "content_filter")]
)


@st.composite
def responses_usages(draw: st.DrawFn) -> dict[str, Any]:
    """
    A Responses usage object.
    """
    inp, out = draw(_counts), draw(_counts)
    return {
        "input_tokens": inp,
        "input_tokens_details": {
            "cached_tokens": draw(st.integers(0, inp)),
            "cache_write_tokens": 0,
        },
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": draw(st.integers(0, out))},
        "total_tokens": inp + out,
    }


@st.composite
def responses_objects(draw: st.DrawFn) -> dict[str, Any]:
    """
    A final Responses object with reasoning, message and function call
    items in any order.
    """
    output: list[dict[str, Any]] = []
    for position, kind in enumerate(draw(_item_kinds)):
        if kind == "reasoning":
            item: dict[str, Any] = {
                "id": f"rs_{position}",
                "type": "reasoning",
                "summary": draw(_summaries),
            }
            content = draw(_reasoning_contents)
            if content is not None:
                item["content"] = content
        elif kind == "message":
            item = {
                "id": f"msg_{position}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": draw(_output_texts),
            }
        else:
            item = {
                "id": f"fc_{position}",
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_{position}",
                "name": draw(_names),
                "arguments": draw(_arguments),
            }
        output.append(item)
    status, reason = draw(_statuses)
    return {
        "id": draw(st.sampled_from(["resp_1", "resp_xyz"])),
        "object": "response",
        "created_at": draw(st.integers(0, 2_000_000_000)),
        "status": status,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": draw(_names),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": draw(st.none() | responses_usages()),
    }


def normalised_completion(chat: dict[str, Any]) -> dict[str, Any]:
    """
    The parts of a chat completion that survive translation to Responses
    and back: empty content is L{None}, the finish reason follows the tool
    calls unless the answer was cut short, and usage details are filled in.
    """
    choice = chat["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    finish = choice["finish_reason"]
    if finish not in ("length", "content_filter"):
        finish = "tool_calls" if calls else "stop"
    result: dict[str, Any] = {
        "content": message.get("content") or None,
        "refusal": message.get("refusal") or None,
        "tool_calls": calls,
        "reasoning_content": message.get("reasoning_content"),
        "finish_reason": finish,
        "created": chat["created"],
        "model": chat["model"],
    }
    usage = chat.get("usage")
    if usage is not None:
        usage = {
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
            **usage,
        }
    result["usage"] = usage
    return result


def completion_summary(chat: dict[str, Any]) -> dict[str, Any]:
    """
    The same view as L{normalised_completion}, of a translated completion.
    """
    choice = chat["choices"][0]
    message = choice["message"]
    return {
        "content": message.get("content") or None,
        "refusal": message.get("refusal") or None,
        "tool_calls": message.get("tool_calls") or [],
        "reasoning_content": message.get("reasoning_content"),
        "finish_reason": choice["finish_reason"],
        "created": chat["created"],
        "model": chat["model"],
        "usage": chat.get("usage"),
    }


def _completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    """
    A chat completion around C{message}.
    """
    return {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        **extra,
    }


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


class UsageTests(SynchronousTestCase):
    """
    Tests for L{chat_usage_to_responses} and L{responses_usage_to_chat}.
    """

    def test_chatToResponses(self) -> None:
        """
        Chat usage is renamed, details included.
        """
        self.assertEqual(
            chat_usage_to_responses(
                {
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "total_tokens": 15,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                }
            ),
            {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 15,
            },
        )

    def test_chatToResponsesDefaults(self) -> None:
        """
        Missing details count as zero and a missing total is computed.
        """
        usage = chat_usage_to_responses({"prompt_tokens": 3, "completion_tokens": 4})
        assert usage is not None
        self.assertEqual(usage["total_tokens"], 7)
        self.assertEqual(usage["input_tokens_details"]["cached_tokens"], 0)
        self.assertEqual(usage["output_tokens_details"]["reasoning_tokens"], 0)
        self.assertIsNone(chat_usage_to_responses(None))

    def test_responsesToChat(self) -> None:
        """
        Responses usage is renamed, details included only when present.
        """
        self.assertEqual(
            responses_usage_to_chat(
                {
                    "input_tokens": 10,
                    "input_tokens_details": {"cached_tokens": 4},
                    "output_tokens": 5,
                    "output_tokens_details": {"reasoning_tokens": 2},
                    "total_tokens": 15,
                }
            ),
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        )
        self.assertEqual(
            responses_usage_to_chat({"input_tokens": 1, "output_tokens": 2}),
            {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        )
        self.assertIsNone(responses_usage_to_chat(None))

    @given(chat_usages())
    def test_roundTrip(self, usage: dict[str, Any]) -> None:
        """
        Chat usage survives a round trip, with zero details filled in.
        """
        expected = {
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
            **usage,
        }
        self.assertEqual(responses_usage_to_chat(chat_usage_to_responses(usage)), expected)


class ResponsesToChatCompletionTests(SynchronousTestCase):
    """
    Tests for L{responses_to_chat_completion}.
    """

    def _response(self, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """
        A completed response with C{output}.
        """
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 1700000001,
            "status": "completed",
            "model": "gpt-r",
            "output": output,
            **extra,
        }

    def test_text(self) -> None:
        """
        The content is the concatenated C{output_text} of all message items;
        the id, C{created} and model follow the response.
        """
        result = responses_to_chat_completion(
            self._response(
                [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [
                            {"type": "output_text", "text": "Hel", "annotations": []},
                            {"type": "output_text", "text": "lo", "annotations": []},
                        ],
                    },
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [
                            {"type": "output_text", "text": "!", "annotations": []},
                        ],
                    },
                ]
            )
        )
        self.assertEqual(result["id"], "chatcmpl-resp_1")
        self.assertEqual(result["object"], "chat.completion")
        self.assertEqual(result["created"], 1700000001)
        self.assertEqual(result["model"], "gpt-r")
        self.assertEqual(
            result["choices"],
            [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        )
        self.assertNotIn("usage", result)

    def test_functionCalls(self) -> None:
        """
        Function call items become tool calls and the finish reason is
        C{tool_calls}.
        """
        result = responses_to_chat_completion(
            self._response(
                [
                    {
                        "type": "function_call",
                        "id": "fc_1",
                        "call_id": "call_1",
                        "name": "f",
                        "arguments": "{}",
                    },
                    {
                        "type": "function_call",
                        "id": "fc_2",
                        "call_id": "call_2",
                        "name": "g",
                        "arguments": "[1]",
                    },
                ]
            )
        )
        choice = result["choices"][0]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertIsNone(choice["message"]["content"])
        self.assertEqual(
            choice["message"]["tool_calls"],
            [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
            ],
        )

    def test_incomplete(self) -> None:
        """
        An incomplete response finishes with C{length}, or with
        C{content_filter} when that was the reason, even with tool calls.
        """
        call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}
        for reason, finish in (
            ("max_output_tokens", "length"),
            ("content_filter", "content_filter"),
        ):
            result = responses_to_chat_completion(
                self._response([call], status="incomplete", incomplete_details={"reason": reason})
            )
            self.assertEqual(result["choices"][0]["finish_reason"], finish)

    def test_reasoningAndRefusal(self) -> None:
        """
        Reasoning summaries become C{reasoning_content}; refusal parts
        become C{refusal}.
        """
        result = responses_to_chat_completion(
            self._response(
                [
                    {
                        "type": "reasoning",
                        "id": "rs_1",
                        "summary": [
                            {"type": "summary_text", "text": "First."},
                            {"type": "summary_text", "text": "Second."},
                        ],
                    },
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "refusal", "refusal": "No."}],
                    },
                ]
            )
        )
        message = result["choices"][0]["message"]
        self.assertEqual(message["reasoning_content"], "First.\n\nSecond.")
        self.assertEqual(message["refusal"], "No.")
        self.assertIsNone(message["content"])

    def test_usage(self) -> None:
        """
        Usage is renamed.
        """
        result = responses_to_chat_completion(
            self._response([], usage={"input_tokens": 2, "output_tokens": 3, "total_tokens": 5})
        )
        self.assertEqual(
            result["usage"], {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        )

    def test_failed(self) -> None:
        """
        A failed response is an upstream error carrying its code and
        message.
        """
        with self.assertRaises(UpstreamError) as caught:
            responses_to_chat_completion(
                self._response(
                    [], status="failed", error={"code": "server_error", "message": "boom"}
                )
            )
        self.assertEqual(caught.exception.message, "boom")
        self.assertEqual(caught.exception.code, "server_error")

    @settings(max_examples=75)
    @given(responses_objects())
    def test_validChatCompletion(self, resp: dict[str, Any]) -> None:
        """
        The result validates as the SDK's C{ChatCompletion}, its content is
        the SDK's C{output_text} of the response, and it has one tool call
        per function call item.
        """
        before = copy.deepcopy(resp)
        result = responses_to_chat_completion(resp)
        self.assertEqual(resp, before)
        completion = ChatCompletion.model_validate(result)
        sdk_response = Response.model_validate(resp)
        texts = [
            part.text
            for item in sdk_response.output
            if item.type == "message"
            for part in item.content
            if part.type == "output_text"
        ]
        self.assertEqual(completion.choices[0].message.content, "".join(texts) if texts else None)
        calls = [item for item in resp["output"] if item["type"] == "function_call"]
        self.assertEqual(len(completion.choices[0].message.tool_calls or []), len(calls))


class ChatCompletionToResponseTests(SynchronousTestCase):
    """
    Tests for L{chat_completion_to_response}.
    """

    def test_text(self) -> None:
        """
        Text becomes one completed message item with a deterministic id; the
        response has the given id, C{created_at} and model, and validates.
        """
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": "Hi there"}), response_id=RESPONSE_ID
        )
        self.assertEqual(result["id"], RESPONSE_ID)
        self.assertEqual(result["object"], "response")
        self.assertEqual(result["created_at"], 1700000000)
        self.assertEqual(result["model"], "gpt-test")
        self.assertEqual(result["status"], "completed")
        self.assertIsNone(result["error"])
        self.assertIsNone(result["incomplete_details"])
        self.assertEqual(
            result["output"],
            [
                {
                    "id": "msg_abc123_0",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Hi there", "annotations": []}],
                }
            ],
        )
        self.assertEqual(Response.model_validate(result).output_text, "Hi there")

    def test_defaults(self) -> None:
        """
        Without a request, the settings the SDK types need get defaults.
        """
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": "x"}), response_id="r"
        )
        self.assertEqual(result["tools"], [])
        self.assertEqual(result["tool_choice"], "auto")
        self.assertIs(result["parallel_tool_calls"], True)
        self.assertEqual(result["metadata"], {})
        self.assertEqual(result["text"], {"format": {"type": "text"}})
        self.assertIsNone(result["usage"])

    def test_toolCalls(self) -> None:
        """
        Each tool call becomes a completed C{function_call} item after the
        message item.
        """
        result = chat_completion_to_response(
            _completion(
                {
                    "role": "assistant",
                    "content": "Calling.",
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"q":1}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "g", "arguments": "{}"},
                        },
                    ],
                },
                "tool_calls",
            ),
            response_id=RESPONSE_ID,
        )
        self.assertEqual(
            [item["type"] for item in result["output"]],
            ["message", "function_call", "function_call"],
        )
        self.assertEqual(
            result["output"][1],
            {
                "id": "fc_abc123_1",
                "type": "function_call",
                "status": "completed",
                "arguments": '{"q":1}',
                "call_id": "call_a",
                "name": "f",
            },
        )
        self.assertEqual(result["output"][2]["call_id"], "call_b")
        self.assertEqual(result["status"], "completed")
        Response.model_validate(result)

    def test_refusal(self) -> None:
        """
        A refusal becomes a C{refusal} part.
        """
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": None, "refusal": "I can't."}),
            response_id="r",
        )
        self.assertEqual(
            result["output"][0]["content"], [{"type": "refusal", "refusal": "I can't."}]
        )
        Response.model_validate(result)

    def test_reasoning(self) -> None:
        """
        C{reasoning_content} becomes a leading reasoning item with a
        summary.
        """
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": "4", "reasoning_content": "2+2"}),
            response_id="resp_r",
        )
        self.assertEqual(
            result["output"][0],
            {
                "id": "rs_r_0",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "2+2"}],
            },
        )
        self.assertEqual(result["output"][1]["id"], "msg_r_1")

    def test_incomplete(self) -> None:
        """
        C{length} and C{content_filter} make the response incomplete with
        the matching reason.
        """
        for finish, reason in (
            ("length", "max_output_tokens"),
            ("content_filter", "content_filter"),
        ):
            result = chat_completion_to_response(
                _completion({"role": "assistant", "content": "cut"}, finish), response_id="r"
            )
            self.assertEqual(result["status"], "incomplete")
            self.assertEqual(result["incomplete_details"], {"reason": reason})
            Response.model_validate(result)

    def test_emptyAnswer(self) -> None:
        """
        An answer without text or calls has no output items.
        """
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": ""}), response_id="r"
        )
        self.assertEqual(result["output"], [])
        self.assertEqual(Response.model_validate(result).output_text, "")

    def test_echoesRequest(self) -> None:
        """
        Request settings are echoed; the answering model wins over the
        requested one.
        """
        tools = [
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}
        ]
        request = {
            "model": "alias",
            "instructions": "Be brief.",
            "tools": tools,
            "tool_choice": "required",
            "parallel_tool_calls": False,
            "temperature": 0.2,
            "max_output_tokens": 99,
            "metadata": {"a": "b"},
            "previous_response_id": "resp_0",
            "store": False,
            "reasoning": {"effort": "low"},
            "text": {"verbosity": "low"},
        }
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": "x"}), response_id="r", request=request
        )
        for key in (
            "instructions",
            "tools",
            "tool_choice",
            "temperature",
            "max_output_tokens",
            "metadata",
            "previous_response_id",
            "reasoning",
        ):
            self.assertEqual(result[key], request[key], key)
        self.assertIs(result["parallel_tool_calls"], False)
        self.assertIs(result["store"], False)
        self.assertEqual(result["text"], {"format": {"type": "text"}, "verbosity": "low"})
        self.assertEqual(result["model"], "gpt-test")
        Response.model_validate(result)
        result["tools"][0]["name"] = "changed"
        self.assertEqual(tools[0]["name"], "f")

    def test_echoesResponseFormatAlias(self) -> None:
        """
        A C{response_format} given in place of C{text.format} is echoed as a
        flat C{text.format}.
        """
        result = chat_completion_to_response(
            _completion({"role": "assistant", "content": "{}"}),
            response_id="r",
            request={
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {}},
                }
            },
        )
        self.assertEqual(
            result["text"]["format"], {"type": "json_schema", "name": "n", "schema": {}}
        )
        Response.model_validate(result)

    def test_idsDeterministic(self) -> None:
        """
        Item ids depend on the response id only.
        """
        chat = _completion({"role": "assistant", "content": "x"})
        first = chat_completion_to_response(chat, response_id="resp_1")
        self.assertEqual(first, chat_completion_to_response(chat, response_id="resp_1"))
        self.assertNotEqual(
            first["output"][0]["id"],
            chat_completion_to_response(chat, response_id="resp_2")["output"][0]["id"],
        )

    @settings(max_examples=75)
    @given(chat_completions(), responses_requests())
    def test_validResponse(self, chat: dict[str, Any], request: dict[str, Any] | None) -> None:
        """
        The result validates as the SDK's C{Response}, its C{output_text} is
        the chat text, inputs are left alone, and translating it back gives
        the original answer.
        """
        before = copy.deepcopy((chat, request))
        result = chat_completion_to_response(chat, response_id=RESPONSE_ID, request=request)
        self.assertEqual((chat, request), before)
        response = Response.model_validate(result)
        self.assertEqual(response.output_text, chat["choices"][0]["message"]["content"] or "")
        back = responses_to_chat_completion(result)
        self.assertEqual(back["id"], f"chatcmpl-{RESPONSE_ID}")
        self.assertEqual(completion_summary(back), normalised_completion(chat))
        ChatCompletion.model_validate(back)
