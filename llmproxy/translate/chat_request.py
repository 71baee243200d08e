# -*- test-case-name: tests.test_translate_chat_request -*-
"""
A Chat Completions request translated into a Responses request, for the
C{openai-responses} backend: L{chat_to_responses_request}.

The tool and response-format translations are public because
L{llmproxy.translate.responses} echoes a request's settings in the
Responses objects it builds.
"""

from __future__ import annotations

import copy
import json
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from llmproxy.translate.requests import (
    SAME_IN_BOTH,
    TEXT_PART_TYPES,
    Draft,
    FieldTable,
    Translated,
    converted,
    invalid,
    non_null_copies,
    tool_choice_translator,
    tool_list,
    translate_fields,
    when_set,
)

__all__ = [
    "chat_to_responses_request",
    "chat_tool_to_responses_tool",
    "chat_response_format_to_text_format",
]


def _content_text(content: Any, param: str) -> str:
    """
    The text of a message content, for places that only take text
    (instructions, tool output): a string as it is, the text parts of a list
    joined with a blank line (other parts are ignored), C{""} for L{None}.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping):
                raise invalid("Content parts must be objects.", param, "invalid_type")
            if part.get("type") in TEXT_PART_TYPES and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n\n".join(texts)
    raise invalid("Message content must be a string or a list of parts.", param, "invalid_type")


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
        raise invalid("Each tool must be an object.", "tools", "invalid_type")
    kind = tool.get("type", "function")
    if kind != "function":
        raise invalid(
            f"Tool type {kind!r} is not supported by this backend.",
            "tools",
            "unsupported_parameter",
        )
    function = tool.get("function")
    if function is None and isinstance(tool.get("name"), str):
        return copy.deepcopy(dict(tool))
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise invalid("Function tools need a 'function.name'.", "tools", "invalid_value")
    flat: dict[str, Any] = {"type": "function", "name": function["name"]}
    flat.update(non_null_copies(function, ("description", "parameters")))
    strict = function.get("strict")
    flat["strict"] = bool(strict) if strict is not None else False
    return flat


@tool_choice_translator
def _chat_tool_choice_to_responses(choice: Mapping[str, Any]) -> Any:
    """
    Flatten a Chat C{tool_choice} object:
    C{{"type": "function", "function": {"name"}}} or C{allowed_tools}.

    @raise InvalidRequest: for shapes that cannot be translated.
    """
    kind = choice.get("type")
    if kind == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if not isinstance(name, str):
            raise invalid(
                "'tool_choice.function.name' is required.", "tool_choice", "invalid_value"
            )
        return {"type": "function", "name": name}
    if kind == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, Mapping):
            raise invalid(
                "'tool_choice.allowed_tools' is required.", "tool_choice", "invalid_value"
            )
        tools = [_chat_tool_choice_to_responses(tool) for tool in allowed.get("tools") or []]
        result: dict[str, Any] = {"type": "allowed_tools", "tools": tools}
        if allowed.get("mode") is not None:
            result["mode"] = allowed["mode"]
        return result
    raise invalid(f"tool_choice type {kind!r} is not supported.", "tool_choice")


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
        raise invalid("'response_format' must be an object.", "response_format", "invalid_type")
    kind = response_format.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        nested = response_format.get("json_schema")
        if not isinstance(nested, Mapping):
            return copy.deepcopy(dict(response_format))
        return {
            "type": "json_schema",
            **non_null_copies(nested, ("name", "schema", "strict", "description")),
        }
    raise invalid(f"response_format type {kind!r} is not supported.", "response_format")


def _chat_part_to_responses(part: Any, assistant: bool) -> dict[str, Any]:
    """
    Translate one Chat content part.  In assistant history, text becomes
    C{output_text}; elsewhere C{input_text}.

    @raise InvalidRequest: for unknown part types.
    """
    if not isinstance(part, Mapping):
        raise invalid("Content parts must be objects.", "messages", "invalid_type")
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
            raise invalid(
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
    raise invalid(f"Content part type {kind!r} is not supported.", "messages")


def _chat_content_to_parts(content: Any, assistant: bool) -> list[dict[str, Any]]:
    """
    Translate a Chat message content (a string, L{None} or a list of parts)
    into Responses parts, none for L{None} or C{""}.
    """
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "output_text" if assistant else "input_text", "text": content}]
    if isinstance(content, list):
        return [_chat_part_to_responses(part, assistant) for part in content]
    raise invalid(
        "Message content must be a string or a list of parts.", "messages", "invalid_type"
    )


def _chat_message_to_items(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """
    Translate one (non-leading) Chat message into Responses input items.

    @return: one message item, and/or C{function_call} items, or one
        C{function_call_output} item.
    @raise InvalidRequest: for unknown roles or malformed messages.
    """
    role = message.get("role")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise invalid("Tool messages need a 'tool_call_id'.", "messages", "invalid_value")
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
            raise invalid("'tool_calls' must be a list.", "messages", "invalid_type")
        if parts or not tool_calls:
            if not parts:
                parts = [{"type": "output_text", "text": ""}]
            items.append({"type": "message", "role": "assistant", "content": parts})
        for call in tool_calls:
            if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
                raise invalid("Each tool call needs a 'function'.", "messages", "invalid_value")
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
    raise invalid(f"Message role {role!r} is not supported.", "messages")


def _chat_messages_to_input(
    messages: Sequence[Any],
) -> tuple[str | None, list[dict[str, Any]]]:
    """
    Split Chat messages into Responses C{instructions} and input items.

    @return: the instructions (the leading system/developer messages joined
        with a blank line, or L{None}) and the input items.
    """
    for message in messages:
        if not isinstance(message, Mapping):
            raise invalid("Each message must be an object.", "messages", "invalid_type")
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
    return tool_list(tools, chat_tool_to_responses_tool)


def _effort_to_reasoning(effort: Any) -> dict[str, Any]:
    return {"effort": effort}


@when_set
def _chat_response_format(value: Any, draft: Draft) -> None:
    """
    L{Converter} for C{response_format}, which becomes C{text.format}.
    """
    draft.text["format"] = chat_response_format_to_text_format(value)


@when_set
def _chat_verbosity(value: Any, draft: Draft) -> None:
    """
    L{Converter} for C{verbosity}, which becomes C{text.verbosity}.
    """
    draft.text["verbosity"] = value


def _chat_max_tokens(ignored: Any, draft: Draft) -> None:
    """
    L{Converter} for both C{max_completion_tokens} and the older
    C{max_tokens}: the first of them that is set becomes
    C{max_output_tokens}, in the place of the first of the two fields, even
    a null one.  So it reads both values from the request, and is not
    wrapped in L{when_set}.
    """
    limit = draft.request.get("max_completion_tokens")
    if limit is None:
        limit = draft.request.get("max_tokens")
    if limit is not None:
        draft.body["max_output_tokens"] = limit


# How the Chat fields translate into the Responses API.
_CHAT_FIELDS = FieldTable(
    same_name=SAME_IN_BOTH | {"store", "top_logprobs", "stream"},
    no_equivalent=frozenset(
        {"stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs"}
    ),
    converters=MappingProxyType(
        {
            "tools": converted("tools", _chat_tools_to_responses),
            "tool_choice": converted("tool_choice", _chat_tool_choice_to_responses),
            "response_format": _chat_response_format,
            "verbosity": _chat_verbosity,
            "max_completion_tokens": _chat_max_tokens,
            "max_tokens": _chat_max_tokens,
            "reasoning_effort": converted("reasoning", _effort_to_reasoning),
        }
    ),
)

# Chat fields that chat_to_responses_request translates itself (messages,
# model, n), or ignores without reporting them (stream_options).
_CHAT_HANDLED = frozenset({"messages", "model", "n", "stream_options"})


def _check_single_choice(n: Any) -> None:
    """
    Refuse to ask for more than one choice: a response has only one.

    @raise InvalidRequest: unless C{n} is null or 1.
    """
    if n is not None and n != 1:
        raise invalid(
            "'n' greater than 1 is not supported by this backend.", "n", "unsupported_parameter"
        )


def _chat_messages(messages: Any) -> list[Any]:
    """
    Check the presence and type of the Chat C{messages}.

    @raise InvalidRequest: if it is missing or not a list.
    """
    if messages is None:
        raise invalid("'messages' is required.", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise invalid("'messages' must be a list.", "messages", "invalid_type")
    return messages


def chat_to_responses_request(chat: Mapping[str, Any]) -> Translated:
    """
    Translate a Chat Completions request into a Responses request.

    @return: the Responses body and the dropped field names.
    @raise InvalidRequest: for C{n > 1}, missing C{messages}, and shapes
        that cannot be translated.
    """
    _check_single_choice(chat.get("n"))
    messages = _chat_messages(chat.get("messages"))
    draft = Draft.begin(chat)
    instructions, items = _chat_messages_to_input(messages)
    if instructions is not None:
        draft.body["instructions"] = instructions
    draft.body["input"] = items
    translate_fields(_CHAT_FIELDS, draft, _CHAT_HANDLED)
    if draft.text:
        draft.body["text"] = draft.text
    return draft.result()
