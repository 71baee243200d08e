# -*- test-case-name: tests.test_translate_requests -*-
"""
Request translation between Chat Completions and the Responses API.

L{chat_to_responses_request} serves the C{openai-responses} backend (a Chat
client talking to a Responses upstream); L{responses_to_chat_request} serves
the C{/v1/responses} frontend when it bridges to a Chat upstream.  Both
return a L{Translated}: the new body plus the names of the fields that had
no equivalent and were dropped, so that callers can report them.

Both functions are pure: they deep-copy what they keep and never modify
their arguments.

Each direction has a L{_FieldTable}: the top-level fields that keep their
name, those that have no equivalent, and a converter for each of the others.
The public functions translate the few fields that need the whole request
(the messages or input, C{instructions}, C{n}) and let L{_translate_fields}
go through the rest, in order.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

from llmproxy.errors import InvalidRequest

__all__ = [
    "Translated",
    "chat_to_responses_request",
    "responses_to_chat_request",
    "chat_response_format_to_text_format",
    "chat_tool_to_responses_tool",
]


@dataclass(frozen=True)
class Translated:
    """
    The result of translating a request body.

    @ivar body: the translated, JSON-ready request body.
    @ivar dropped: names of the fields that had no equivalent and were
        dropped, in the order they were met.  Nested fields are dotted
        (C{text.foo}, C{reasoning.summary}); dropped C{reasoning} input items
        are reported as C{input.reasoning}.
    """

    body: dict[str, Any]
    dropped: tuple[str, ...] = ()


_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


def _invalid(message: str, param: str, code: str | None = "unsupported_value") -> InvalidRequest:
    """
    Build an L{InvalidRequest} for C{param}.

    @param message: text for the client.
    @param param: the request parameter at fault.
    @param code: the OpenAI error code.
    @return: the exception, to be raised by the caller.
    """
    return InvalidRequest(message, code=code, param=param)


def _is_unset(key: str, value: Any) -> bool:
    """
    Whether C{value} means "not set" for field C{key} (so dropping it is not
    worth reporting).

    @param key: the field name.
    @param value: its value.
    @return: C{True} for C{None}, and for C{logprobs: false}.
    """
    return value is None or (key == "logprobs" and value is False)


def _content_text(content: Any, param: str) -> str:
    """
    The text of a Chat or Responses message content, for places that only
    take text (instructions, tool output).

    @param content: a string, L{None}, or a list of parts; text parts are
        joined with a blank line and other parts are ignored.
    @param param: the parameter to blame when C{content} is malformed.
    @return: the text.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping):
                raise _invalid("Content parts must be objects.", param, "invalid_type")
            if part.get("type") in _TEXT_PART_TYPES and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n\n".join(texts)
    raise _invalid("Message content must be a string or a list of parts.", param, "invalid_type")


# ---------------------------------------------------------------------------
# Field tables
# ---------------------------------------------------------------------------


@dataclass
class _Draft:
    """
    A translation in progress: the state that the field converters share.

    @ivar request: the request being translated; never modified.
    @ivar body: the translated body so far.
    @ivar dropped: the names of the fields dropped so far, in the order they
        were met.
    @ivar text: the Responses C{text} object being gathered (Chat to
        Responses only); it goes last in the body.
    """

    request: Mapping[str, Any]
    body: dict[str, Any] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    text: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def begin(cls, request: Mapping[str, Any]) -> _Draft:
        """
        Start translating C{request}.  In both directions the model comes
        first in the body, unchanged.

        @param request: the request to translate.
        @return: the new draft.
        """
        draft = cls(request)
        if request.get("model") is not None:
            draft.body["model"] = request["model"]
        return draft

    def result(self) -> Translated:
        """
        Finish the translation.

        @return: the body and the dropped field names.
        """
        return Translated(body=self.body, dropped=tuple(self.dropped))


_Converter = Callable[[Any, _Draft], None]
"""
Translates the value of one field into a L{_Draft}.  A converter is called
for every occurrence of its field, null or not, in the order of the request.
"""


@dataclass(frozen=True)
class _FieldTable:
    """
    How the top-level fields of one request shape translate.  A field that is
    in none of these is unknown: it is dropped and reported, even when null.

    @ivar same_name: the fields kept under the same name and value (deep
        copied); null ones are left out.
    @ivar no_equivalent: the fields that have no equivalent: dropped, and
        reported unless unset (see L{_is_unset}).
    @ivar converters: the converter of every other field that has an
        equivalent.
    """

    same_name: frozenset[str]
    no_equivalent: frozenset[str]
    converters: Mapping[str, _Converter]


def _translate_fields(fields: _FieldTable, draft: _Draft, handled: frozenset[str]) -> None:
    """
    Translate the fields of C{draft.request}, in order, following C{fields}.

    @param fields: the table for the shape of the request.
    @param draft: the translation in progress.
    @param handled: the fields to skip, because the caller translates them
        itself or ignores them.
    """
    for key, value in draft.request.items():
        if key in handled:
            continue
        if key in fields.same_name:
            if value is not None:
                draft.body[key] = copy.deepcopy(value)
        elif key in fields.no_equivalent:
            if not _is_unset(key, value):
                draft.dropped.append(key)
        elif key in fields.converters:
            fields.converters[key](value, draft)
        else:
            draft.dropped.append(key)


def _when_set(convert: _Converter) -> _Converter:
    """
    Make a converter ignore null values, which mean "not set".

    @param convert: the converter.
    @return: a converter that calls C{convert} for non-null values only.
    """

    @functools.wraps(convert)
    def convert_when_set(value: Any, draft: _Draft) -> None:
        if value is not None:
            convert(value, draft)

    return convert_when_set


def _renamed(name: str) -> _Converter:
    """
    A converter for a field that only changes its name.

    @param name: the name of the field in the translated body.
    @return: a converter that sets C{name} to the value itself (not a copy),
        unless it is null.
    """

    @_when_set
    def rename(value: Any, draft: _Draft) -> None:
        draft.body[name] = value

    return rename


def _converted(name: str, convert: Callable[[Any], Any]) -> _Converter:
    """
    A converter for a field whose value changes shape.

    @param name: the name of the field in the translated body.
    @param convert: translates a non-null value; it may raise
        L{InvalidRequest}.
    @return: a converter that sets C{name} to C{convert(value)}, unless the
        value is null.
    """

    @_when_set
    def set_converted(value: Any, draft: _Draft) -> None:
        draft.body[name] = convert(value)

    return set_converted


def _nested(name: str, converters: Mapping[str, _Converter]) -> _Converter:
    """
    A converter for an object field whose sub-fields translate one by one
    (C{text}, C{reasoning}).

    @param name: the name of the object field.
    @param converters: the converter of each sub-field that has an
        equivalent; the others are dropped and reported as C{name.sub}.  Null
        sub-fields are ignored.
    @return: a converter that raises L{InvalidRequest} when the (non-null)
        value is not an object.
    """
    table = MappingProxyType(dict(converters))

    @_when_set
    def convert_nested(value: Any, draft: _Draft) -> None:
        if not isinstance(value, Mapping):
            raise _invalid(f"'{name}' must be an object.", name, "invalid_type")
        for sub, subvalue in value.items():
            if subvalue is None:
                continue
            if sub in table:
                table[sub](subvalue, draft)
            else:
                draft.dropped.append(f"{name}.{sub}")

    return convert_nested


def _tool_list(tools: Any, convert_tool: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """
    Translate a C{tools} list, one tool at a time.

    @param tools: the C{tools} value.
    @param convert_tool: translates one tool.
    @return: the translated tools.
    @raise InvalidRequest: if C{tools} is not a list.
    """
    if not isinstance(tools, list):
        raise _invalid("'tools' must be a list.", "tools", "invalid_type")
    return [convert_tool(tool) for tool in tools]


# ---------------------------------------------------------------------------
# Chat -> Responses
# ---------------------------------------------------------------------------


def chat_tool_to_responses_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """
    Flatten one Chat function tool into a Responses function tool.

    A missing C{strict} becomes C{false}: Chat treats an absent C{strict} as
    non-strict, whereas the Responses API would try to enforce strict mode.
    A tool that is already flat is returned as a copy.

    @param tool: C{{"type": "function", "function": {name, description,
        parameters, strict}}}.
    @return: C{{"type": "function", "name", "description", "parameters",
        "strict"}}.
    @raise InvalidRequest: for non-function tools or a missing name.
    """
    if not isinstance(tool, Mapping):
        raise _invalid("Each tool must be an object.", "tools", "invalid_type")
    kind = tool.get("type", "function")
    if kind != "function":
        raise _invalid(
            f"Tool type {kind!r} is not supported by this backend.",
            "tools",
            "unsupported_parameter",
        )
    function = tool.get("function")
    if function is None and isinstance(tool.get("name"), str):
        return copy.deepcopy(dict(tool))
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise _invalid("Function tools need a 'function.name'.", "tools", "invalid_value")
    flat: dict[str, Any] = {"type": "function", "name": function["name"]}
    for key in ("description", "parameters"):
        if function.get(key) is not None:
            flat[key] = copy.deepcopy(function[key])
    strict = function.get("strict")
    flat["strict"] = bool(strict) if strict is not None else False
    return flat


def _chat_tool_choice_to_responses(choice: Any) -> Any:
    """
    Flatten a Chat C{tool_choice}.

    @param choice: C{"auto"}, C{"none"}, C{"required"},
        C{{"type": "function", "function": {"name"}}} or C{allowed_tools}.
    @return: the Responses form.
    @raise InvalidRequest: for shapes that cannot be translated.
    """
    if isinstance(choice, str):
        return choice
    if not isinstance(choice, Mapping):
        raise _invalid(
            "'tool_choice' must be a string or an object.", "tool_choice", "invalid_type"
        )
    kind = choice.get("type")
    if kind == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not isinstance(name, str):
            raise _invalid(
                "'tool_choice.function.name' is required.", "tool_choice", "invalid_value"
            )
        return {"type": "function", "name": name}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, Mapping):
            raise _invalid(
                "'tool_choice.allowed_tools' is required.", "tool_choice", "invalid_value"
            )
        tools = []
        for tool in allowed.get("tools") or []:
            flat = _chat_tool_choice_to_responses(tool)
            tools.append(flat)
        result: dict[str, Any] = {"type": "allowed_tools", "tools": tools}
        if allowed.get("mode") is not None:
            result["mode"] = allowed["mode"]
        return result
    raise _invalid(f"tool_choice type {kind!r} is not supported.", "tool_choice")


def chat_response_format_to_text_format(response_format: Any) -> dict[str, Any]:
    """
    Translate a Chat C{response_format} into a Responses C{text.format}.

    A format that is already flat (C{json_schema} with a top-level C{schema}
    or C{name}) is returned as a copy.

    @param response_format: C{{"type": "text"}}, C{{"type": "json_object"}}
        or C{{"type": "json_schema", "json_schema": {name, schema, strict,
        description}}}.
    @return: C{{"type": ...}}, flat for C{json_schema}.
    @raise InvalidRequest: for unknown format types.
    """
    if not isinstance(response_format, Mapping):
        raise _invalid("'response_format' must be an object.", "response_format", "invalid_type")
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        nested = response_format.get("json_schema")
        if not isinstance(nested, Mapping):
            return copy.deepcopy(dict(response_format))
        flat: dict[str, Any] = {"type": "json_schema"}
        for key in ("name", "schema", "strict", "description"):
            if nested.get(key) is not None:
                flat[key] = copy.deepcopy(nested[key])
        return flat
    raise _invalid(f"response_format type {kind!r} is not supported.", "response_format")


def _chat_part_to_responses(part: Any, assistant: bool) -> dict[str, Any]:
    """
    Translate one Chat content part.

    @param part: a Chat content part.
    @param assistant: whether it belongs to assistant history (text becomes
        C{output_text} there, C{input_text} elsewhere).
    @return: the Responses content part.
    @raise InvalidRequest: for unknown part types.
    """
    if not isinstance(part, Mapping):
        raise _invalid("Content parts must be objects.", "messages", "invalid_type")
    kind = part.get("type")
    if kind == "text":
        return {"type": "output_text" if assistant else "input_text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        detail = image.get("detail") if isinstance(image, Mapping) else None
        if not isinstance(url, str):
            raise _invalid(
                "'image_url' parts need an 'image_url.url'.", "messages", "invalid_value"
            )
        return {"type": "input_image", "image_url": url, "detail": detail or "auto"}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": copy.deepcopy(part.get("input_audio"))}
    if kind == "file":
        file = part.get("file")
        result: dict[str, Any] = {"type": "input_file"}
        if isinstance(file, Mapping):
            for key in ("file_id", "file_data", "filename"):
                if file.get(key) is not None:
                    result[key] = file[key]
        return result
    if kind in ("input_text", "output_text", "input_image", "input_file"):
        return copy.deepcopy(dict(part))
    raise _invalid(f"Content part type {kind!r} is not supported.", "messages")


def _chat_content_to_parts(content: Any, assistant: bool) -> list[dict[str, Any]]:
    """
    Translate a Chat message content into Responses parts.

    @param content: a string, L{None} or a list of Chat parts.
    @param assistant: whether the message is assistant history.
    @return: the Responses parts (empty for L{None} or C{""}).
    """
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "output_text" if assistant else "input_text", "text": content}]
    if isinstance(content, list):
        return [_chat_part_to_responses(part, assistant) for part in content]
    raise _invalid(
        "Message content must be a string or a list of parts.", "messages", "invalid_type"
    )


def _chat_message_to_items(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """
    Translate one (non-leading) Chat message into Responses input items.

    @param message: a Chat message.
    @return: one message item, and/or C{function_call} items, or one
        C{function_call_output} item.
    @raise InvalidRequest: for unknown roles or malformed messages.
    """
    role = message.get("role")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise _invalid("Tool messages need a 'tool_call_id'.", "messages", "invalid_value")
        return [
            {
                "type": "function_call_output",
                "call_id": call_id,
                "output": _content_text(message.get("content"), "messages"),
            }
        ]
    if role in ("user", "system", "developer"):
        parts = _chat_content_to_parts(message.get("content"), assistant=False)
        return [{"type": "message", "role": role, "content": parts}]
    if role == "assistant":
        items: list[dict[str, Any]] = []
        parts = _chat_content_to_parts(message.get("content"), assistant=True)
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal:
            parts.append({"type": "refusal", "refusal": refusal})
        tool_calls = message.get("tool_calls") or []
        if not isinstance(tool_calls, list):
            raise _invalid("'tool_calls' must be a list.", "messages", "invalid_type")
        if parts or not tool_calls:
            if not parts:
                parts = [{"type": "output_text", "text": ""}]
            items.append({"type": "message", "role": "assistant", "content": parts})
        for call in tool_calls:
            if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
                raise _invalid("Each tool call needs a 'function'.", "messages", "invalid_value")
            function = call["function"]
            arguments = function.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            items.append(
                {
                    "type": "function_call",
                    "call_id": call.get("id", ""),
                    "name": function.get("name", ""),
                    "arguments": arguments,
                }
            )
        return items
    raise _invalid(f"Message role {role!r} is not supported.", "messages")


def _chat_messages_to_input(
    messages: Sequence[Any],
) -> tuple[str | None, list[dict[str, Any]]]:
    """
    Split Chat messages into Responses C{instructions} and input items.

    @param messages: the Chat C{messages}.
    @return: the instructions (the leading system/developer messages joined
        with a blank line, or L{None}) and the input items.
    """
    for message in messages:
        if not isinstance(message, Mapping):
            raise _invalid("Each message must be an object.", "messages", "invalid_type")
    index = 0
    leading: list[str] = []
    while index < len(messages) and messages[index].get("role") in ("system", "developer"):
        leading.append(_content_text(messages[index].get("content"), "messages"))
        index += 1
    instructions = "\n\n".join(text for text in leading if text) or None
    items: list[dict[str, Any]] = []
    for message in messages[index:]:
        items.extend(_chat_message_to_items(message))
    return instructions, items


def _chat_tools_to_responses(tools: Any) -> list[dict[str, Any]]:
    """
    Flatten the Chat C{tools}.

    @param tools: the C{tools} value.
    @return: the Responses tools.
    """
    return _tool_list(tools, chat_tool_to_responses_tool)


def _effort_to_reasoning(effort: Any) -> dict[str, Any]:
    """
    Nest a Chat C{reasoning_effort}.

    @param effort: the C{reasoning_effort} value.
    @return: the Responses C{reasoning} object.
    """
    return {"effort": effort}


@_when_set
def _chat_response_format(value: Any, draft: _Draft) -> None:
    """
    L{_Converter} for C{response_format}, which becomes C{text.format}.
    """
    draft.text["format"] = chat_response_format_to_text_format(value)


@_when_set
def _chat_verbosity(value: Any, draft: _Draft) -> None:
    """
    L{_Converter} for C{verbosity}, which becomes C{text.verbosity}.
    """
    draft.text["verbosity"] = value


def _chat_max_tokens(ignored: Any, draft: _Draft) -> None:
    """
    L{_Converter} for both C{max_completion_tokens} and the older
    C{max_tokens}: the first of them that is set becomes
    C{max_output_tokens}, in the place of the first of the two fields, even
    a null one.  So it reads both values from the request, and is not
    wrapped in L{_when_set}.
    """
    limit = draft.request.get("max_completion_tokens")
    if limit is None:
        limit = draft.request.get("max_tokens")
    if limit is not None:
        draft.body["max_output_tokens"] = limit


# Fields both APIs have, with the same name and meaning.
_SAME_IN_BOTH = frozenset(
    {
        "model",
        "user",
        "metadata",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)

# How the Chat fields translate into the Responses API.
_CHAT_FIELDS = _FieldTable(
    same_name=_SAME_IN_BOTH | {"store", "top_logprobs", "stream"},
    no_equivalent=frozenset(
        {"stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs"}
    ),
    converters=MappingProxyType(
        {
            "tools": _converted("tools", _chat_tools_to_responses),
            "tool_choice": _converted("tool_choice", _chat_tool_choice_to_responses),
            "response_format": _chat_response_format,
            "verbosity": _chat_verbosity,
            "max_completion_tokens": _chat_max_tokens,
            "max_tokens": _chat_max_tokens,
            "reasoning_effort": _converted("reasoning", _effort_to_reasoning),
        }
    ),
)

# Chat fields that chat_to_responses_request translates itself (messages,
# model, n), or ignores without reporting them (stream_options).
_CHAT_HANDLED = frozenset({"messages", "model", "n", "stream_options"})


def _check_single_choice(n: Any) -> None:
    """
    Refuse to ask for more than one choice: a response has only one.

    @param n: the Chat C{n}.
    @raise InvalidRequest: unless C{n} is null or 1.
    """
    if n is not None and n != 1:
        raise _invalid(
            "'n' greater than 1 is not supported by this backend.", "n", "unsupported_parameter"
        )


def _chat_messages(messages: Any) -> list[Any]:
    """
    Check the presence and type of the Chat C{messages}.

    @param messages: the C{messages} value.
    @return: C{messages}.
    @raise InvalidRequest: if it is missing or not a list.
    """
    if messages is None:
        raise _invalid("'messages' is required.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _invalid("'messages' must be a list.", "messages", "invalid_type")
    return messages


def chat_to_responses_request(chat: Mapping[str, Any]) -> Translated:
    """
    Translate a Chat Completions request into a Responses request.

    @param chat: the Chat request body.
    @return: the Responses body and the dropped field names.
    @raise InvalidRequest: for C{n > 1}, missing C{messages}, and shapes
        that cannot be translated.
    """
    _check_single_choice(chat.get("n"))
    messages = _chat_messages(chat.get("messages"))
    draft = _Draft.begin(chat)
    instructions, items = _chat_messages_to_input(messages)
    if instructions is not None:
        draft.body["instructions"] = instructions
    draft.body["input"] = items
    _translate_fields(_CHAT_FIELDS, draft, _CHAT_HANDLED)
    if draft.text:
        draft.body["text"] = draft.text
    return draft.result()


# ---------------------------------------------------------------------------
# Responses -> Chat
# ---------------------------------------------------------------------------


def _responses_tool_to_chat(tool: Any) -> dict[str, Any]:
    """
    Nest one Responses function tool into the Chat shape.

    @param tool: C{{"type": "function", "name", "description", "parameters",
        "strict"}}; an already nested tool is returned as a copy.
    @return: C{{"type": "function", "function": {...}}}.
    @raise InvalidRequest: for hosted tools (C{web_search}, C{file_search},
        ...), which Chat upstreams cannot run.
    """
    if not isinstance(tool, Mapping):
        raise _invalid("Each tool must be an object.", "tools", "invalid_type")
    kind = tool.get("type")
    if kind != "function":
        raise _invalid(
            f"Tool type {kind!r} is not supported by this backend; only 'function' tools are.",
            "tools",
            "unsupported_parameter",
        )
    if isinstance(tool.get("function"), Mapping):
        return copy.deepcopy(dict(tool))
    if not isinstance(tool.get("name"), str):
        raise _invalid("Function tools need a 'name'.", "tools", "invalid_value")
    function: dict[str, Any] = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = copy.deepcopy(tool[key])
    return {"type": "function", "function": function}


def _responses_tool_choice_to_chat(choice: Any) -> Any:
    """
    Nest a Responses C{tool_choice}.

    @param choice: a string, C{{"type": "function", "name"}} or
        C{allowed_tools}.
    @return: the Chat form.
    @raise InvalidRequest: for hosted-tool choices.
    """
    if isinstance(choice, str):
        return choice
    if not isinstance(choice, Mapping):
        raise _invalid(
            "'tool_choice' must be a string or an object.", "tool_choice", "invalid_type"
        )
    kind = choice.get("type")
    if kind == "function":
        if isinstance(choice.get("function"), Mapping):
            return copy.deepcopy(dict(choice))
        if not isinstance(choice.get("name"), str):
            raise _invalid("'tool_choice.name' is required.", "tool_choice", "invalid_value")
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "allowed_tools":
        allowed: dict[str, Any] = {
            "tools": [_responses_tool_choice_to_chat(tool) for tool in choice.get("tools") or []]
        }
        if choice.get("mode") is not None:
            allowed["mode"] = choice["mode"]
        return {"type": "allowed_tools", "allowed_tools": allowed}
    raise _invalid(
        f"tool_choice type {kind!r} is not supported by this backend.",
        "tool_choice",
        "unsupported_parameter",
    )


def _text_format_to_response_format(fmt: Any, param: str) -> dict[str, Any]:
    """
    Translate a Responses C{text.format} into a Chat C{response_format}.

    @param fmt: C{{"type": "text" | "json_object"}} or a flat
        C{json_schema}; an already nested C{json_schema} is kept.
    @param param: the parameter to blame on error.
    @return: the Chat C{response_format}.
    """
    if not isinstance(fmt, Mapping):
        raise _invalid(f"'{param}' must be an object.", param, "invalid_type")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        if isinstance(fmt.get("json_schema"), Mapping):
            return copy.deepcopy(dict(fmt))
        nested: dict[str, Any] = {}
        for key in ("name", "schema", "strict", "description"):
            if fmt.get(key) is not None:
                nested[key] = copy.deepcopy(fmt[key])
        return {"type": "json_schema", "json_schema": nested}
    raise _invalid(f"Text format type {kind!r} is not supported.", param)


def _responses_part_to_chat(part: Any) -> dict[str, Any]:
    """
    Translate one Responses content part into a Chat content part.

    @param part: an C{input_text}/C{output_text}/C{input_image}/
        C{input_file}/C{input_audio}/C{refusal} part (Chat-shaped parts are
        accepted too, for the C{messages} alias).
    @return: the Chat part.
    @raise InvalidRequest: for parts Chat cannot carry.
    """
    if not isinstance(part, Mapping):
        raise _invalid("Content parts must be objects.", "input", "invalid_type")
    kind = part.get("type")
    if kind in _TEXT_PART_TYPES:
        return {"type": "text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _invalid("Images by 'file_id' are not supported by this backend.", "input")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise _invalid("Files by 'file_url' are not supported by this backend.", "input")
        file = {
            key: part[key]
            for key in ("file_id", "file_data", "filename")
            if part.get(key) is not None
        }
        return {"type": "file", "file": file}
    if kind in ("image_url", "input_audio", "file"):
        return copy.deepcopy(dict(part))
    raise _invalid(f"Content part type {kind!r} is not supported by this backend.", "input")


def _responses_content_to_chat(content: Any) -> Any:
    """
    Translate a Responses message content into a Chat content.

    @param content: a string or a list of parts.
    @return: a string when the content is a string or a single text part,
        otherwise a list of Chat parts.
    """
    if content is None or isinstance(content, str):
        return content if content is not None else ""
    if not isinstance(content, list):
        raise _invalid(
            "Message content must be a string or a list of parts.", "input", "invalid_type"
        )
    parts = [_responses_part_to_chat(part) for part in content]
    if not parts:
        return ""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _responses_message_to_chat(item: Mapping[str, Any]) -> dict[str, Any]:
    """
    Translate a Responses message item (or a Chat message given through the
    C{messages} alias) into a Chat message.

    @param item: the message.
    @return: the Chat message.
    """
    role = item.get("role")
    if role == "tool":
        if not isinstance(item.get("tool_call_id"), str):
            raise _invalid("Tool messages need a 'tool_call_id'.", "input", "invalid_value")
        return {
            "role": "tool",
            "tool_call_id": item["tool_call_id"],
            "content": _tool_output_to_chat(item.get("content")),
        }
    if role not in ("user", "assistant", "system", "developer"):
        raise _invalid(f"Message role {role!r} is not supported.", "input")
    message: dict[str, Any] = {
        "role": role,
        "content": _responses_content_to_chat(item.get("content")),
    }
    if role == "assistant" and isinstance(item.get("tool_calls"), list) and item["tool_calls"]:
        message["tool_calls"] = copy.deepcopy(item["tool_calls"])
        if message["content"] == "":
            message["content"] = None
    return message


def _tool_output_to_chat(output: Any) -> Any:
    """
    Translate a C{function_call_output} output into a Chat tool content.

    @param output: a string or a list of text parts.
    @return: a string, or a list of Chat text parts.
    @raise InvalidRequest: for non-text parts, which Chat tool messages
        cannot carry.
    """
    content = _responses_content_to_chat(output)
    if isinstance(content, list) and any(part.get("type") != "text" for part in content):
        raise _invalid("Tool outputs can only contain text for this backend.", "input")
    return content


def _responses_input_to_messages(
    items: Sequence[Any], start: list[dict[str, Any]], dropped: list[str]
) -> list[dict[str, Any]]:
    """
    Translate Responses input items, appending them after C{start}.

    @param items: the input items.
    @param start: the messages that come first (system, history); they are
        copied, never modified.
    @param dropped: receives C{input.reasoning} when reasoning items are
        dropped.
    @return: all the messages.
    """
    messages = list(start)
    first_own = len(messages)
    for item in items:
        if not isinstance(item, Mapping):
            raise _invalid("Each input item must be an object.", "input", "invalid_type")
        kind = item.get("type")
        if kind == "message" or (kind is None and "role" in item):
            messages.append(_responses_message_to_chat(item))
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str):
                raise _invalid("'function_call' items need a 'call_id'.", "input", "invalid_value")
            arguments = item.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": arguments},
            }
            previous = messages[-1] if len(messages) > first_own else None
            if previous is not None and previous["role"] == "assistant":
                previous["tool_calls"] = [*previous.get("tool_calls", []), call]
                if previous["content"] == "":
                    previous["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _invalid(
                    "'function_call_output' items need a 'call_id'.", "input", "invalid_value"
                )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _tool_output_to_chat(item.get("output", "")),
                }
            )
        elif kind == "reasoning":
            if "input.reasoning" not in dropped:
                dropped.append("input.reasoning")
        else:
            raise _invalid(f"Input item type {kind!r} is not supported by this backend.", "input")
    return messages


def _responses_tools_to_chat(tools: Any) -> list[dict[str, Any]]:
    """
    Nest the Responses C{tools}.

    @param tools: the C{tools} value.
    @return: the Chat tools.
    """
    return _tool_list(tools, _responses_tool_to_chat)


def _responses_text_format(value: Any, draft: _Draft) -> None:
    """
    L{_Converter} for C{text.format}, which becomes C{response_format}.
    """
    draft.body["response_format"] = _text_format_to_response_format(value, "text.format")


@_when_set
def _responses_response_format(value: Any, draft: _Draft) -> None:
    """
    L{_Converter} for C{response_format}, the Chat-shaped alias of
    C{text.format}: it is kept unless C{text.format} is given too, which
    wins.  It is not even checked when C{text.format} came first.
    """
    if "response_format" in draft.body:
        return
    fmt = _text_format_to_response_format(value, "response_format")
    text = draft.request.get("text")
    if not (isinstance(text, Mapping) and text.get("format") is not None):
        draft.body["response_format"] = fmt


@_when_set
def _responses_top_logprobs(value: Any, draft: _Draft) -> None:
    """
    L{_Converter} for C{top_logprobs}, which is kept and needs C{logprobs}
    in Chat.
    """
    draft.body["top_logprobs"] = value
    draft.body["logprobs"] = True


@_when_set
def _responses_stream(value: Any, draft: _Draft) -> None:
    """
    L{_Converter} for C{stream}, which is kept; a Chat stream must also be
    asked for the usage, which a Responses stream always reports.
    """
    draft.body["stream"] = value
    if value:
        draft.body["stream_options"] = {"include_usage": True}


# How the Responses fields translate into Chat Completions.
_RESPONSES_FIELDS = _FieldTable(
    same_name=_SAME_IN_BOTH,
    no_equivalent=frozenset(
        {
            "store",
            "previous_response_id",
            "include",
            "truncation",
            "background",
            "conversation",
            "prompt",
            "max_tool_calls",
        }
    ),
    converters=MappingProxyType(
        {
            "tools": _converted("tools", _responses_tools_to_chat),
            "tool_choice": _converted("tool_choice", _responses_tool_choice_to_chat),
            "text": _nested(
                "text", {"format": _responses_text_format, "verbosity": _renamed("verbosity")}
            ),
            "response_format": _responses_response_format,
            "max_output_tokens": _renamed("max_completion_tokens"),
            "reasoning": _nested("reasoning", {"effort": _renamed("reasoning_effort")}),
            "top_logprobs": _responses_top_logprobs,
            "stream": _responses_stream,
        }
    ),
)

# Responses fields that responses_to_chat_request translates itself
# (instructions, model; it adds the field it took the input from), or ignores
# because their Chat counterpart comes from another field (stream_options,
# from stream).
_RESPONSES_HANDLED = frozenset({"instructions", "model", "stream_options"})


def _responses_input_items(raw_input: Any) -> list[Any]:
    """
    The input items of a Responses request.

    @param raw_input: the C{input} (or C{messages}) value: a string, which
        stands for one user message, or a list of items.
    @return: the items, not yet checked.
    @raise InvalidRequest: if the input is missing or neither a string nor a
        list.
    """
    if isinstance(raw_input, str):
        return [{"type": "message", "role": "user", "content": raw_input}]
    if isinstance(raw_input, list):
        return raw_input
    if raw_input is None:
        raise _invalid("'input' is required.", "input", "missing_required_parameter")
    raise _invalid("'input' must be a string or a list of items.", "input", "invalid_type")


def _leading_messages(
    instructions: Any, history: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """
    The Chat messages that come before the input.

    @param instructions: the Responses C{instructions}.
    @param history: earlier Chat messages.
    @return: a system message with the instructions, unless there are none,
        then copies of the C{history} messages.
    @raise InvalidRequest: if C{instructions} is not a string.
    """
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid("'instructions' must be a string.", "instructions", "invalid_type")
    start: list[dict[str, Any]] = []
    if instructions:
        start.append({"role": "system", "content": instructions})
    start.extend(copy.deepcopy(dict(message)) for message in history)
    return start


def responses_to_chat_request(
    resp: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()
) -> Translated:
    """
    Translate a Responses request into a Chat Completions request.

    @param resp: the Responses request body.  C{messages} is accepted in
        place of C{input} and C{response_format} in place of C{text.format}.
    @param history: earlier Chat messages (the replayed transcript of
        C{previous_response_id}); they go after the C{instructions} system
        message and before the input.
    @return: the Chat body and the dropped field names.
    @raise InvalidRequest: for a missing or malformed C{input}, hosted
        tools, and items Chat cannot carry.
    """
    # Given "input", a "messages" field is unknown: dropped and reported.
    source = "input" if "input" in resp else "messages"
    items = _responses_input_items(resp.get(source))
    start = _leading_messages(resp.get("instructions"), history)
    draft = _Draft.begin(resp)
    draft.body["messages"] = _responses_input_to_messages(
        copy.deepcopy(items), start, draft.dropped
    )
    _translate_fields(_RESPONSES_FIELDS, draft, _RESPONSES_HANDLED | {source})
    return draft.result()
