# -*- test-case-name: tests.test_translate_chat_request -*-
"""
Tests for L{llmproxy.translate.chat_request}, and for the shared field
tables of L{llmproxy.translate.requests} through it.

The strategy L{chat_requests} is shared with
L{tests.test_translate_responses_request}.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

import llmproxy.translate as translate
from llmproxy.errors import InvalidRequest
from llmproxy.translate.chat_request import chat_to_responses_request
from llmproxy.translate.requests import Translated
from llmproxy.translate.responses_request import responses_to_chat_request

# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

_texts = st.text(max_size=12)
_names = st.text("abcdefgh_", min_size=1, max_size=6)
_ids = st.text("abcdef0123", min_size=1, max_size=6).map(lambda suffix: f"call_{suffix}")
_json_values = (
    st.none() | st.booleans() | st.integers(-5, 5) | _texts | st.lists(st.integers(), max_size=2)
)
_arguments = st.dictionaries(_names, _json_values, max_size=3).map(json.dumps)
_schemas = st.fixed_dictionaries(
    {
        "type": st.just("object"),
        "properties": st.dictionaries(_names, st.just({"type": "string"}), max_size=3),
    }
)


def _tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    """
    A Chat tool call.
    """
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool(
    name: str, description: str | None, parameters: dict[str, Any], strict: bool | None
) -> dict[str, Any]:
    """
    A nested Chat function tool; C{description} and C{strict} only when
    given.
    """
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    if description is not None:
        function["description"] = description
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def _tool_name(tool: dict[str, Any]) -> str:
    """
    The name of a nested Chat tool.
    """
    name: str = tool["function"]["name"]
    return name


_tool_call_lists = st.lists(
    st.builds(_tool_call, _ids, _names, _arguments), max_size=3, unique_by=lambda call: call["id"]
)
_tool_lists = st.lists(
    st.builds(_tool, _names, st.none() | _texts, _schemas, st.none() | st.booleans()),
    max_size=3,
    unique_by=_tool_name,
)
_response_formats = (
    st.none()
    | st.sampled_from([{"type": "text"}, {"type": "json_object"}])
    | st.builds(
        lambda name, schema, strict: {
            "type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict},
        },
        _names,
        _schemas,
        st.booleans(),
    )
)
_settings = (
    ("temperature", st.none() | st.floats(0, 2)),
    ("top_p", st.none() | st.floats(0, 1)),
    ("reasoning_effort", st.none() | st.sampled_from(["low", "medium", "high"])),
    ("verbosity", st.none() | st.sampled_from(["low", "medium", "high"])),
    ("parallel_tool_calls", st.none() | st.booleans()),
    ("user", st.none() | _names),
    ("stream", st.none() | st.booleans()),
)
_optional_texts = st.none() | _texts
_limits = st.none() | st.integers(1, 100_000)
_system_prompts = st.text(min_size=1, max_size=12)
_tool_choice_modes = st.sampled_from(["auto", "none", "required"])
_limit_keys = st.sampled_from(["max_tokens", "max_completion_tokens"])
_system_roles = st.sampled_from(["system", "developer"])
_images = st.builds(
    lambda url, detail: {"type": "image_url", "image_url": {"url": url, "detail": detail}},
    st.sampled_from(["https://x.test/a.png", "data:image/png;base64,AAAA"]),
    st.sampled_from(["low", "high", "auto"]),
)


@st.composite
def _user_messages(draw: st.DrawFn) -> dict[str, Any]:
    """
    A user message with string content, or with text and image parts.
    """
    if draw(st.booleans()):
        return {"role": "user", "content": draw(_texts)}
    parts: list[dict[str, Any]] = [{"type": "text", "text": draw(_texts)}, draw(_images)]
    if draw(st.booleans()):
        parts.reverse()
    return {"role": "user", "content": parts}


_user_message = _user_messages()


@st.composite
def _turns(draw: st.DrawFn) -> list[dict[str, Any]]:
    """
    One conversation turn: maybe a developer note, a user message, an
    assistant answer and the results of its tool calls.
    """
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": draw(_system_roles), "content": draw(_texts)})
    messages.append(draw(_user_message))
    calls = draw(_tool_call_lists)
    content = draw(_optional_texts) if calls else draw(_texts)
    assistant: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        assistant["tool_calls"] = calls
    messages.append(assistant)
    for call in calls:
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": draw(_texts)})
    return messages


_turn_lists = st.lists(_turns(), min_size=1, max_size=3)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """
    A Chat request using the features that have a Responses equivalent.
    """
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_system_prompts)})
    for turn in draw(_turn_lists):
        messages.extend(turn)
    request: dict[str, Any] = {"model": draw(_names), "messages": messages}
    tools = draw(_tool_lists)
    if tools:
        request["tools"] = tools
        forced = draw(st.booleans())
        if forced:
            name = _tool_name(draw(st.sampled_from(tools)))
            request["tool_choice"] = {"type": "function", "function": {"name": name}}
        else:
            request["tool_choice"] = draw(_tool_choice_modes)
    limit = draw(_limits)
    if limit is not None:
        request[draw(_limit_keys)] = limit
    fmt = draw(_response_formats)
    if fmt is not None:
        request["response_format"] = fmt
    for key, values in _settings:
        value = draw(values)
        if value is not None:
            request[key] = value
    return request


def _normalised_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Chat messages in the form a round trip through Responses gives: the
    leading system/developer messages are one system message (left out
    when empty), and an assistant turn with tool calls has C{None} instead
    of empty content.
    """
    index = 0
    while index < len(messages) and messages[index]["role"] in ("system", "developer"):
        index += 1
    leading = "\n\n".join(message["content"] for message in messages[:index] if message["content"])
    result = [{"role": "system", "content": leading}] if leading else []
    for message in messages[index:]:
        message = dict(message)
        if message["role"] == "assistant" and message.get("tool_calls") and not message["content"]:
            message["content"] = None
        result.append(message)
    return result


# ---------------------------------------------------------------------------
# Chat -> Responses
# ---------------------------------------------------------------------------


def _to_responses(**chat: Any) -> Translated:
    """
    Translate a Chat request given as keyword arguments (with a default
    model and user message).
    """
    chat.setdefault("model", "gpt-x")
    chat.setdefault("messages", [{"role": "user", "content": "hi"}])
    return chat_to_responses_request(chat)


class ChatToResponsesRequestTests(SynchronousTestCase):
    """
    Tests for L{chat_to_responses_request}.
    """

    def test_packageExports(self) -> None:
        """
        The package re-exports the request translators.
        """
        self.assertIs(translate.chat_to_responses_request, chat_to_responses_request)
        self.assertIs(translate.responses_to_chat_request, responses_to_chat_request)
        self.assertIs(translate.Translated, Translated)
        self.assertIn("ChatToResponsesStream", translate.__all__)

    def test_leadingSystemBecomesInstructions(self) -> None:
        """
        Leading system and developer messages are joined with a blank line
        into C{instructions}; later ones stay as items with their role.
        """
        result = _to_responses(
            messages=[
                {"role": "system", "content": "A"},
                {"role": "developer", "content": [{"type": "text", "text": "B"}]},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "C"},
            ]
        )
        self.assertEqual(result.body["instructions"], "A\n\nB")
        self.assertEqual(
            result.body["input"],
            [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                },
                {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "C"}],
                },
            ],
        )
        self.assertEqual(result.body["model"], "gpt-x")
        self.assertEqual(result.dropped, ())

    def test_noInstructionsWithoutLeadingSystem(self) -> None:
        """
        Without a leading system message there is no C{instructions}.
        """
        self.assertNotIn("instructions", _to_responses().body)

    def test_contentParts(self) -> None:
        """
        Text parts become C{input_text}; image parts become C{input_image}
        with the URL as a plain string and a C{detail} (C{auto} by default).
        """
        result = _to_responses(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/i.png", "detail": "high"},
                        },
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    ],
                }
            ]
        )
        self.assertEqual(
            result.body["input"][0]["content"],
            [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/i.png", "detail": "high"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "auto"},
            ],
        )

    def test_assistantHistoryAndToolCalls(self) -> None:
        """
        Assistant text uses C{output_text}; each tool call becomes a
        C{function_call} item after the text item; tool results become
        C{function_call_output} items with string output.
        """
        result = _to_responses(
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "a", "arguments": "{}"},
                        },
                        {
                            "id": "c2",
                            "type": "function",
                            "function": {"name": "b", "arguments": '{"x":1}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {
                    "role": "tool",
                    "tool_call_id": "c2",
                    "content": [{"type": "text", "text": "two"}],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c3",
                            "type": "function",
                            "function": {"name": "a", "arguments": "{}"},
                        },
                    ],
                },
            ]
        )
        self.assertEqual(
            result.body["input"][1:],
            [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Let me check."}],
                },
                {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "b", "arguments": '{"x":1}'},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": "two"},
                {"type": "function_call", "call_id": "c3", "name": "a", "arguments": "{}"},
            ],
        )

    def test_toolsFlattened(self) -> None:
        """
        Nested function tools become flat; a missing C{strict} becomes
        C{false} (Responses would otherwise enforce strict mode).
        """
        params = {"type": "object", "properties": {}}
        result = _to_responses(
            tools=[
                {
                    "type": "function",
                    "function": {"name": "a", "description": "d", "parameters": params},
                },
                {
                    "type": "function",
                    "function": {"name": "b", "parameters": params, "strict": True},
                },
            ]
        )
        self.assertEqual(
            result.body["tools"],
            [
                {
                    "type": "function",
                    "name": "a",
                    "description": "d",
                    "parameters": params,
                    "strict": False,
                },
                {"type": "function", "name": "b", "parameters": params, "strict": True},
            ],
        )

    def test_nonFunctionToolRejected(self) -> None:
        """
        A non-function Chat tool is rejected, naming its type.
        """
        with self.assertRaises(InvalidRequest) as caught:
            _to_responses(tools=[{"type": "custom", "custom": {"name": "x"}}])
        self.assertEqual(caught.exception.param, "tools")
        self.assertIn("custom", caught.exception.message)

    def test_toolChoice(self) -> None:
        """
        Strings pass; a forced function is flattened.
        """
        self.assertEqual(_to_responses(tool_choice="required").body["tool_choice"], "required")
        self.assertEqual(
            _to_responses(tool_choice={"type": "function", "function": {"name": "f"}}).body[
                "tool_choice"
            ],
            {"type": "function", "name": "f"},
        )

    def test_responseFormat(self) -> None:
        """
        A C{json_schema} response format becomes a flat C{text.format}
        (keeping its description); C{verbosity} sits beside it.
        """
        schema = {"type": "object"}
        result = _to_responses(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema, "strict": True, "description": "D"},
            },
            verbosity="low",
        )
        self.assertEqual(
            result.body["text"],
            {
                "format": {
                    "type": "json_schema",
                    "name": "n",
                    "schema": schema,
                    "strict": True,
                    "description": "D",
                },
                "verbosity": "low",
            },
        )
        self.assertEqual(
            _to_responses(response_format={"type": "json_object"}).body["text"],
            {"format": {"type": "json_object"}},
        )
        self.assertNotIn("text", _to_responses().body)

    def test_limits(self) -> None:
        """
        C{max_completion_tokens} (preferred) or C{max_tokens} becomes
        C{max_output_tokens}.
        """
        self.assertEqual(_to_responses(max_tokens=5).body["max_output_tokens"], 5)
        self.assertEqual(
            _to_responses(max_tokens=5, max_completion_tokens=9).body["max_output_tokens"], 9
        )
        self.assertEqual(
            _to_responses(max_completion_tokens=9, max_tokens=5).body["max_output_tokens"], 9
        )
        body = _to_responses(max_tokens=5).body
        self.assertNotIn("max_tokens", body)
        self.assertNotIn("max_completion_tokens", body)

    def test_reasoningEffort(self) -> None:
        """
        C{reasoning_effort} becomes C{reasoning.effort}.
        """
        body = _to_responses(reasoning_effort="high").body
        self.assertEqual(body["reasoning"], {"effort": "high"})
        self.assertNotIn("reasoning_effort", body)

    def test_sameNameFields(self) -> None:
        """
        Fields with the same name and meaning pass unchanged.
        """
        fields = {
            "user": "u",
            "metadata": {"k": "v"},
            "store": False,
            "parallel_tool_calls": False,
            "temperature": 0.3,
            "top_p": 0.9,
            "service_tier": "flex",
            "prompt_cache_key": "pk",
            "safety_identifier": "s",
            "top_logprobs": 2,
            "stream": True,
        }
        result = _to_responses(**fields)
        for key, value in fields.items():
            self.assertEqual(result.body[key], value, key)
        self.assertEqual(result.dropped, ())

    def test_silentDrops(self) -> None:
        """
        C{stream_options} and C{n: 1} are dropped without being reported.
        """
        result = _to_responses(stream=True, stream_options={"include_usage": True}, n=1)
        self.assertNotIn("stream_options", result.body)
        self.assertNotIn("n", result.body)
        self.assertEqual(result.dropped, ())

    def test_nGreaterThanOneRejected(self) -> None:
        """
        C{n > 1} cannot be served.
        """
        with self.assertRaises(InvalidRequest) as caught:
            _to_responses(n=2)
        self.assertEqual(caught.exception.param, "n")
        self.assertEqual(caught.exception.code, "unsupported_parameter")
        self.assertEqual(caught.exception.status, 400)

    def test_droppedFields(self) -> None:
        """
        Fields without an equivalent, and unknown fields, are dropped and
        reported in order; unset ones are not reported.
        """
        result = _to_responses(
            stop=["x"],
            seed=1,
            presence_penalty=0.1,
            frequency_penalty=None,
            logit_bias={"1": 2},
            logprobs=True,
            bogus=1,
        )
        self.assertEqual(
            result.dropped, ("stop", "seed", "presence_penalty", "logit_bias", "logprobs", "bogus")
        )
        for key in result.dropped:
            self.assertNotIn(key, result.body)
        self.assertEqual(_to_responses(logprobs=False).dropped, ())

    def test_missingMessages(self) -> None:
        """
        Missing or non-list C{messages} is a 400 naming C{messages}.
        """
        for bad in ({"model": "m"}, {"model": "m", "messages": "hi"}):
            with self.assertRaises(InvalidRequest) as caught:
                chat_to_responses_request(bad)
            self.assertEqual(caught.exception.param, "messages")

    def test_unknownRoleRejected(self) -> None:
        """
        An unknown role is a 400.
        """
        with self.assertRaises(InvalidRequest):
            _to_responses(messages=[{"role": "wizard", "content": "x"}])

    @settings(max_examples=40)
    @given(chat_requests())
    def test_inputNotModifiedOrShared(self, chat: dict[str, Any]) -> None:
        """
        The input is never modified, and modifying the output does not
        reach the input.
        """
        before = copy.deepcopy(chat)
        result = chat_to_responses_request(chat)
        self.assertEqual(chat, before)
        for tool in result.body.get("tools", []):
            tool["parameters"]["mutated"] = True
        text = result.body.get("text", {}).get("format", {})
        if "schema" in text:
            text["schema"]["mutated"] = True
        self.assertEqual(chat, before)

    @given(chat_requests())
    def test_roundTrip(self, chat: dict[str, Any]) -> None:
        """
        Chat → Responses → Chat keeps the messages (leading system message
        first), tools, tool choice, limits, response format and the other
        mapped settings.
        """
        there = chat_to_responses_request(chat)
        self.assertEqual(there.dropped, ())
        back = responses_to_chat_request(there.body)
        body = back.body
        self.assertEqual(back.dropped, ())
        self.assertEqual(body["messages"], _normalised_messages(chat["messages"]))
        self.assertEqual(body["model"], chat["model"])
        expected_tools = [
            {
                "type": "function",
                "function": {**tool["function"], "strict": tool["function"].get("strict", False)},
            }
            for tool in chat.get("tools", [])
        ]
        self.assertEqual(body.get("tools", []), expected_tools)
        self.assertEqual(body.get("tool_choice"), chat.get("tool_choice"))
        limit = chat.get("max_completion_tokens", chat.get("max_tokens"))
        self.assertEqual(body.get("max_completion_tokens"), limit)
        self.assertEqual(body.get("response_format"), chat.get("response_format"))
        for key in (
            "temperature",
            "top_p",
            "reasoning_effort",
            "verbosity",
            "parallel_tool_calls",
            "user",
            "stream",
        ):
            self.assertEqual(body.get(key), chat.get(key), key)
        self.assertEqual(
            body.get("stream_options"), {"include_usage": True} if chat.get("stream") else None
        )
