# -*- test-case-name: tests.test_mock -*-
"""
The built-in C{mock} backend: deterministic Chat Completions answers for
demos, with no network and no key.

It echoes the last user message.  With C{tools} (and C{tool_choice} not
C{"none"}) it calls the first tool (or the forced one) with the echo as
C{{"input": ...}}; after a tool result it reports that result.  With a JSON
C{response_format} the content is a JSON object.  Streams are paced a few
milliseconds apart, so they look like a model typing.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IResponse

from llmproxy.dialects import CHAT
from llmproxy.backends.memory import MemoryResponse
from llmproxy.backends.registry import BackendContext, BackendType
from llmproxy.config import ApiKey, BackendConfig, BackendKind
from llmproxy.errors import InvalidRequest
from llmproxy.sse import DONE, encode_event

MOCK_MODELS = ("mock-echo",)
STREAM_DELAY = 0.005


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + words[-1:]


def _tool_call(body: Mapping[str, Any], echo: str) -> dict[str, Any] | None:
    """
    The call the mock makes, if it makes one.
    """
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    if not tools or choice == "none" or (messages and messages[-1].get("role") == "tool"):
        return None
    name = tools[0].get("function", {}).get("name", "tool")
    if isinstance(choice, dict):
        name = choice.get("function", {}).get("name", name)
    return {
        "id": "call_mock_0",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps({"input": echo})},
    }


def reply_for(body: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """
    The mock's answer to a chat body: content text, or a tool call.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) for m in messages
    ):
        raise InvalidRequest("messages must be a non-empty list of objects", param="messages")
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {}
    )
    echo = _text_of(last_user.get("content"))
    call = _tool_call(body, echo)
    if call is not None:
        return None, call
    if messages[-1].get("role") == "tool":
        echo = "Tool result: " + _text_of(messages[-1].get("content"))
    fmt = (body.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        return json.dumps({"echo": echo}), None
    return echo, None


def _usage(body: Mapping[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) for m in body.get("messages", []) if isinstance(m, dict))
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


class MockBackend:
    """
    A backend that answers from memory, through the same response and
    relay machinery as the HTTP backends.
    """

    dialect = CHAT
    #: It answers whole bodies as well as streams.
    streams_only = False

    def __init__(self, config: BackendConfig, clock: IReactorTime) -> None:
        self.config = config
        self.clock = clock
        self._counter = 0

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        try:
            return succeed(self._respond(json.loads(body), stream))
        except InvalidRequest as e:
            error = e
        except (AttributeError, TypeError, ValueError) as e:
            # Like a real upstream, the mock answers malformed fields with a 400.
            error = InvalidRequest(f"The mock backend cannot read this request ({e})")
        return succeed(MemoryResponse(400, {b"content-type": b"application/json"},
                                      [error.to_json()], self.clock))

    def _respond(self, request: Mapping[str, Any], stream: bool) -> MemoryResponse:
        text, call = reply_for(request)
        self._counter += 1
        ident = f"chatcmpl-mock{self._counter}"
        created = int(self.clock.seconds())
        model = request.get("model", "mock-echo")
        if stream:
            chunks = self._chunks(ident, created, model, text, call, request)
            return MemoryResponse(200, {b"content-type": b"text/event-stream"},
                                  chunks, self.clock, STREAM_DELAY)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if call is not None:
            message["tool_calls"] = [call]
        completion = {
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if call else "stop"}],
            "usage": _usage(request, text or ""),
        }
        return MemoryResponse(200, {b"content-type": b"application/json"},
                              [json.dumps(completion).encode()], self.clock)

    def _chunks(
        self, ident: str, created: int, model: str, text: str | None,
        call: dict[str, Any] | None, request: Mapping[str, Any],
    ) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return encode_event({
                "id": ident, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}],
            })

        out = [chunk({"role": "assistant", "content": "" if call is None else None, "refusal": None})]
        if call is not None:
            args = call["function"]["arguments"]
            out.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"],
                                                           "arguments": ""}}]}))
            for piece in (args[: len(args) // 2], args[len(args) // 2:]):
                out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            out.append(chunk({}, "tool_calls"))
        else:
            out.extend(chunk({"content": word}) for word in _words(text or ""))
            out.append(chunk({}, "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            out.append(encode_event({
                "id": ident, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [], "usage": _usage(request, text or ""),
            }))
        out.append(DONE)
        return out

    async def models(self) -> list[str]:
        return list(self.config.models or MOCK_MODELS)

    def close(self) -> None:
        pass


def build(config: BackendConfig, context: BackendContext) -> MockBackend:
    return MockBackend(config, context.clock)


#: C{type: mock}: no URL, no key; part of the demo configuration.
MOCK = BackendType(BackendKind("mock", uses_url=False, demo=True), build)
