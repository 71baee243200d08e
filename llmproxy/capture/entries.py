# -*- test-case-name: tests.test_capture_entries -*-
"""
Capture entries: a L{Record} is what the reactor thread notes of an event
(cheap: references and raw bytes, and its C{seq}); L{render} makes it the
JSON line the writer thread writes, payload decoded and secrets redacted
there, off the reactor.

An entry's keys: C{seq}, C{timestamp_iso}, C{timestamp_unix},
C{request_id}, C{direction}, C{source}, C{destination}, C{session_id},
C{backend}, C{model}, C{key_name}, C{attempt}, C{status},
C{content_type}, C{content_length}, C{payload} (the body as JSON where it
parses, else text; other bytes as C{{"$base64": ...}}; L{None} with
C{bodies: headers-only}) and C{metadata} (C{headers}, and what the
direction adds: an attempt's C{outcome}, a stream's C{completed} and
C{error}, a drop's C{dropped}).

Besides the seven wire directions, C{attempt} entries say how each
upstream attempt ended (from the exchange's attempt events) and
C{dropped} entries how many entries a full buffer cost.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from twisted.web.http_headers import Headers

from llmproxy.capture.redact import Redactor

#: The capture format's version, in each file's header entry.
FORMAT_VERSION = 1

INBOUND_REQUEST = "inbound_request"
OUTBOUND_REQUEST = "outbound_request"
INBOUND_RESPONSE = "inbound_response"
OUTBOUND_RESPONSE = "outbound_response"
STREAM_START = "stream_start"
STREAM_CHUNK = "stream_chunk"
STREAM_END = "stream_end"
ATTEMPT = "attempt"
DROPPED = "dropped"

#: What a record's size counts beyond its body, for the buffer's bound.
OVERHEAD = 512

#: How a JSON text can begin.
_JSON_STARTS = tuple(bytes([c]) for c in b'{["-0123456789tfn')

#: Compact JSON (one encoder, made once: C{json.dumps} makes one per call
#: when given options).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(slots=True)
class Record:
    """
    One event, as noted on the reactor thread.

    @ivar headers: raw header pairs, redacted when rendered.
    @ivar redactor: the secrets of the record's request.
    """

    direction: str
    at: float
    source: str
    destination: str
    request_id: str | None = None
    session_id: str | None = None
    backend: str | None = None
    model: str | None = None
    key_name: str | None = None
    attempt: int | None = None
    status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    redactor: Redactor | None = None
    seq: int = 0

    def size(self) -> int:
        """
        What the record holds in the buffer, roughly, in bytes.
        """
        return OVERHEAD + (len(self.body) if self.body is not None else 0)


def pairs(headers: Headers) -> list[tuple[bytes, bytes]]:
    """
    C{headers} as raw (name, value) pairs, a repeated header once per value.
    """
    return [(name, value) for name, values in headers.getAllRawHeaders() for value in values]


def iso(at: float) -> str:
    """
    A UNIX time as ISO 8601 UTC, to the microsecond.
    """
    return datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")


def payload(body: bytes, redactor: Redactor, deep: bool = True) -> Any:
    """
    A body as JSON where it parses, else text, else base64 (with the
    C{$base64} marker), secrets redacted: in the bytes, and when C{deep},
    in every string of the parsed JSON too (a secret written with JSON
    escapes only shows there).
    """
    body = redactor.data(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"$base64": base64.b64encode(body).decode("ascii")}
    if body.lstrip()[:1] not in _JSON_STARTS:
        return _sse_escapes(text, redactor) if deep else text  # an event stream's text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return _sse_escapes(text, redactor) if deep else text
    return redactor.value(value) if deep else value


def _sse_escapes(text: str, redactor: Redactor) -> str:
    """
    C{text} with each SSE C{data:} line whose JSON spells a secret with
    escapes written again, redacted.
    """
    if "\\" not in text:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("data:"):
            continue
        try:
            value = json.loads(line[5:])
        except (ValueError, RecursionError):
            continue
        if redactor.found(_encode(value).encode("utf-8")):
            lines[i] = "data: " + _encode(redactor.value(value))
    return "\n".join(lines)


def render(record: Record, bodies: bool = True) -> bytes:
    """
    The JSON line of C{record}; without C{bodies}, no payload.

    Secrets are replaced in the body's bytes, and the line is searched for
    any left (one pass over the bytes); only a line that still holds one,
    or whose body has escapes that could spell one, is redacted string by
    string.
    """
    redactor = record.redactor or Redactor(())
    body = record.body
    if bodies and body is not None and redactor.secrets and _may_hide(body, redactor):
        return _line(record, redactor, bodies, deep=True)
    line = _line(record, redactor, bodies, deep=False)
    if redactor.found(line):
        line = _line(record, redactor, bodies, deep=True)
    return line


def _may_hide(body: bytes, redactor: Redactor) -> bool:
    """
    Whether JSON inside C{body} could spell a secret with escapes, so that
    its bytes do not show it.
    """
    return b"\\u" in body or b"\\/" in body or (not redactor.plain and b"\\" in body)


def _line(record: Record, redactor: Redactor, bodies: bool, deep: bool) -> bytes:
    body = record.body
    metadata = dict(record.metadata)
    if record.headers:
        metadata["headers"] = redactor.headers(record.headers)
    entry = {
        "seq": record.seq,
        "timestamp_iso": iso(record.at),
        "timestamp_unix": record.at,
        "request_id": record.request_id,
        "direction": record.direction,
        "source": record.source,
        "destination": record.destination,
        "session_id": record.session_id,
        "backend": record.backend,
        "model": record.model,
        "key_name": record.key_name,
        "attempt": record.attempt,
        "status": record.status,
        "content_type": record.content_type,
        "content_length": None if body is None else len(body),
        "metadata": redactor.value(metadata) if deep else metadata,
    }
    if body is not None and bodies:
        body = redactor.data(body)
    raw = None if deep or body is None or not bodies else _json_text(body)
    if raw is not None:
        # The body is JSON text: written as it came, on one line.
        head = _encode(entry).encode("utf-8")
        return head[:-1] + b',"payload":' + raw + b"}\n"
    entry["payload"] = payload(body, redactor, deep) if body is not None and bodies else None
    return _encode(entry).encode("utf-8") + b"\n"


def _json_text(body: bytes) -> bytes | None:
    """
    C{body} on one line, if it is a JSON object or array; else L{None}.
    A line break in JSON text is whitespace (within strings it is
    escaped), so it becomes a space.
    """
    if body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return None
    return body.replace(b"\n", b" ").replace(b"\r", b" ")


def header(at: float, version: str, config_digest: str) -> bytes:
    """
    The entry that starts each capture file.
    """
    return json.dumps({
        "direction": "header", "format": "llmproxy-capture", "version": FORMAT_VERSION,
        "started_iso": iso(at), "started_unix": at, "llmproxy_version": version,
        "config_digest": config_digest,
    }, separators=(",", ":")).encode("utf-8") + b"\n"


def digest(config: object) -> str:
    """
    A short digest of a configuration (its repr, which shows no secret).
    """
    return hashlib.sha256(repr(config).encode("utf-8")).hexdigest()[:16]


__all__ = [
    "ATTEMPT", "DROPPED", "FORMAT_VERSION", "INBOUND_REQUEST", "INBOUND_RESPONSE",
    "OUTBOUND_REQUEST", "OUTBOUND_RESPONSE", "STREAM_CHUNK", "STREAM_END", "STREAM_START",
    "Record", "digest", "header", "iso", "pairs", "payload", "render",
]
