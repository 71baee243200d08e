# -*- test-case-name: tests.test_capture_proxy -*-
"""
The upstream side of capture: L{CapturingBackend} wraps a backend and
notes, for each attempt of a captured request, the body sent
(C{outbound_request}) and what came back, teed from the
L{IResponse}'s body as it is delivered: a stream as C{stream_start},
C{stream_chunk}s and C{stream_end}; anything else as one
C{inbound_response}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from llmproxy.backends.base import Backend
from llmproxy.capture.chunks import ChunkCarry
from llmproxy.capture.entries import (
    INBOUND_RESPONSE, OUTBOUND_REQUEST, STREAM_CHUNK, STREAM_END, STREAM_START, Record, pairs,
)
from llmproxy.capture.recorder import CURRENT, Recorder, RequestCapture
from llmproxy.config import ApiKey


class _Attempt:
    """
    What each entry of one attempt repeats.
    """

    def __init__(self, capture: RequestCapture, backend: Backend, model: str | None,
                 key: ApiKey | None) -> None:
        self.capture = capture
        self.clock = capture.recorder.clock
        self.backend = backend.config.name
        self.upstream = backend.config.base_url or backend.config.name
        self.model = model
        self.key_name = key.name if key is not None else None
        capture.attempts += 1
        self.number = capture.attempts

    def record(self, direction: str, inbound: bool, **fields: Any) -> Record:
        source, destination = (self.upstream, "proxy") if inbound else ("proxy", self.upstream)
        return Record(
            direction, self.clock.seconds(), source, destination, backend=self.backend,
            model=self.model, key_name=self.key_name, attempt=self.number, **fields)

    def emit(self, direction: str, inbound: bool, **fields: Any) -> None:
        self.capture.emit(self.record(direction, inbound, **fields))


class _Tee(Protocol):
    """
    Hands the body on to the protocol the exchange gave, noting it.
    """

    def __init__(self, inner: Protocol, attempt: _Attempt, response: IResponse,
                 stream: bool) -> None:
        self.inner = inner
        self.attempt = attempt
        self.response = response
        self.stream = stream
        self.chunks: list[bytes] = []
        capture = attempt.capture
        self.held = ChunkCarry(capture.emit, capture.redactor.raw)

    def makeConnection(self, transport: ITransport) -> None:
        self.inner.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.stream:
            self.held.add(self.attempt.record(STREAM_CHUNK, True, status=self.response.code,
                                              body=data))
        else:
            self.chunks.append(data)
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        completed = reason.check(ResponseDone, PotentialDataLoss) is not None
        end: dict[str, Any] = {"completed": completed}
        if not completed:
            end["error"] = f"{type(reason.value).__name__}: {reason.value}"
        if self.stream:
            self.held.flush()
            self.attempt.emit(STREAM_END, True, status=self.response.code, metadata=end)
        else:
            self.attempt.emit(INBOUND_RESPONSE, True, status=self.response.code,
                              content_type=_content_type(self.response),
                              body=b"".join(self.chunks),
                              headers=pairs(self.response.headers),
                              metadata=end)
        self.inner.connectionLost(reason)


class _TeeResponse(proxyForInterface(IResponse)):  # type: ignore[misc]
    """
    The response, its body delivered through a L{_Tee}.
    """

    def __init__(self, original: IResponse, attempt: _Attempt, stream: bool) -> None:
        super().__init__(original)
        self._attempt = attempt
        self._stream = stream

    def deliverBody(self, protocol: Protocol) -> None:
        self.original.deliverBody(_Tee(protocol, self._attempt, self.original, self._stream))


class CapturingBackend:
    """
    A backend, its traffic noted for the captured requests; the others
    pass straight through.
    """

    def __init__(self, inner: Backend, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder
        self.config = inner.config
        self.dialect = inner.dialect
        self.streams_only = getattr(inner, "streams_only", False)

    def __getattr__(self, name: str) -> Any:
        # What some backend types add (accounts_status, ...).
        return getattr(self.inner, name)

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        capture = CURRENT.get()
        if capture is None:
            return self.inner.send(body, key, stream, timeout)
        model = _model(body)
        if not self.recorder.wants(capture, self.config.name, model):
            return self.inner.send(body, key, stream, timeout)
        capture.admit()
        attempt = _Attempt(capture, self, model, key)
        attempt.emit(OUTBOUND_REQUEST, False, content_type="application/json", body=body,
                     metadata={"stream": stream, "timeout": timeout,
                               "dialect": self.dialect, "type": self.config.type})
        d = self.inner.send(body, key, stream, timeout)

        def answered(response: IResponse) -> IResponse:
            streamed = stream and 200 <= response.code < 300
            if streamed:
                attempt.emit(STREAM_START, True, status=response.code,
                             content_type=_content_type(response),
                             headers=pairs(response.headers))
            return _TeeResponse(response, attempt, streamed)

        return d.addCallback(answered)

    async def models(self) -> list[str]:
        return await self.inner.models()

    def close(self) -> None:
        self.inner.close()


def _model(body: bytes) -> str | None:
    """
    The C{model} of a JSON body, if it has one.
    """
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError, RecursionError):
        return None
    return model if isinstance(model, str) else None


def _content_type(response: IResponse) -> str | None:
    values = response.headers.getRawHeaders(b"content-type")
    return values[-1].decode("latin-1") if values else None


__all__ = ["CapturingBackend"]
