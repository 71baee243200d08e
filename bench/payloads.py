"""
The canned bytes of the bench: what clients send, what the instant upstream
answers.  Kept tiny and OpenAI-shaped, so the cost measured is the proxy's,
not JSON size.
"""

from __future__ import annotations

import json

#: The model clients ask for; the realistic config aliases it.
CLIENT_MODEL = "gpt-4"
#: The model the upstream reports.
UPSTREAM_MODEL = "gpt-4o-mini"
_CREATED = 1_700_000_000
_ID = "chatcmpl-bench"


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def request_body(stream: bool) -> bytes:
    """
    A chat completion request body.
    """
    return _dumps({
        "model": CLIENT_MODEL,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Say hello to the benchmark."},
        ],
        "stream": stream,
    })


def completion() -> bytes:
    """
    The canned non-streaming chat completion.
    """
    return _dumps({
        "id": _ID,
        "object": "chat.completion",
        "created": _CREATED,
        "model": UPSTREAM_MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, benchmark!"},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25},
    })


def _chunk(delta: dict[str, str], finish: str | None) -> bytes:
    payload = _dumps({
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
    return b"data: " + payload + b"\n\n"


def sse_events(chunks: int) -> list[bytes]:
    """
    The canned stream: C{chunks} chunk events (the first carries the role,
    the last the finish reason) and the C{[DONE]} event, C{chunks + 1}
    events in all, each a complete C{data:} event.
    """
    chunks = max(1, chunks)
    events = []
    for i in range(chunks):
        delta = {"content": f"tok{i} "}
        if i == 0:
            delta = {"role": "assistant", "content": "tok0 "}
        events.append(_chunk(delta, "stop" if i == chunks - 1 else None))
    events.append(b"data: [DONE]\n\n")
    return events


def is_stream_request(body: bytes) -> bool:
    """
    Whether a request body asks for a stream, without parsing JSON (the
    upstream must stay instant).
    """
    return b'"stream":true' in body or b'"stream": true' in body


__all__ = ["CLIENT_MODEL", "UPSTREAM_MODEL", "completion", "is_stream_request",
           "request_body", "sse_events"]
