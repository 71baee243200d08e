# -*- test-case-name: tests.test_testing -*-
"""
Canned request and answer bodies, event streams, SSE readers and
configurations for tests.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence


from llmproxy.backends import REGISTRY
from llmproxy.config import Config, Overrides, build_config
from llmproxy.sse import DONE, Event, SSEParser, encode_event


#: The C{created} time of every canned body.
CREATED = 1700000000


def chat_request(text: str = "hi", model: str = "gpt-4o", **fields: Any) -> dict[str, Any]:
    """
    A Chat Completions request: one user message, then C{fields}.
    """
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def chat_completion(model: str, text: str, ident: str = "chatcmpl-fake") -> dict[str, Any]:
    """
    A minimal, valid chat.completion.
    """
    return {
        "id": ident, "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split()),
                  "total_tokens": 3 + len(text.split())},
    }


def chat_tool_completion(model: str, name: str, arguments: str,
                         call_id: str = "call_1") -> dict[str, Any]:
    """
    A chat.completion whose answer is one call of tool C{name}.
    """
    answer = chat_completion(model, "")
    answer["choices"][0]["message"] = {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": arguments}}]}
    answer["choices"][0]["finish_reason"] = "tool_calls"
    return answer


def chat_chunk(model: str, delta: Mapping[str, Any], finish: str | None = None,
               ident: str = "chatcmpl-fake", created: int = CREATED) -> dict[str, Any]:
    """
    One chat.completion.chunk: a single choice carrying C{delta}.
    """
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": dict(delta), "logprobs": None,
                         "finish_reason": finish}]}


def chat_chunks(model: str, pieces: Sequence[str], ident: str = "chatcmpl-fake",
                usage: bool = False) -> list[bytes]:
    """
    The SSE events of a streamed chat completion of C{pieces}, C{[DONE]}
    included; with C{usage}, a final usage chunk (no choices) before it.
    """
    out = [chat_chunk(model, {"role": "assistant", "content": ""}, ident=ident)]
    out += [chat_chunk(model, {"content": p}, ident=ident) for p in pieces]
    out.append(chat_chunk(model, {}, "stop", ident=ident))
    if usage:
        out.append({**chat_chunk(model, {}, ident=ident), "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": len(pieces),
                              "total_tokens": 3 + len(pieces)}})
    return [encode_event(c) for c in out] + [DONE]


def chat_tool_chunks(model: str, name: str, arguments: Sequence[str], call_id: str = "call_1",
                     ident: str = "chatcmpl-fake") -> list[bytes]:
    """
    The SSE events of a streamed chat completion that calls tool C{name},
    its arguments in the given pieces, C{[DONE]} included.
    """
    out = [chat_chunk(model, {"role": "assistant", "content": None}, ident=ident),
           chat_chunk(model, {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                               "function": {"name": name, "arguments": ""}}]},
                      ident=ident)]
    out += [chat_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                       ident=ident) for piece in arguments]
    out.append(chat_chunk(model, {}, "tool_calls", ident=ident))
    return [encode_event(c) for c in out] + [DONE]


def responses_object(model: str, text: str, ident: str = "resp_fake") -> dict[str, Any]:
    """
    A minimal, valid Responses API response object.
    """
    return {
        "id": ident, "object": "response", "created_at": CREATED, "model": model,
        "status": "completed", "error": None, "incomplete_details": None,
        "instructions": None, "metadata": {}, "parallel_tool_calls": True,
        "temperature": None, "tool_choice": "auto", "tools": [], "top_p": None,
        "output": [{"type": "message", "id": "msg_fake", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": len(text.split()),
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 3 + len(text.split())},
    }


def responses_events(model: str, pieces: Sequence[str], ident: str = "resp_fake") -> list[bytes]:
    """
    The SSE events of a streamed Responses answer of C{pieces}.
    """
    text = "".join(pieces)
    final = responses_object(model, text, ident)
    item = {"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant",
            "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "part": part},
    ]
    events += [{"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0,
                "content_index": 0, "delta": p, "logprobs": []} for p in pieces]
    events += [
        {"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "text": text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
    ]
    return _response_stream(final, events)


def function_call_response(model: str, name: str, arguments: str, call_id: str = "call_1",
                           ident: str = "resp_fake") -> dict[str, Any]:
    """
    A Responses API response object whose output is one call of tool
    C{name} (item id C{fc_1}).
    """
    data = responses_object(model, "", ident)
    data["output"] = [{"type": "function_call", "id": "fc_1", "call_id": call_id,
                       "name": name, "arguments": arguments, "status": "completed"}]
    return data


def function_call_events(model: str, name: str, arguments: Sequence[str],
                         call_id: str = "call_1", ident: str = "resp_fake") -> list[bytes]:
    """
    The SSE events of a streamed Responses answer that calls tool C{name},
    its arguments in the given pieces.
    """
    final = function_call_response(model, name, "".join(arguments), call_id, ident)
    call = final["output"][0]
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**call, "arguments": "", "status": "in_progress"}},
    ]
    events += [{"type": "response.function_call_arguments.delta", "item_id": call["id"],
                "output_index": 0, "delta": piece} for piece in arguments]
    events += [
        {"type": "response.function_call_arguments.done", "item_id": call["id"],
         "output_index": 0, "name": name, "arguments": call["arguments"]},
        {"type": "response.output_item.done", "output_index": 0, "item": call},
    ]
    return _response_stream(final, events)


def _response_stream(final: Mapping[str, Any], middle: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """
    C{middle} between the C{created}/C{in_progress} events and the
    C{completed} one of response C{final}, numbered and encoded.
    """
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    events = [{"type": "response.created", "response": started},
              {"type": "response.in_progress", "response": started},
              *middle,
              {"type": "response.completed", "response": final}]
    return [encode_event({**e, "sequence_number": i}, e["type"]) for i, e in enumerate(events)]


def sse_events(body: bytes) -> list[Event]:
    """
    Every event of a whole SSE body (a last one without its blank line
    included); comments are left out.
    """
    parser = SSEParser()
    return parser.feed(body) + parser.close()


def sse_data(body: bytes) -> list[str]:
    """
    The data of every event of a whole SSE body that has data, C{[DONE]}
    included.
    """
    return [e.data for e in sse_events(body) if e.data is not None]


def sse_json(body: bytes) -> list[Any]:
    """
    The data of every event of a whole SSE body decoded as JSON, but for
    C{[DONE]}; raises L{ValueError} if any is not JSON.
    """
    return [json.loads(data) for data in sse_data(body) if data != "[DONE]"]


def backend_data(base_url: str, *keys: str, type: str = "openai",
                 **fields: Any) -> dict[str, Any]:
    """
    One backend's configuration: its type, its base URL, its C{keys} (none:
    keyless, or the environment's for C{openai}) and other C{fields}.
    """
    data: dict[str, Any] = {"type": type, "base_url": base_url}
    if keys:
        data["api_keys"] = list(keys)
    data.update(fields)
    return data


def config_data(backends: Mapping[str, Mapping[str, Any]], default: str | None = None,
                **extra: Any) -> dict[str, Any]:
    """
    A configuration file's data: C{backends} by name (the first is the
    default backend unless C{default} names another) and C{extra} top-level
    keys.
    """
    return {"default_backend": default or next(iter(backends), None),
            "backends": {name: dict(b) for name, b in backends.items()}, **extra}


def openai_config(base_url: str, keys: Sequence[str] = ("sk-test-1",),
                  **extra: Any) -> dict[str, Any]:
    """
    A configuration with one C{openai} backend at C{base_url}, with C{keys}.
    """
    return config_data({"openai": backend_data(base_url, *keys)}, **extra)


def make_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                source: str = "test.yaml", **overrides: Any) -> Config:
    """
    The L{Config} for C{data}, with command-line C{overrides}, reading
    C{environ} only (never the process's environment).
    """
    return build_config(data, Overrides(**overrides), environ or {}, source=source,
                        kinds=REGISTRY.kinds)
