# -*- test-case-name: tests.test_capture_proxy -*-
"""
The client side of capture: the site's requests, when capture is on, are
L{CapturingRequest}s (a subclass made by L{request_factory}, so requests
pay nothing while capture is off).  Each notes the body it received
(C{inbound_request}) and what it sent back: an event stream as
C{stream_start}, C{stream_chunk}s and C{stream_end}, anything else as one
C{outbound_response}; and it holds its L{RequestCapture} in
L{CURRENT} while it is processed, for the exchange it starts.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.python.failure import Failure

from llmproxy.capture.chunks import ChunkCarry
from llmproxy.capture.entries import (
    INBOUND_REQUEST, OUTBOUND_RESPONSE, STREAM_CHUNK, STREAM_END, STREAM_START, Record, pairs,
)
from llmproxy.capture.recorder import CURRENT, Recorder, RequestCapture
from llmproxy.frontends.site import ProxyRequest

#: The headers that name a request's session, in order of preference.
SESSION_HEADERS = (b"session_id", b"x-session-id")


class CapturingRequest(ProxyRequest):
    """
    A request whose traffic is captured; C{recorder} is set on the
    subclass L{request_factory} makes.
    """

    recorder: Recorder
    capture: RequestCapture | None = None
    _streamed = False
    _ended = False
    _sent: list[bytes] | None = None
    _chunks: ChunkCarry | None = None

    def process(self) -> None:
        body = b""
        if self.content is not None:
            self.content.seek(0)
            body = self.content.read()
            self.content.seek(0)
        fields = _fields(body)
        capture = self.capture = self.recorder.begin(
            self._session(fields), _text(fields.get("model")), self._bearers())
        if capture is None:
            super().process()
            return
        capture.emit(Record(
            INBOUND_REQUEST, self.recorder.clock.seconds(), "client", "proxy",
            model=capture.model, content_type=self._header(b"content-type"), body=body,
            headers=pairs(self.requestHeaders),
            metadata={"method": self.method.decode("latin-1"),
                      "path": self.uri.decode("latin-1")}))
        token = CURRENT.set(capture)
        try:
            super().process()
        finally:
            CURRENT.reset(token)

    def write(self, data: bytes) -> None:
        capture = self.capture
        if capture is not None and data:
            self._tee(capture, data)
        super().write(data)

    def finish(self) -> None:
        if self.capture is not None and not self._ended:
            self._end(self.capture, None)
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        if self.capture is not None and not self._ended and not self.finished:
            self._end(self.capture, f"the client left: {type(reason.value).__name__}")
        super().connectionLost(reason)

    def _tee(self, capture: RequestCapture, data: bytes) -> None:
        if self._sent is None and not self._streamed:
            if (self._reply_header(b"content-type") or "").startswith("text/event-stream"):
                self._streamed = True
                self._chunks = ChunkCarry(capture.emit, capture.redactor.raw)
                capture.emit(self._out(STREAM_START))
            else:
                self._sent = []
        if self._chunks is not None:
            self._chunks.add(self._out(STREAM_CHUNK, body=data, headers=False))
        else:
            assert self._sent is not None
            self._sent.append(data)

    def _end(self, capture: RequestCapture, error: str | None) -> None:
        self._ended = True
        metadata: dict[str, Any] = {"completed": error is None}
        if error is not None:
            metadata["error"] = error
        if self._chunks is not None:
            self._chunks.flush()
            capture.emit(self._out(STREAM_END, headers=False, metadata=metadata))
        else:
            capture.emit(self._out(OUTBOUND_RESPONSE, body=b"".join(self._sent or ()),
                                   metadata=metadata))

    def _out(self, direction: str, body: bytes | None = None, headers: bool = True,
             metadata: dict[str, Any] | None = None) -> Record:
        return Record(
            direction, self.recorder.clock.seconds(), "proxy", "client", status=self.code,
            model=self.capture.model if self.capture else None,
            content_type=self._reply_header(b"content-type"), body=body,
            headers=pairs(self.responseHeaders) if headers else [],
            metadata=metadata or {})

    def _header(self, name: bytes) -> str | None:
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1].decode("latin-1") if values else None

    def _reply_header(self, name: bytes) -> str | None:
        values = self.responseHeaders.getRawHeaders(name)
        return values[-1].decode("latin-1") if values else None

    def _session(self, fields: dict[str, Any]) -> str | None:
        for name in SESSION_HEADERS:
            if (value := self._header(name)) is not None:
                return value
        return _text(fields.get("session_id")) or _text(fields.get("prompt_cache_key"))

    def _bearers(self) -> list[str]:
        found = []
        for value in self.requestHeaders.getRawHeaders(b"authorization") or ():
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            found.append(token.strip() if scheme.lower() == "bearer" else value.decode("latin-1"))
        return found


def request_factory(recorder: Recorder) -> type[CapturingRequest]:
    """
    The site's request class for C{recorder}.
    """
    return type("CapturingRequest", (CapturingRequest,), {"recorder": recorder})


def _fields(body: bytes) -> dict[str, Any]:
    if not body.lstrip().startswith(b"{"):
        return {}
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return fields if isinstance(fields, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


__all__ = ["CapturingRequest", "SESSION_HEADERS", "request_factory"]
