# -*- test-case-name: tests.test_translate_responses,tests.test_translate_chat_to_responses,tests.test_translate_responses_to_chat -*-
"""
Whole (non-streamed) answers: Responses objects ⇄ C{chat.completion}s.

The item builders and L{response_object} are shared with
L{llmproxy.translate.chat_to_responses}, so that a synthesised event stream
ends in exactly the object that L{chat_completion_to_response} builds for
the same answer.  Item ids are derived from the response id and the output
index (C{msg_<base>_<i>}, C{fc_<base>_<i>}, C{rs_<base>_<i>}), so both
paths agree on them.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping

from llmproxy.errors import UpstreamError
from llmproxy.translate.chat_request import (
    chat_response_format_to_text_format,
    chat_tool_to_responses_tool,
)
from llmproxy.translate.namespaces import NamespaceTable, flat_name

__all__ = [
    "responses_to_chat_completion",
    "chat_completion_to_response",
    "chat_usage_to_responses",
    "responses_usage_to_chat",
    "chat_finish_to_status",
    "item_id",
    "message_item",
    "function_call_item",
    "chat_call_name",
    "reasoning_item",
    "response_object",
    "chat_message_text",
    "chat_message_reasoning",
    "as_mapping",
]


def as_mapping(value: Any) -> Mapping[str, Any]:
    """
    C{value} if it is a mapping, else an empty one: for optional JSON
    objects that may be missing or malformed.
    """
    return value if isinstance(value, Mapping) else {}


def _int(value: Any) -> int:
    """
    A token count (or a timestamp) as an C{int}: a float is truncated,
    anything else counts as 0.
    """
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def chat_usage_to_responses(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """
    Rename Chat usage to Responses usage.

    @param usage: C{{prompt_tokens, completion_tokens, total_tokens,
        prompt_tokens_details: {cached_tokens}, completion_tokens_details:
        {reasoning_tokens}}}, or L{None}.
    @return: C{{input_tokens, input_tokens_details: {cached_tokens,
        cache_write_tokens}, output_tokens, output_tokens_details:
        {reasoning_tokens}, total_tokens}}, or L{None}.  Missing details
        count as 0 (the Responses types require them).
    """
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    total = usage.get("total_tokens")
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, Mapping) else None
    reasoning = (
        completion_details.get("reasoning_tokens")
        if isinstance(completion_details, Mapping)
        else None
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": _int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _int(reasoning)},
        "total_tokens": _int(total) if total is not None else prompt + completion,
    }


def responses_usage_to_chat(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """
    Rename Responses usage to Chat usage (L{None} stays L{None}).  The
    details objects are present only when the source has them.
    """
    if not isinstance(usage, Mapping):
        return None
    prompt = _int(usage.get("input_tokens"))
    completion = _int(usage.get("output_tokens"))
    total = usage.get("total_tokens")
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _int(total) if total is not None else prompt + completion,
    }
    input_details = usage.get("input_tokens_details")
    if isinstance(input_details, Mapping) and input_details.get("cached_tokens") is not None:
        result["prompt_tokens_details"] = {"cached_tokens": _int(input_details["cached_tokens"])}
    output_details = usage.get("output_tokens_details")
    if isinstance(output_details, Mapping) and output_details.get("reasoning_tokens") is not None:
        result["completion_tokens_details"] = {
            "reasoning_tokens": _int(output_details["reasoning_tokens"])
        }
    return result


# ---------------------------------------------------------------------------
# Responses -> Chat
# ---------------------------------------------------------------------------


def _reasoning_texts(item: Mapping[str, Any]) -> list[str]:
    """
    The non-empty texts of a reasoning item: summaries first, then raw
    reasoning content.
    """
    texts: list[str] = []
    for key, kind in (("summary", "summary_text"), ("content", "reasoning_text")):
        for part in item.get(key) or []:
            if isinstance(part, Mapping) and part.get("type", kind) == kind:
                text = part.get("text")
                if isinstance(text, str) and text:
                    texts.append(text)
    return texts


def chat_call_name(item: Mapping[str, Any]) -> str:
    """
    The Chat name of a Responses C{function_call} item: its C{name},
    flattened with its C{namespace} when it has one (as the tool was when
    it went to a Chat upstream).
    """
    name = str(item.get("name") or "")
    namespace = item.get("namespace")
    return flat_name(namespace, name) if isinstance(namespace, str) and namespace else name


def responses_to_chat_completion(resp: Mapping[str, Any]) -> dict[str, Any]:
    """
    Translate a Responses object into a C{chat.completion}.

    @return: the Chat completion, with id C{chatcmpl-<resp id>}.  Reasoning
        summaries (or raw reasoning text) become the C{reasoning_content}
        extension, joined with a blank line.
    @raise UpstreamError: when the response C{failed} or was C{cancelled}.
    """
    status = resp.get("status")
    if status in ("failed", "cancelled"):
        error = as_mapping(resp.get("error"))
        raise UpstreamError(
            str(error.get("message") or f"The upstream response {status}."),
            code=error.get("code") or "server_error",
        )
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for item in resp.get("output") or []:
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if not isinstance(part, Mapping):
                    continue
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal", "")))
        elif kind == "function_call":
            tool_calls.append(
                {
                    "id": item.get("call_id", ""),
                    "type": "function",
                    "function": {
                        "name": chat_call_name(item),
                        "arguments": item.get("arguments", ""),
                    },
                }
            )
        elif kind == "reasoning":
            reasoning.extend(_reasoning_texts(item))

    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": "".join(refusals) if refusals else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)

    if status == "incomplete":
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        finish = "content_filter" if reason == "content_filter" else "length"
    else:
        finish = "tool_calls" if tool_calls else "stop"

    result: dict[str, Any] = {
        "id": f"chatcmpl-{resp.get('id', '')}",
        "object": "chat.completion",
        "created": _int(resp.get("created_at")),
        "model": resp.get("model", ""),
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    if resp.get("service_tier") is not None:
        result["service_tier"] = resp["service_tier"]
    usage = responses_usage_to_chat(resp.get("usage"))
    if usage is not None:
        result["usage"] = usage
    return result


# ---------------------------------------------------------------------------
# Chat -> Responses
# ---------------------------------------------------------------------------


def item_id(prefix: str, response_id: str, output_index: int) -> str:
    """
    The deterministic id of an output item: C{prefix} (C{msg}, C{fc}, C{rs}
    or C{call}), the response id without its C{resp_}, and the item's
    position in C{output}; e.g. C{msg_abc_0} for C{resp_abc}.
    """
    base = response_id[len("resp_") :] if response_id.startswith("resp_") else response_id
    return f"{prefix}_{base}_{output_index}"


def message_item(id: str, parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    """
    An assistant C{message} output item, with copies of C{parts}
    (C{output_text} and C{refusal}).
    """
    return {
        "id": id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": copy.deepcopy(parts),
    }


def function_call_item(
    id: str, call_id: str, name: str, arguments: str, status: str = "completed",
    namespace: str | None = None,
) -> dict[str, Any]:
    """
    A C{function_call} output item; C{call_id} is the id the client
    answers with, C{arguments} a JSON string, C{namespace} that of a tool
    of a namespace tool.
    """
    item = {
        "id": id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }
    if namespace is not None:
        item["namespace"] = namespace
    return item


def reasoning_item(id: str, summary: list[str]) -> dict[str, Any]:
    """
    A C{reasoning} output item carrying Chat C{reasoning_content} as
    summary text (the form Responses clients display).
    """
    return {
        "id": id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text} for text in summary],
    }


def chat_finish_to_status(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """
    Map a Chat C{finish_reason} to a Responses status.

    @return: C{("completed", None)}, or C{("incomplete", {"reason": ...})}
        for C{length} (C{max_output_tokens}) and C{content_filter}.
    """
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _echo_tools(tools: Any) -> list[Any]:
    """
    The request's C{tools}, in the flat Responses form (a new list).
    """
    if not isinstance(tools, list):
        return []
    result = []
    for tool in tools:
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
            result.append(chat_tool_to_responses_tool(tool))
        else:
            result.append(copy.deepcopy(tool))
    return result


def _echo_text(request: Mapping[str, Any]) -> dict[str, Any]:
    """
    The Responses request's C{text} configuration with a default format:
    C{{"format": ..., "verbosity"?: ...}}.
    """
    text: dict[str, Any] = {"format": {"type": "text"}}
    if request.get("response_format") is not None:
        text["format"] = chat_response_format_to_text_format(request["response_format"])
    given = request.get("text")
    if isinstance(given, Mapping):
        text.update(
            {key: copy.deepcopy(value) for key, value in given.items() if value is not None}
        )
    return text


def response_object(
    *,
    response_id: str,
    created_at: int | float,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    request: Mapping[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete_details: dict[str, Any] | None = None,
    service_tier: str | None = None,
) -> dict[str, Any]:
    """
    A complete, JSON-ready Responses object, echoing (copies of) the
    request's settings as the Responses API does.

    @param status: C{in_progress}, C{completed}, C{incomplete} or C{failed}.
    @param error: C{{code, message}} for a failed response.
    @param incomplete_details: C{{reason}} for an incomplete response.
    @param service_tier: the tier reported by the upstream, if any; else
        the request's.
    """
    req: Mapping[str, Any] = request if request is not None else {}

    def echo(key: str, default: Any = None) -> Any:
        value = req.get(key)
        return copy.deepcopy(value) if value is not None else default

    reasoning = echo("reasoning")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": bool(req.get("background") or False),
        "error": copy.deepcopy(error),
        "incomplete_details": copy.deepcopy(incomplete_details),
        "instructions": echo("instructions"),
        "max_output_tokens": echo("max_output_tokens"),
        "max_tool_calls": echo("max_tool_calls"),
        "model": model,
        "output": copy.deepcopy(output),
        "parallel_tool_calls": bool(echo("parallel_tool_calls", True)),
        "previous_response_id": echo("previous_response_id"),
        "prompt_cache_key": echo("prompt_cache_key"),
        "reasoning": (
            reasoning if isinstance(reasoning, dict) else {"effort": None, "summary": None}
        ),
        "safety_identifier": echo("safety_identifier"),
        "service_tier": service_tier if service_tier is not None else echo("service_tier"),
        "store": bool(echo("store", True)),
        "temperature": echo("temperature"),
        "text": _echo_text(req),
        "tool_choice": echo("tool_choice", "auto"),
        "tools": _echo_tools(req.get("tools")),
        "top_logprobs": echo("top_logprobs"),
        "top_p": echo("top_p"),
        "truncation": echo("truncation", "disabled"),
        "usage": copy.deepcopy(usage),
        "user": echo("user"),
        "metadata": echo("metadata", {}),
    }


def chat_message_text(content: Any) -> str:
    """
    The text of a Chat answer's C{content}: a string, L{None}, or a list of
    text parts (concatenated).
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") in ("text", "output_text")
        )
    return ""


def chat_message_reasoning(message: Mapping[str, Any]) -> str:
    """
    The reasoning text of a Chat message or stream delta: the
    C{reasoning_content} extension, or the C{reasoning} string some servers
    use instead; C{""} when there is none.
    """
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def chat_completion_to_response(
    chat: Mapping[str, Any],
    *,
    response_id: str,
    request: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Translate a C{chat.completion} into a Responses object.

    The output is, in order: a C{reasoning} item (when the message has
    C{reasoning_content}), a C{message} item (when there is text or a
    refusal), and one C{function_call} item per tool call.

    @param chat: the Chat completion (only choice 0 is used).
    @param request: the Responses request, whose settings are echoed.
    @return: the Responses object; it validates as the SDK's C{Response}.
    """
    choices = chat.get("choices") or []
    choice = as_mapping(choices[0] if choices else None)
    message = as_mapping(choice.get("message"))
    output: list[dict[str, Any]] = []

    reasoning = chat_message_reasoning(message)
    if reasoning:
        output.append(reasoning_item(item_id("rs", response_id, len(output)), [reasoning]))

    parts: list[dict[str, Any]] = []
    text = chat_message_text(message.get("content"))
    if text:
        parts.append({"type": "output_text", "text": text, "annotations": []})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        output.append(message_item(item_id("msg", response_id, len(output)), parts))

    req = request if request is not None else {}
    names = NamespaceTable.of(req.get("tools"))
    for call in message.get("tool_calls") or []:
        if not isinstance(call, Mapping):
            continue
        function = as_mapping(call.get("function"))
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        index = len(output)
        namespace, name = names.call(str(function.get("name") or ""))
        output.append(
            function_call_item(
                item_id("fc", response_id, index),
                call.get("id") or item_id("call", response_id, index),
                name,
                arguments,
                namespace=namespace,
            )
        )

    status, incomplete = chat_finish_to_status(choice.get("finish_reason"))
    return response_object(
        response_id=response_id,
        created_at=_int(chat.get("created")),
        model=str(chat.get("model") or req.get("model") or ""),
        status=status,
        output=output,
        usage=chat_usage_to_responses(chat.get("usage")),
        request=request,
        incomplete_details=incomplete,
        service_tier=chat.get("service_tier"),
    )
