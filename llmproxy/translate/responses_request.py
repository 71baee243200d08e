# -*- test-case-name: tests.test_translate_responses_request -*-
"""
A Responses request translated into a Chat Completions request, for the
C{/v1/responses} frontend bridging to a Chat upstream:
L{responses_to_chat_request}.
"""

from __future__ import annotations

import copy
import json
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from llmproxy.translate.namespaces import NamespaceTable, flat_name
from llmproxy.translate.requests import (
    SAME_IN_BOTH,
    TEXT_PART_TYPES,
    Draft,
    FieldTable,
    Translated,
    invalid,
    nested,
    non_null_copies,
    renamed,
    tool_choice_translator,
    translate_fields,
    when_set,
)

__all__ = ["responses_to_chat_request"]


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
        raise invalid("Each tool must be an object.", "tools", "invalid_type")
    kind = tool.get("type")
    if kind != "function":
        raise invalid(
            f"Tool type {kind!r} is not supported by this backend; only 'function' tools are.",
            "tools",
            "unsupported_parameter",
        )
    if isinstance(tool.get("function"), Mapping):
        return copy.deepcopy(dict(tool))
    if not isinstance(tool.get("name"), str):
        raise invalid("Function tools need a 'name'.", "tools", "invalid_value")
    function = {
        "name": tool["name"],
        **non_null_copies(tool, ("description", "parameters", "strict")),
    }
    return {"type": "function", "function": function}


@tool_choice_translator
def _responses_tool_choice_to_chat(choice: Mapping[str, Any]) -> Any:
    """
    Nest a Responses C{tool_choice} object: C{{"type": "function", "name"}}
    or C{allowed_tools}.

    @raise InvalidRequest: for hosted-tool choices.
    """
    kind = choice.get("type")
    if kind == "function":
        if isinstance(choice.get("function"), Mapping):
            return copy.deepcopy(dict(choice))
        if not isinstance(choice.get("name"), str):
            raise invalid("'tool_choice.name' is required.", "tool_choice", "invalid_value")
        return {"type": "function", "function": {"name": _call_name(choice)}}
    if kind == "allowed_tools":
        allowed: dict[str, Any] = {
            "tools": [_responses_tool_choice_to_chat(tool) for tool in choice.get("tools") or []]
        }
        if choice.get("mode") is not None:
            allowed["mode"] = choice["mode"]
        return {"type": "allowed_tools", "allowed_tools": allowed}
    raise invalid(
        f"tool_choice type {kind!r} is not supported by this backend.",
        "tool_choice",
        "unsupported_parameter",
    )


def _text_format_to_response_format(fmt: Any, param: str) -> dict[str, Any]:
    """
    Translate a Responses C{text.format} into a Chat C{response_format},
    blaming C{param} for errors.

    @param fmt: C{{"type": "text" | "json_object"}} or a flat
        C{json_schema}; an already nested C{json_schema} is kept.
    """
    if not isinstance(fmt, Mapping):
        raise invalid(f"'{param}' must be an object.", param, "invalid_type")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        if isinstance(fmt.get("json_schema"), Mapping):
            return copy.deepcopy(dict(fmt))
        schema = non_null_copies(fmt, ("name", "schema", "strict", "description"))
        return {"type": "json_schema", "json_schema": schema}
    raise invalid(f"Text format type {kind!r} is not supported.", param)


def _responses_part_to_chat(part: Any) -> dict[str, Any]:
    """
    Translate one Responses content part into a Chat content part.

    @param part: an C{input_text}/C{output_text}/C{input_image}/
        C{input_file}/C{input_audio}/C{refusal} part (Chat-shaped parts are
        accepted too, for the C{messages} alias).
    @raise InvalidRequest: for parts Chat cannot carry.
    """
    if not isinstance(part, Mapping):
        raise invalid("Content parts must be objects.", "input", "invalid_type")
    kind = part.get("type")
    if kind in TEXT_PART_TYPES:
        return {"type": "text", "text": part.get("text", "")}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.get("refusal", "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise invalid("Images by 'file_id' are not supported by this backend.", "input")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_url") is not None:
            raise invalid("Files by 'file_url' are not supported by this backend.", "input")
        file = {
            key: part[key]
            for key in ("file_id", "file_data", "filename")
            if part.get(key) is not None
        }
        return {"type": "file", "file": file}
    if kind in ("image_url", "input_audio", "file"):
        return copy.deepcopy(dict(part))
    raise invalid(f"Content part type {kind!r} is not supported by this backend.", "input")


def _responses_content_to_chat(content: Any) -> Any:
    """
    Translate a Responses message content (a string or a list of parts)
    into a Chat content: a string when it is a string or a single text
    part, otherwise a list of Chat parts.
    """
    if content is None or isinstance(content, str):
        return content if content is not None else ""
    if not isinstance(content, list):
        raise invalid(
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
    """
    role = item.get("role")
    if role == "tool":
        if not isinstance(item.get("tool_call_id"), str):
            raise invalid("Tool messages need a 'tool_call_id'.", "input", "invalid_value")
        return {
            "role": "tool",
            "tool_call_id": item["tool_call_id"],
            "content": _tool_output_to_chat(item.get("content")),
        }
    if role not in ("user", "assistant", "system", "developer"):
        raise invalid(f"Message role {role!r} is not supported.", "input")
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
    Translate a C{function_call_output} output (a string or a list of text
    parts) into a Chat tool content.

    @raise InvalidRequest: for non-text parts, which Chat tool messages
        cannot carry.
    """
    content = _responses_content_to_chat(output)
    if isinstance(content, list) and any(part.get("type") != "text" for part in content):
        raise invalid("Tool outputs can only contain text for this backend.", "input")
    return content


def _responses_input_to_messages(
    items: Sequence[Any], start: list[dict[str, Any]], dropped: list[str]
) -> list[dict[str, Any]]:
    """
    Translate Responses input items, appending them after C{start}.

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
            raise invalid("Each input item must be an object.", "input", "invalid_type")
        kind = item.get("type")
        if kind == "message" or (kind is None and "role" in item):
            messages.append(_responses_message_to_chat(item))
        elif kind == "function_call":
            if not isinstance(item.get("call_id"), str):
                raise invalid("'function_call' items need a 'call_id'.", "input", "invalid_value")
            arguments = item.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": _call_name(item), "arguments": arguments},
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
                raise invalid(
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
            raise invalid(f"Input item type {kind!r} is not supported by this backend.", "input")
    return messages


def _call_name(item: Mapping[str, Any]) -> Any:
    """
    The Chat name of a C{function_call} item (or a function C{tool_choice}):
    its C{name}, flattened with its C{namespace} when it has one.
    """
    name = item.get("name", "")
    namespace = item.get("namespace")
    if isinstance(namespace, str) and namespace and isinstance(name, str):
        return flat_name(namespace, name)
    return name


@when_set
def _responses_tools(tools: Any, draft: Draft) -> None:
    """
    L{Converter} for C{tools}: function tools are nested; the function
    tools of a C{namespace} are flattened (L{NamespaceTable}); a tool a Chat
    upstream cannot run (a hosted tool such as C{web_search}) is left out
    and reported as C{tools.<type>}, so a turn never fails for a tool the
    model may never call.
    """
    if not isinstance(tools, list):
        raise invalid("'tools' must be a list.", "tools", "invalid_type")
    table = NamespaceTable.of(tools)
    kept: list[dict[str, Any]] = []
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind == "namespace":
            kept.extend(_responses_tool_to_chat(flat) for flat in table.group(index))
        elif isinstance(kind, str) and kind != "function":
            _report(draft, f"tools.{kind}")
        else:
            kept.append(_responses_tool_to_chat(tool))
    for name in table.dropped:
        _report(draft, name)
    if kept or not tools:
        draft.body["tools"] = kept


def _report(draft: Draft, name: str) -> None:
    """
    Report a dropped parameter once.
    """
    if name not in draft.dropped:
        draft.dropped.append(name)


@when_set
def _responses_tool_choice(choice: Any, draft: Draft) -> None:
    """
    L{Converter} for C{tool_choice}: a choice of a tool that a Chat
    upstream does not get (a hosted tool) falls back to C{auto}, and an
    C{allowed_tools} list loses those tools; either way C{tool_choice} is
    reported.
    """
    if isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "allowed_tools" and isinstance(choice.get("tools"), list):
            tools = [tool for tool in choice["tools"] if not _hosted_choice(tool)]
            if len(tools) < len(choice["tools"]):
                _report(draft, "tool_choice")
                choice = {**choice, "tools": tools} if tools else "auto"
        elif _hosted_choice(choice):
            _report(draft, "tool_choice")
            choice = "auto"
    draft.body["tool_choice"] = _responses_tool_choice_to_chat(choice)


def _hosted_choice(choice: Any) -> bool:
    """
    Whether a C{tool_choice} (or an C{allowed_tools} entry) names a tool
    that is not a function: a hosted tool, left out for a Chat upstream.
    """
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    return isinstance(kind, str) and kind not in ("function", "allowed_tools")


def _responses_text_format(value: Any, draft: Draft) -> None:
    """
    L{Converter} for C{text.format}, which becomes C{response_format}.
    """
    draft.body["response_format"] = _text_format_to_response_format(value, "text.format")


@when_set
def _responses_response_format(value: Any, draft: Draft) -> None:
    """
    L{Converter} for C{response_format}, the Chat-shaped alias of
    C{text.format}: it is kept unless C{text.format} is given too, which
    wins.  It is not even checked when C{text.format} came first.
    """
    if "response_format" in draft.body:
        return
    fmt = _text_format_to_response_format(value, "response_format")
    text = draft.request.get("text")
    if not (isinstance(text, Mapping) and text.get("format") is not None):
        draft.body["response_format"] = fmt


@when_set
def _responses_top_logprobs(value: Any, draft: Draft) -> None:
    """
    L{Converter} for C{top_logprobs}, which is kept and needs C{logprobs}
    in Chat.
    """
    draft.body["top_logprobs"] = value
    draft.body["logprobs"] = True


@when_set
def _responses_stream(value: Any, draft: Draft) -> None:
    """
    L{Converter} for C{stream}, which is kept; a Chat stream must also be
    asked for the usage, which a Responses stream always reports.
    """
    draft.body["stream"] = value
    if value:
        draft.body["stream_options"] = {"include_usage": True}


# How the Responses fields translate into Chat Completions.
_RESPONSES_FIELDS = FieldTable(
    same_name=SAME_IN_BOTH,
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
            "tools": _responses_tools,
            "tool_choice": _responses_tool_choice,
            "text": nested(
                "text", {"format": _responses_text_format, "verbosity": renamed("verbosity")}
            ),
            "response_format": _responses_response_format,
            "max_output_tokens": renamed("max_completion_tokens"),
            "reasoning": nested("reasoning", {"effort": renamed("reasoning_effort")}),
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
        raise invalid("'input' is required.", "input", "missing_required_parameter")
    raise invalid("'input' must be a string or a list of items.", "input", "invalid_type")


def _leading_messages(
    instructions: Any, history: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """
    The Chat messages that come before the input: a system message with the
    C{instructions}, unless there are none, then copies of the earlier Chat
    messages in C{history}.

    @raise InvalidRequest: if C{instructions} is not a string.
    """
    if instructions is not None and not isinstance(instructions, str):
        raise invalid("'instructions' must be a string.", "instructions", "invalid_type")
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
    # Given "input", a "messages" field is unknown: dropped and reported.  A
    # null "input" is not given: the input comes from "messages" then.
    source = "input" if resp.get("input") is not None else "messages"
    items = _responses_input_items(resp.get(source))
    start = _leading_messages(resp.get("instructions"), history)
    draft = Draft.begin(resp)
    draft.body["messages"] = _responses_input_to_messages(
        copy.deepcopy(items), start, draft.dropped
    )
    translate_fields(_RESPONSES_FIELDS, draft, _RESPONSES_HANDLED | {source})
    return draft.result()
