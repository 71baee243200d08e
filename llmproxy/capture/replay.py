# -*- test-case-name: tests.test_capture_replay -*-
"""
The captured upstream answers, served again: L{ReplayUpstream} is a fake
OpenAI upstream answering each request with the captured answer of the
attempt that sent the same body (method, path and a digest of the body's
JSON), or else with the next unused captured answer of the request's
session (a C{prompt_cache_key}, say), or else of any, in capture order.

Whole answers come back with their status, content type and payload;
streams chunk by chunk, with their captured pacing unless C{fast}, cut
where the capture shows they broke; an attempt that got no answer is a
connection that stalls (C{timeout}) or drops (any other outcome).

Whole JSON answers are written from their captured (parsed) payload, so
their bytes may differ from the original's in whitespace only; streams are
byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, cast

from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from llmproxy.capture.entries import (
    ATTEMPT, INBOUND_RESPONSE, OUTBOUND_REQUEST, STREAM_CHUNK, STREAM_END, STREAM_START,
)
from llmproxy.capture.timeline import Captured, read_requests

#: The path each dialect's requests go to, under a backend's base URL.
PATHS = {"chat": "/chat/completions", "responses": "/responses"}


@dataclass
class CannedAnswer:
    """
    One attempt's captured answer.

    @ivar status: L{None} when the attempt got no answer.
    @ivar chunks: for a stream, each chunk with the seconds since the
        previous one; L{None} for a whole answer.
    """

    path: str
    digest: str | None
    status: int | None
    content_type: str | None = None
    body: bytes = b""
    chunks: list[tuple[float, bytes]] | None = None
    completed: bool = True
    outcome: str | None = None
    model: str | None = None
    session: str | None = None
    used: bool = field(default=False, compare=False)


def body_digest(payload: Any) -> str:
    """
    A digest of a JSON body, whatever its spacing and key order.
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def payload_bytes(payload: Any) -> bytes:
    """
    A captured payload as bytes again.
    """
    if payload is None:
        return b""
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload).encode("utf-8")


def canned(requests: Iterable[Captured]) -> list[CannedAnswer]:
    """
    Every attempt's answer, in capture order.
    """
    answers = []
    for captured in requests:
        for number in captured.attempts():
            answer = _attempt_answer(captured, number)
            if answer is not None:
                answers.append(answer)
    return answers


def _attempt_answer(captured: Captured, number: int) -> CannedAnswer | None:
    side = captured.side(False, number)
    sent = next((e for e in side if e["direction"] == OUTBOUND_REQUEST), None)
    if sent is None:
        return None
    outcome = next((e["metadata"].get("outcome") for e in captured.entries
                    if e["direction"] == ATTEMPT and e.get("attempt") == number), None)
    answer = CannedAnswer(
        PATHS.get(sent["metadata"].get("dialect"), "/chat/completions"),
        body_digest(sent["payload"]) if sent.get("payload") is not None else None,
        None, outcome=outcome, model=sent.get("model"), session=captured.session_id)
    for e in side:
        d = e["direction"]
        if d == INBOUND_RESPONSE:
            answer.status, answer.content_type = e["status"], e["content_type"]
            answer.body = payload_bytes(e.get("payload"))
        elif d == STREAM_START:
            answer.status, answer.content_type = e["status"], e["content_type"]
            answer.chunks, last = [], e["timestamp_unix"]
        elif d == STREAM_CHUNK and answer.chunks is not None:
            answer.chunks.append((e["timestamp_unix"] - last, payload_bytes(e.get("payload"))))
            last = e["timestamp_unix"]
        elif d == STREAM_END:
            answer.completed = bool(e["metadata"].get("completed"))
    return answer


class ReplayUpstream(Resource):
    """
    A fake upstream answering from a capture.

    @ivar requests: the (path, body digest) of each request received.
    """

    isLeaf = True

    def __init__(self, answers: list[CannedAnswer], clock: IReactorTime,
                 fast: bool = False) -> None:
        super().__init__()
        self.answers = answers
        self.clock = clock
        self.fast = fast
        self.requests: list[tuple[str, str | None]] = []

    @classmethod
    def from_file(cls, path: str, clock: IReactorTime, fast: bool = False) -> ReplayUpstream:
        return cls(canned(read_requests(path).values()), clock, fast)

    def render_GET(self, request: Request) -> bytes:
        models = sorted({a.model for a in self.answers if a.model})
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "replay"} for m in models
        ]}).encode()

    def render_POST(self, request: Request) -> bytes | int:
        path = request.path.decode("latin-1")
        assert request.content is not None
        try:
            body = json.loads(request.content.read())
        except ValueError:
            body = None
        digest = None if body is None else body_digest(body)
        self.requests.append((path, digest))
        answer = self.match(path, digest, _session(request, body))
        if answer is None:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": {"message": "no captured answer left", "type":
                                         "replay", "param": None, "code": None}}).encode()
        return self._perform(request, answer)

    def match(self, path: str, digest: str | None,
              session: str | None = None) -> CannedAnswer | None:
        """
        The unused answer to the same body, else the next unused one for
        the path in the request's session, else for the path, else the
        next unused one.
        """
        unused = [a for a in self.answers if not a.used]
        for_path = [a for a in unused if path.endswith(a.path)]
        for candidates in ([a for a in for_path if a.digest == digest and digest is not None],
                           [a for a in for_path if session is not None
                            and a.session == session],
                           for_path, unused):
            if candidates:
                candidates[0].used = True
                return candidates[0]
        return None

    def _perform(self, request: Request, answer: CannedAnswer) -> bytes | int:
        if answer.status is None:
            if answer.outcome != "timeout":
                _abort(request)
            return NOT_DONE_YET
        request.setResponseCode(answer.status)
        if answer.content_type:
            request.setHeader(b"content-type", answer.content_type.encode("latin-1"))
        if answer.chunks is None:
            return answer.body
        self._pace(request, list(answer.chunks), answer.completed)
        return NOT_DONE_YET

    def _pace(self, request: Request, chunks: list[tuple[float, bytes]], completed: bool) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        while chunks:
            delay, data = chunks[0]
            if delay > 0 and not self.fast:
                chunks[0] = (0.0, data)
                self.clock.callLater(delay, self._pace, request, chunks, completed)
                return
            chunks.pop(0)
            request.write(data)
        if completed:
            request.finish()
        else:
            _abort(request)


def _session(request: Request, body: Any) -> str | None:
    """
    The session a request to the upstream names, as capture reads it on
    the client side (L{llmproxy.capture.request}): a C{session_id} or
    C{x-session-id} header, else the body's C{session_id} or
    C{prompt_cache_key}.
    """
    for name in (b"session_id", b"x-session-id"):
        value = request.getHeader(name)
        if value is not None:
            return value.decode("latin-1")
    if isinstance(body, dict):
        for key in ("session_id", "prompt_cache_key"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return None


def _abort(request: Request) -> None:
    cast(ITCPTransport, request.channel.transport).abortConnection()


__all__ = ["CannedAnswer", "PATHS", "ReplayUpstream", "body_digest", "canned",
           "payload_bytes", "serve_forever"]


def serve_forever(path: str, port: int, interface: str, fast: bool) -> int:
    """
    Serve the capture at C{path} on C{interface}:C{port} until stopped.
    """
    from twisted.internet import reactor

    upstream = ReplayUpstream.from_file(path, cast(IReactorTime, reactor), fast)
    cast(Any, reactor).listenTCP(port, Site(upstream), interface=interface)
    print(f"replaying {len(upstream.answers)} captured answers on "
          f"http://{interface}:{port}/v1 (Ctrl-C stops)")
    cast(Any, reactor).run()
    return 0
