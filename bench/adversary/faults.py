"""
The injected upstream faults, as scripts: what the fake upstream writes,
waits for, or does to the connection, after reading a request.

Each fault answers both kinds of client request (C{Ctx.stream}); each is
served as its own backend (C{f-<name>}, at path C{/<name>/v1} of the
upstream) so that one fault's failures never open another's circuit.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from typing import Callable, Union

from bench.adversary import BODY_LIMIT

# steps


@dataclass(frozen=True)
class Send:
    """
    Write bytes (and wait until they are taken).
    """

    data: bytes


@dataclass(frozen=True)
class Sleep:
    """
    Wait.
    """

    seconds: float


@dataclass(frozen=True)
class Drip:
    """
    Write C{data} one byte at a time, C{interval} seconds apart.
    """

    data: bytes
    interval: float


@dataclass(frozen=True)
class Repeat:
    """
    Write C{data} C{count} times, C{interval} seconds apart.
    """

    data: bytes
    interval: float
    count: int


@dataclass(frozen=True)
class Close:
    """
    Close the connection (FIN).
    """


@dataclass(frozen=True)
class Reset:
    """
    Reset the connection (RST: linger 0, then close).
    """


@dataclass(frozen=True)
class Stall:
    """
    Keep the connection open, saying nothing, until the peer leaves.
    """


Step = Union[Send, Sleep, Drip, Repeat, Close, Reset, Stall]


@dataclass(frozen=True)
class Ctx:
    """
    The request a fault answers: streaming or not, and the upstream's own
    port (for redirects).
    """

    stream: bool
    port: int


@dataclass(frozen=True)
class Fault:
    """
    One fault.

    @ivar early: act as soon as the request head arrived, before its body.
    """

    name: str
    about: str
    script: Callable[[Ctx], list[Step]]
    early: bool = False


# healthy bytes

JSON = "application/json"
SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
LAST_CHUNK = b"0\r\n\r\n"
HTML = (b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        b"<body><h1>Bad Gateway</h1><p>nginx</p></body></html>")


def completion(content: str = "ok") -> bytes:
    """
    A chat completion.
    """
    return json.dumps({
        "id": "chatcmpl-adversary", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


def event(content: str, finish: str | None = None) -> bytes:
    """
    One chat completion chunk as an SSE event.
    """
    return b"data: " + json.dumps({
        "id": "chatcmpl-adversary", "object": "chat.completion.chunk", "created": 1,
        "model": "m", "choices": [{"index": 0, "delta": {"content": content},
                                   "finish_reason": finish}],
    }).encode() + b"\n\n"


EVENTS = [event("o"), event("k"), event("", "stop")]


def error_body(message: str, type_: str, code: str | None = None) -> bytes:
    """
    An OpenAI error object.
    """
    return json.dumps({"error": {"message": message, "type": type_, "param": None,
                                 "code": code}}).encode()


def head(status: int = 200, reason: str = "OK", *headers: str, version: str = "HTTP/1.1") -> bytes:
    """
    A status line and headers, with the empty line.
    """
    return (f"{version} {status} {reason}\r\n" + "".join(h + "\r\n" for h in headers)
            + "\r\n").encode("latin-1")


def response(status: int, body: bytes, content_type: str = JSON, *headers: str,
             reason: str = "X") -> bytes:
    """
    A complete response framed by Content-Length.
    """
    return head(status, reason, f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}", *headers) + body


def chunk(data: bytes) -> bytes:
    """
    One chunk of a chunked body.
    """
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def sse_head(*headers: str) -> bytes:
    """
    The head of a 200 event stream, chunked.
    """
    return head(200, "OK", f"Content-Type: {SSE}", "Transfer-Encoding: chunked", *headers)


def sse_response(events: list[bytes]) -> bytes:
    """
    A complete 200 event stream.
    """
    return sse_head() + b"".join(chunk(e) for e in events) + LAST_CHUNK


def healthy(ctx: Ctx) -> bytes:
    """
    The right answer to the request.
    """
    return sse_response([*EVENTS, DONE]) if ctx.stream else response(200, completion())


def kind(ctx: Ctx) -> str:
    """
    The content type the request asked for.
    """
    return SSE if ctx.stream else JSON


def typed(ctx: Ctx, body: bytes, *headers: str) -> bytes:
    """
    A 200 with the content type the request asked for and C{body}.
    """
    return response(200, body, kind(ctx), *headers, reason="OK")


def lots(count: int, size: int = 1024) -> list[Step]:
    """
    A healthy stream of C{count} events of about C{size} bytes, as fast
    as the reader takes them.
    """
    return [Send(sse_head()), Repeat(chunk(event("x" * size)), 0.0, count),
            Send(chunk(DONE) + LAST_CHUNK)]


# the faults

_GARBAGE = random.Random(10).randbytes(512)
_OVER = 3 * BODY_LIMIT  # the proxy caps a non-streamed upstream body at 2 x its body limit
_PIECE = 65536
_SSE_TEXT = b"".join([*EVENTS, DONE])


def _both(step: Callable[[Ctx], bytes]) -> Callable[[Ctx], list[Step]]:
    return lambda c: [Send(step(c))]


def _per_kind(plain: list[Step], stream: list[Step]) -> Callable[[Ctx], list[Step]]:
    return lambda c: stream if c.stream else plain


def _status(status: int, body: bytes, *headers: str, content_type: str = JSON
            ) -> Callable[[Ctx], list[Step]]:
    return lambda c: [Send(response(status, body, content_type, *headers))]


def _redirect(status: int) -> Callable[[Ctx], list[Step]]:
    return lambda c: [Send(head(status, "Found",
                                f"Location: http://127.0.0.1:{c.port}/ok/v1/chat/completions",
                                "Content-Length: 0"))]


_half_completion = completion()[: len(completion()) // 2]
_half_event = EVENTS[0][: len(EVENTS[0]) // 2]

FAULTS: tuple[Fault, ...] = (
    Fault("garbage-200", "200 with random bytes (the asked-for content type)",
          _both(lambda c: typed(c, _GARBAGE))),
    Fault("html-200", "200 text/html page", _status(200, HTML, content_type="text/html")),
    Fault("html-typed-200", "200 with an HTML page labelled as the asked-for type",
          _both(lambda c: typed(c, HTML))),
    Fault("gzip-with-ce", "200 Content-Encoding: gzip (of an HTML page)",
          _both(lambda c: typed(c, gzip.compress(HTML), "Content-Encoding: gzip"))),
    Fault("gzip-without-ce", "200 with gzip bytes of a valid answer, no Content-Encoding",
          _both(lambda c: typed(c, gzip.compress(_SSE_TEXT if c.stream else completion())))),
    Fault("wrong-kind", "an SSE stream for a non-streaming request, JSON for a streaming one",
          _both(lambda c: response(200, completion()) if c.stream else sse_response(
              [*EVENTS, DONE]))),
    Fault("wrong-kind-mislabelled", "the other kind's body under the asked-for content type",
          _both(lambda c: typed(c, completion() if c.stream else _SSE_TEXT))),
    Fault("empty-200", "200 with Content-Length: 0", _both(lambda c: typed(c, b""))),
    Fault("empty-200-close", "200 with no length, then close",
          lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}", "Connection: close")),
                     Close()]),
    Fault("error-in-200", "status 200 with an OpenAI error object as the body",
          _status(200, error_body("upstream broke", "server_error"))),
    Fault("json-array-200", "200 with a JSON array",
          _per_kind([Send(response(200, b"[1, 2, 3]"))],
                    [Send(sse_response([b"data: [1, 2, 3]\n\n", DONE]))])),
    Fault("truncated-json", "a complete body holding half a JSON document",
          _per_kind([Send(response(200, _half_completion))],
                    [Send(sse_head() + chunk(_half_event) + LAST_CHUNK)])),
    Fault("short-body-close", "Content-Length longer than the body, then close",
          _per_kind([Send(head(200, "OK", "Content-Type: application/json",
                               f"Content-Length: {len(completion()) + 500}") + completion()),
                     Close()],
                    [Send(sse_head() + chunk(EVENTS[0]) + b"100\r\nabc"), Close()])),
    Fault("over-cap", f"a {_OVER >> 20} MiB body (non-streaming cap: 2 x the body limit)",
          _per_kind([Send(head(200, "OK", "Content-Type: application/json",
                               f"Content-Length: {_OVER}")),
                     Repeat(b"x" * _PIECE, 0.0, _OVER // _PIECE)],
                    [Send(sse_head() + chunk(b"data: ")),
                     Repeat(chunk(b"x" * _PIECE), 0.0, _OVER // _PIECE), Send(LAST_CHUNK)])),
    Fault("endless-body", "a chunked body that never ends, as fast as it is read",
          lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}",
                               "Transfer-Encoding: chunked") + chunk(b"data: ")),
                     Repeat(chunk(b"x" * _PIECE), 0.0, 400)]),
    Fault("drip-body", "headers, then the body one byte per second (length-framed, so "
          "every byte reaches the proxy at once)",
          lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}",
                               f"Content-Length: {len(_SSE_TEXT if c.stream else completion())}")),
                     Drip(_SSE_TEXT if c.stream else completion(), 1.0)]),
    Fault("drip-head", "the whole answer, status line included, one byte per second",
          lambda c: [Drip(healthy(c), 1.0)]),
    Fault("trickle-forever", "a valid body prefix that never ends: whitespace or SSE comments "
          "every 0.5 s", lambda c: [
              Send(head(200, "OK", f"Content-Type: {kind(c)}", "Transfer-Encoding: chunked")),
              Repeat(chunk(b": ping\n\n" if c.stream else b" "), 0.5, 120)]),
    Fault("headers-then-stall", "headers, then nothing",
          _per_kind([Send(head(200, "OK", "Content-Type: application/json",
                               "Content-Length: 500")), Stall()],
                    [Send(sse_head()), Stall()])),
    Fault("no-length-stall", "an answer with no length (a stream without [DONE]) on a "
          "connection kept open", lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}")
                                                  + (b"".join(EVENTS) if c.stream
                                                     else completion())), Stall()]),
    Fault("never-answer", "reads the request, says nothing", lambda c: [Stall()]),
    Fault("close-before-headers", "reads the request, closes", lambda c: [Close()]),
    Fault("close-mid-request", "closes once the request head arrived", lambda c: [Close()],
          early=True),
    Fault("reset-before-headers", "reads the request, resets", lambda c: [Reset()]),
    Fault("reset-mid-body", "headers and part of the body, then a reset",
          _per_kind([Send(head(200, "OK", "Content-Type: application/json",
                               "Content-Length: 1000") + completion()[:100]), Reset()],
                    [Send(sse_head() + chunk(EVENTS[0]) + chunk(EVENTS[1])), Reset()])),
    Fault("sse-long-event", "an SSE event of 400 KiB (the parser's cap is 256 KiB)",
          lambda c: [Send(sse_head() + chunk(b"data: " + b"x" * 400 * 1024) + chunk(b"\n\n")
                          + chunk(DONE) + LAST_CHUNK)]),
    Fault("sse-no-done", "SSE events, a clean end, no [DONE]",
          lambda c: [Send(sse_response(EVENTS[:2]))]),
    Fault("sse-no-done-close", "SSE events, then close mid-body (no last chunk, no [DONE])",
          lambda c: [Send(sse_head() + b"".join(chunk(e) for e in EVENTS[:2])), Close()]),
    Fault("sse-not-json", "SSE data that is not JSON",
          lambda c: [Send(sse_response([b"data: hello world\n\n", DONE]))]),
    Fault("sse-only-done", "an SSE stream of [DONE] alone", lambda c: [Send(sse_response([DONE]))]),
    Fault("sse-error-event", "an SSE stream carrying an error event",
          lambda c: [Send(sse_response([EVENTS[0], b"data: " + error_body(
              "overloaded", "server_error") + b"\n\n", DONE]))]),
    Fault("invalid-utf8", "an answer whose text is not UTF-8",
          _both(lambda c: typed(c, (_SSE_TEXT if c.stream else completion()).replace(
              b'"ok"' if not c.stream else b'"o"', b'"\xff\xfe"')))),
    Fault("html-502", "502 with an HTML page", _status(502, HTML, content_type="text/html")),
    Fault("html-500", "500 with an HTML page", _status(500, HTML, content_type="text/html")),
    Fault("503-retry-after", "503 with Retry-After: 1",
          _status(503, error_body("overloaded", "server_error"), "Retry-After: 1")),
    Fault("503-retry-after-huge", "503 with Retry-After: 86400",
          _status(503, error_body("overloaded", "server_error"), "Retry-After: 86400")),
    Fault("429-forever", "429 on every attempt",
          _status(429, error_body("Rate limit reached", "requests", "rate_limit_exceeded"))),
    Fault("429-retry-after-ms", "429 with retry-after-ms: 50 on every attempt",
          _status(429, error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
                  "retry-after-ms: 50")),
    Fault("401-invalid-key", "401 invalid_api_key",
          _status(401, error_body("Incorrect API key", "invalid_request_error",
                                  "invalid_api_key"))),
    Fault("403-forbidden", "403 with an HTML page", _status(403, HTML, content_type="text/html")),
    Fault("404-model-not-found", "404 model_not_found",
          _status(404, error_body("The model does not exist", "invalid_request_error",
                                  "model_not_found"))),
    Fault("302-redirect", "302 to a healthy path (must not be followed)", _redirect(302)),
    Fault("307-redirect", "307 to a healthy path (must not be followed)", _redirect(307)),
    Fault("http10-close-truncated", "HTTP/1.0, body delimited by the close, cut short",
          lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}", version="HTTP/1.0")
                          + (EVENTS[0] + _half_event if c.stream else _half_completion)),
                     Close()]),
    Fault("bad-status-line", "an unparseable status line",
          lambda c: [Send(b"HTTP/1.1 2x0 OK\r\n" + healthy(c).split(b"\r\n", 1)[1]), Close()]),
    Fault("not-http", "an SSH banner instead of HTTP",
          lambda c: [Send(b"SSH-2.0-OpenSSH_9.6\r\n"), Stall()]),
    Fault("continue-then-stall", "100 Continue, then nothing",
          lambda c: [Send(head(100, "Continue")), Stall()]),
    Fault("continue-then-close", "100 Continue, then close",
          lambda c: [Send(head(100, "Continue")), Close()]),
    Fault("status-999", "status 999 with a valid body",
          lambda c: [Send(head(999, "Weird", f"Content-Type: {kind(c)}", "Content-Length: "
                               + str(len(_SSE_TEXT if c.stream else completion())))
                          + (_SSE_TEXT if c.stream else completion()))]),
    Fault("no-content-204", "204 No Content", lambda c: [Send(head(204, "No Content"))]),
    Fault("bad-chunk-size", "a chunked body with a chunk size of 'zz'",
          lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}",
                               "Transfer-Encoding: chunked") + b"zz\r\nhello\r\n"
                          + LAST_CHUNK), Close()]),
    Fault("cl-and-te", "both Content-Length and chunked, the length a lie",
          lambda c: [Send(head(200, "OK", f"Content-Type: {kind(c)}", "Content-Length: 10",
                               "Transfer-Encoding: chunked") + b"".join(
              chunk(e) for e in (EVENTS[:1] if c.stream else [_half_completion])) + LAST_CHUNK),
              Close()]),
)


def fault_named(name: str) -> Fault | None:
    """
    The fault called C{name}, if any.
    """
    for fault in FAULTS:
        if fault.name == name:
            return fault
    return None


def backend_name(fault: Fault) -> str:
    """
    The proxy backend that serves C{fault}.
    """
    return f"f-{fault.name}"


__all__ = ["Close", "Ctx", "DONE", "Drip", "FAULTS", "Fault", "Repeat", "Reset", "Send", "Sleep",
           "Stall", "Step", "backend_name", "completion", "error_body", "event", "fault_named",
           "healthy", "lots", "response", "sse_response"]
