# -*- test-case-name: tests.test_proxy -*-
"""
What differs between the two frontends (Chat Completions and Responses):
how a routed body becomes the backend's bytes, how the backend's answer
becomes the client's, and how an error looks once a stream has started.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Protocol, Sequence

from llmproxy.backends.base import CHAT, RESPONSES
from llmproxy.errors import ProxyError
from llmproxy.routing.reasoning import adapt_chat_for_reasoning, is_reasoning_model
from llmproxy.routing.resolve import Target
from llmproxy.sse import DONE, Event, encode_event, parse_event
from llmproxy.translate import (
    ChatToResponsesStream,
    ResponsesToChatStream,
    chat_completion_to_response,
    chat_to_responses_request,
    responses_to_chat_completion,
    responses_to_chat_request,
)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def stream_error_payload(error: ProxyError) -> dict[str, Any]:
    """
    The C{error} object of an in-band stream error, with its status.
    """
    payload = error.body()["error"]
    payload["status_code"] = error.status
    return payload


class Transform(Protocol):
    """
    A stream transform (see L{llmproxy.backends.relay.StreamTransform})
    that also renders a failure after the stream started.
    """

    def events(self, raw: list[bytes]) -> bytes: ...

    def end(self) -> bytes: ...

    @property
    def finished(self) -> bool: ...

    def error(self, error: ProxyError) -> bytes: ...

    def final(self) -> dict[str, Any] | None:
        """
        The whole answer in the frontend's shape, when the transform built
        one (for the Responses conversation store).
        """


class ChatPassthrough:
    """
    Chat events from a chat upstream: relayed byte for byte.
    """

    def __init__(self) -> None:
        self.finished = False

    def events(self, raw: list[bytes]) -> bytes:
        if b"[DONE]" in raw[-1] and parse_event(raw[-1]) == _DONE_EVENT:
            self.finished = True
        return raw[0] if len(raw) == 1 else b"".join(raw)

    def end(self) -> bytes:
        return b""

    def error(self, error: ProxyError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return encode_event({"error": stream_error_payload(error)}) + DONE

    def final(self) -> dict[str, Any] | None:
        return None


class ResponsesPassthrough:
    """
    Responses events from a Responses upstream: relayed byte for byte; the
    events are counted so an error event can carry the next sequence number.
    """

    def __init__(self) -> None:
        self.count = 0
        self.finished = False

    def events(self, raw: list[bytes]) -> bytes:
        self.count += len(raw)
        if _TERMINAL.search(raw[-1]) and _event_type(raw[-1]) in _RESPONSES_TERMINAL:
            self.finished = True
        return raw[0] if len(raw) == 1 else b"".join(raw)

    def end(self) -> bytes:
        return b""

    def error(self, error: ProxyError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return encode_event(
            {"type": "error", "sequence_number": self.count, "code": error.code or error.type,
             "message": error.message, "param": error.param},
            "error",
        )

    def final(self) -> dict[str, Any] | None:
        return None


_DONE_EVENT = Event("[DONE]")
_TERMINAL = re.compile(rb"response\.(?:completed|incomplete|failed)|\berror\b")
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed",
                                 "error"})


def _event_type(raw: bytes) -> str | None:
    """
    The type of a Responses event: its C{event:} line, else its data's
    C{type}.
    """
    event = parse_event(raw)
    if event is None:
        return None
    if event.event:
        return event.event
    try:
        data = event.json()
    except ValueError:
        return None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def _parsed(raw: list[bytes]) -> list[Any]:
    """
    The JSON payloads of raw events, skipping comments and C{[DONE]};
    a payload that is not JSON is skipped too.
    """
    out = []
    for item in raw:
        event = parse_event(item)
        if event is None or event.data is None or event.done:
            continue
        try:
            out.append(event.json())
        except ValueError:
            continue
    return out


class ResponsesToChat:
    """
    Responses events from the upstream, chat chunks to the client.
    """

    def __init__(self, model: str, include_usage: bool, ident: str, created: int) -> None:
        self.state = ResponsesToChatStream(
            chunk_id=ident, created=created, model=model, include_usage=include_usage
        )

    def events(self, raw: list[bytes]) -> bytes:
        out = []
        for event in _parsed(raw):
            for chunk in self.state.feed(event):
                out.append(encode_event(chunk))
                if "error" in chunk:
                    out.append(DONE)
        if self.state.finished and out and out[-1] != DONE:
            out.append(DONE)
        return b"".join(out)

    def end(self) -> bytes:
        return b"" if self.state.finished else DONE

    @property
    def finished(self) -> bool:
        return self.state.finished

    def error(self, error: ProxyError) -> bytes:
        if self.state.finished:
            return b""
        return ChatPassthrough().error(error)

    def final(self) -> dict[str, Any] | None:
        return None


class ChatToResponses:
    """
    Chat chunks from the upstream, Responses events to the client.
    """

    def __init__(self, response_id: str, created: int, request: Mapping[str, Any]) -> None:
        self.state = ChatToResponsesStream(
            response_id=response_id, created_at=created, request=request
        )
        self.started = False
        self.closed = False
        self.finished = False

    def _encode(self, events: Sequence[Mapping[str, Any]]) -> list[bytes]:
        return [encode_event(e, e["type"]) for e in events]

    def events(self, raw: list[bytes]) -> bytes:
        out = []
        if not self.started:
            self.started = True
            out += self._encode(self.state.start())
        if b"[DONE]" in raw[-1] and parse_event(raw[-1]) == _DONE_EVENT:
            self.finished = True
        for chunk in _parsed(raw):
            if isinstance(chunk, dict) and "error" in chunk:
                self.closed = True
                out += self._encode(self.state.fail(chunk["error"]))
                break
            out += self._encode(self.state.feed(chunk))
        return b"".join(out)

    def end(self) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        head = [] if self.started else self._encode(self.state.start())
        return b"".join(head + self._encode(self.state.finish()))

    def error(self, error: ProxyError) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        head = [] if self.started else self._encode(self.state.start())
        body = {"code": error.code or error.type, "message": error.message}
        return b"".join(head + self._encode(self.state.fail(body)))

    def final(self) -> dict[str, Any] | None:
        return self.state.response if self.closed else None


def prepare_chat(
    target: Target, original: bytes, backend_dialect: str,
    reasoning: Any = None,
) -> tuple[bytes, tuple[str, ...]]:
    """
    The bytes to send a backend for a chat-frontend target, and the names
    of the parameters removed on the way.
    """
    body: Mapping[str, Any] = target.body
    dropped: tuple[str, ...] = ()
    changed = target.changed
    if is_reasoning_model(target.model, reasoning):
        adapted = adapt_chat_for_reasoning(body, target.model, reasoning)
        if adapted.dropped or adapted.renamed or adapted.body != body:
            body, dropped, changed = adapted.body, adapted.dropped, True
    if backend_dialect == RESPONSES:
        translated = chat_to_responses_request(body)
        return _dumps(translated.body), dropped + translated.dropped
    return (_dumps(body) if changed else original), dropped


def prepare_responses(
    target: Target, original: bytes, backend_dialect: str,
    reasoning: Any = None, history: Sequence[Mapping[str, Any]] | None = (),
) -> tuple[bytes, tuple[str, ...]]:
    """
    The bytes to send a backend for a responses-frontend target.

    @param history: the conversation C{previous_response_id} names, or
        L{None} when llmproxy does not know it (then only a Responses
        backend, which may have stored it, can serve the request).
    """
    if backend_dialect == RESPONSES:
        return (_dumps(target.body) if target.changed else original), ()
    if history is None:
        previous = target.body.get("previous_response_id")
        raise ProxyError(
            f"Previous response with id '{previous}' not found.", status=404,
            type="invalid_request_error", param="previous_response_id",
            code="previous_response_not_found",
        )
    translated = responses_to_chat_request(target.body, history)
    body = translated.body
    dropped = translated.dropped
    if is_reasoning_model(target.model, reasoning):
        adapted = adapt_chat_for_reasoning(body, target.model, reasoning)
        body, dropped = adapted.body, dropped + adapted.dropped
    return _dumps(body), dropped


def convert_body(
    frontend: str, backend_dialect: str, body: bytes, *, response_id: str,
    request: Mapping[str, Any],
) -> bytes:
    """
    Convert a whole successful response body between dialects.
    """
    if frontend == backend_dialect:
        return body
    data = json.loads(body)
    if frontend == CHAT:
        return _dumps(responses_to_chat_completion(data))
    return _dumps(chat_completion_to_response(data, response_id=response_id, request=request))
