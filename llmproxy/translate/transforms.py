# -*- test-case-name: tests.test_proxy,tests.test_responses_api -*-
"""
Stream transforms: what the client receives for the upstream's raw SSE
events, per (frontend, backend) dialect pair, and how a failure looks once a
stream has started (the one place that knows the in-band error of each
dialect).  I/O-free: bytes in, bytes out.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Protocol, Sequence

from llmproxy.dialects import CHAT
from llmproxy.errors import ProxyError
from llmproxy.sse import DONE, Event, encode_event, parse_event
from llmproxy.translate.chat_to_responses import ChatToResponsesStream
from llmproxy.translate.responses_to_chat import ResponsesToChatStream


class BadStream(Exception):
    """
    The upstream's stream is not a valid answer: an event whose data is not
    a JSON object (or not UTF-8), no event before the end marker, or an end
    without the dialect's final event.  Its message says which, for the
    client.
    """


def _plain(item: bytes) -> bool:
    """
    Whether a raw event has the shape of nearly every upstream event: one
    JSON object on one C{data:} line (after one C{event:} line, for
    Responses), in ASCII.  Such events are taken as JSON without parsing
    them (a few string scans, about a tenth of a parse); any other is
    parsed.
    """
    if not item.endswith(b"}\n\n") or b"\r" in item or not item.isascii():
        return False
    if item.startswith(b"data: {"):
        return item.count(b"\n") == 2
    if item.startswith(b"event: "):
        return item.startswith(b"data: {", item.find(b"\n") + 1) and item.count(b"\n") == 3
    return False


#: What L{_kind} says of an event.
_NOTHING, _DATA, _END = 0, 1, 2


def _kind(item: bytes) -> int:
    """
    Whether a raw event carries data (a JSON object), is C{data: [DONE]}
    or carries nothing (comments, a lone C{event:}); cheap for the usual
    shape.

    @raise BadStream: for data that is not a JSON object, or bytes that are
        not UTF-8.
    """
    if _plain(item):
        return _DATA
    try:
        item.decode("utf-8")
    except UnicodeDecodeError:
        raise BadStream("upstream sent an event that is not UTF-8")
    event = parse_event(item)
    if event is None or event.data is None:
        return _NOTHING
    if event.done:
        return _END
    _object(event)
    return _DATA


def _object(event: Event) -> dict[str, Any]:
    """
    An event's data, which must be a JSON object.

    @raise BadStream: when it is not.
    """
    try:
        data = event.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BadStream("upstream sent an event whose data is not a JSON object")
    return data


def stream_error_payload(error: ProxyError) -> dict[str, Any]:
    """
    The C{error} object of an in-band stream error, with its status.
    """
    payload = error.body()["error"]
    payload["status_code"] = error.status
    return payload


class Transform(Protocol):
    """
    A stream transform (see L{llmproxy.exchange.relay.StreamTransform})
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


class Wrapped:
    """
    A transform that relays through another, unchanged; a subclass
    overrides what it watches on the way.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: Transform) -> None:
        self.inner = inner

    def events(self, raw: list[bytes]) -> bytes:
        return self.inner.events(raw)

    def end(self) -> bytes:
        return self.inner.end()

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def error(self, error: ProxyError) -> bytes:
        return self.inner.error(error)

    def final(self) -> dict[str, Any] | None:
        return self.inner.final()


class _Passthrough:
    """
    Events relayed byte for byte.  A subclass notices the event that ends
    its dialect's stream, and renders its dialect's in-band error.
    """

    #: What the client is told when the stream ends without its final event.
    missing = "the stream's final event"

    def __init__(self) -> None:
        self.finished = False

    def end(self) -> bytes:
        if not self.finished:
            raise BadStream(f"upstream stream ended without {self.missing}")
        return b""

    def error(self, error: ProxyError) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        return self._error_event(error)

    def _error_event(self, error: ProxyError) -> bytes:
        raise NotImplementedError

    def final(self) -> dict[str, Any] | None:
        return None


#: A chat chunk that finishes its choice (C{"finish_reason": "stop"}, ...).
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')


#: How an upstream asked for usage ends every other chunk (OpenAI's layout).
_NULL_USAGE = b',"usage":null}\n\n'
#: The same, spaced otherwise.
_NULL_USAGE_TAIL = re.compile(rb',\s*"usage"\s*:\s*null(\s*}\s*)\Z')
_USAGE = b'"usage"'


def without_usage(item: bytes) -> bytes:
    """
    A chat event as the upstream would have sent it had nobody asked for
    the stream's usage: the usage-only chunk (no choices) is C{b""}, and a
    C{"usage": null} ending a chunk is taken out.  Only a bytes check for
    the events that name no usage.
    """
    if _USAGE not in item:
        return item
    if item.endswith(_NULL_USAGE):
        return item[:-len(_NULL_USAGE)] + b"}\n\n"
    tail = _NULL_USAGE_TAIL.search(item)
    if tail is not None:
        return item[:tail.start()] + tail.group(1)
    event = parse_event(item)
    if event is None or event.data is None or event.done:
        return item
    data = _object(event)
    if data.get("choices") == [] and isinstance(data.get("usage"), dict):
        return b""
    return item


class ChatPassthrough(_Passthrough):
    """
    Chat events from a chat upstream.  A C{[DONE]} before any chunk is an
    empty answer, not a stream.

    @param strip_usage: llmproxy asked for the stream's usage on the
        client's behalf (L{llmproxy.adapt.usage}): the client gets its
        stream without it (L{without_usage}).
    """

    missing = "data: [DONE]"

    def __init__(self, strip_usage: bool = False) -> None:
        super().__init__()
        self.seen = False
        self.answered = False
        self.strip_usage = strip_usage

    def events(self, raw: list[bytes]) -> bytes:
        if self.strip_usage:
            self._check(raw)
            return b"".join(map(without_usage, raw))
        self._check(raw)
        return raw[0] if len(raw) == 1 else b"".join(raw)

    def _check(self, raw: list[bytes]) -> None:
        """
        Note the answer's progress (its first chunk, its C{finish_reason},
        its end).

        @raise BadStream: for an end before the first chunk.
        """
        for item in raw:
            kind = _kind(item)
            if kind == _DATA:
                self.seen = True
                if not self.answered and _FINISHED.search(item):
                    self.answered = True
            elif kind == _END:
                if not self.seen:
                    raise BadStream("upstream stream ended before its first event")
                self.finished = True

    def end(self) -> bytes:
        """
        A stream whose answer finished (a C{finish_reason} came) but that
        closed without C{[DONE]} is whole: the client gets the C{[DONE]}.
        """
        if not self.finished and self.answered:
            self.finished = True
            return DONE
        return super().end()

    def _error_event(self, error: ProxyError) -> bytes:
        return encode_event({"error": stream_error_payload(error)}) + DONE


#: The failure codes a Responses client tells apart (the Codex CLI waits out
#: C{rate_limit_exceeded} by the "try again in" hint of its message, and
#: shows the others); any other failure is a C{server_error}.
_FAILED_CODES = {"context_length_exceeded": "context_length_exceeded",
                 "insufficient_quota": "insufficient_quota",
                 "quota_exceeded": "insufficient_quota",
                 "rate_limit_exceeded": "rate_limit_exceeded"}


def failed_error(error: ProxyError) -> dict[str, str]:
    """
    The C{error} of a C{response.failed} event for C{error}.
    """
    code = _FAILED_CODES.get(error.code or "", "server_error")
    message = error.message
    retry = error.headers.get("retry-after")
    if code == "rate_limit_exceeded" and retry and "try again in" not in message.lower():
        message = f"{message}. Please try again in {retry}s."
    return {"code": code, "message": message}


class ResponsesPassthrough(_Passthrough):
    """
    Responses events from a Responses upstream.  The events are counted,
    and the upstream's response object (from its first event) kept, so a
    failure after the stream started is one more C{response.failed} of the
    same response.

    @param response_id: the id of the failed response when the upstream
        sent none (the stream was started by keepalives alone).
    """

    missing = "response.completed"

    def __init__(self, response_id: str = "resp_failed") -> None:
        super().__init__()
        self.count = 0
        self.response: dict[str, Any] = {"id": response_id, "object": "response",
                                         "created_at": 0, "status": "in_progress",
                                         "model": None, "output": []}
        self._known = False
        self._final: dict[str, Any] | None = None

    def events(self, raw: list[bytes]) -> bytes:
        self.count += len(raw)
        out = raw
        for index, item in enumerate(raw):
            if _kind(item) == _DATA and not self._known:
                self._remember(item)
            if _terminal(item):
                self.finished = True
                kind = _event_type(item)
                if kind == "error":
                    position = self.count - len(raw) + index
                    out = raw[:index] + [self._failed(item, position)] + raw[index + 1:]
                elif kind == "response.completed":
                    self._completed(item)
        return out[0] if len(out) == 1 else b"".join(out)

    def _completed(self, item: bytes) -> None:
        """
        Keep the completed response, for L{final}.
        """
        event = parse_event(item)
        response = _object(event).get("response") if event is not None else None
        if isinstance(response, dict) and response.get("status") == "completed":
            self._final = response

    def final(self) -> dict[str, Any] | None:
        return self._final

    def _failed(self, item: bytes, position: int) -> bytes:
        """
        The upstream's bare C{error} event, as the C{response.failed} of its
        response (what a client such as Codex reads; the event's own
        sequence number is kept).
        """
        event = parse_event(item)
        data = _object(event) if event is not None else {}
        nested = data.get("error")
        detail: dict[str, Any] = nested if isinstance(nested, dict) else data
        code = detail.get("code")
        error = ProxyError(str(detail.get("message") or "The upstream stream failed."),
                           code=code if isinstance(code, str) else None)
        response = {**self.response, "status": "failed", "error": failed_error(error)}
        number = data.get("sequence_number")
        if not isinstance(number, int):
            number = position
        return encode_event({"type": "response.failed", "sequence_number": number,
                             "response": response}, "response.failed")

    def _remember(self, item: bytes) -> None:
        event = parse_event(item)
        response = _object(event).get("response") if event is not None else None
        if isinstance(response, dict):
            self.response, self._known = dict(response), True

    def _error_event(self, error: ProxyError) -> bytes:
        response = {**self.response, "status": "failed", "error": failed_error(error)}
        return encode_event({"type": "response.failed", "sequence_number": self.count,
                             "response": response}, "response.failed")


_DONE_EVENT = Event("[DONE]")
_TERMINAL = re.compile(rb"response\.(?:completed|incomplete|failed)|\berror\b")
_RESPONSES_TERMINAL_NAMES = frozenset({b"response.completed", b"response.incomplete",
                                       b"response.failed", b"error"})
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed",
                                 "error"})


def _terminal(item: bytes) -> bool:
    """
    Whether a raw Responses event ends the stream; its C{event:} line says
    so when it leads, as it does upstream.
    """
    if item.startswith(b"event: ") and b"\r" not in item:
        return item[7:item.find(b"\n")] in _RESPONSES_TERMINAL_NAMES
    return bool(_TERMINAL.search(item)) and _event_type(item) in _RESPONSES_TERMINAL


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


def _parsed(raw: list[bytes]) -> list[dict[str, Any]]:
    """
    The JSON payloads of raw events, skipping comments and C{[DONE]}.

    @raise BadStream: for a payload that is not a JSON object.
    """
    out = []
    for item in raw:
        event = parse_event(item)
        if event is None or event.data is None or event.done:
            continue
        out.append(_object(event))
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
        if not self.state.finished:
            raise BadStream("upstream stream ended without response.completed")
        return b""

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
        chunks = _parsed(raw)
        done = b"[DONE]" in raw[-1] and parse_event(raw[-1]) == _DONE_EVENT
        out = []
        if not self.started:
            if not chunks:
                # Comments before the first chunk are no answer yet; an end
                # marker before it is an empty answer.
                if done:
                    raise BadStream("upstream stream ended before its first event")
                return b""
            self.started = True
            out += self._encode(self.state.start())
        self.finished = self.finished or done
        for chunk in chunks:
            if isinstance(chunk.get("error"), dict):
                self.closed = True
                out += self._encode(self.state.fail(chunk["error"]))
                break
            out += self._encode(self.state.feed(chunk))
        return b"".join(out)

    def end(self) -> bytes:
        if self.closed:
            return b""
        if not self.finished:
            # Never a response.completed for an answer that was cut.
            raise BadStream("upstream stream ended without data: [DONE]")
        self.closed = True
        head = [] if self.started else self._encode(self.state.start())
        return b"".join(head + self._encode(self.state.finish()))

    def error(self, error: ProxyError) -> bytes:
        if self.closed:
            return b""
        self.closed = True
        head = [] if self.started else self._encode(self.state.start())
        return b"".join(head + self._encode(self.state.fail(failed_error(error))))

    def final(self) -> dict[str, Any] | None:
        return self.state.response if self.closed else None


def passthrough(dialect: str, response_id: str = "resp_failed",
                strip_usage: bool = False) -> Transform:
    """
    The byte-for-byte transform of C{dialect}; its C{error} renders that
    dialect's in-band error (for Responses, a C{response.failed} of a
    response with C{response_id} when the upstream named none).

    @param strip_usage: see L{ChatPassthrough}.
    """
    if dialect == CHAT:
        return ChatPassthrough(strip_usage)
    return ResponsesPassthrough(response_id)


def in_band_error(dialect: str, error: ProxyError, response_id: str = "resp_failed") -> bytes:
    """
    The bytes that end a started C{dialect} stream with C{error}.
    """
    return passthrough(dialect, response_id).error(error)
