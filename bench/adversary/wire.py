"""
What came back, parsed leniently: an HTTP/1.x response (status line,
headers, a body framed by Content-Length, chunked encoding or the close),
the events of an SSE body, and whether a body is an OpenAI error object.

Pure functions over bytes: the verdicts and the tests use them on crafted
input, the clients on what a socket received.  Nothing here trusts the
server; anything unexpected becomes L{Response.error}, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\Z")
_MAX_HEAD = 256 * 1024


@dataclass(frozen=True)
class Response:
    """
    One response as far as it arrived.

    @ivar status: the final status (1xx heads are skipped); 0 when the
        head is unreadable (see L{error}).
    @ivar complete: the body's end was seen: its length reached, the last
        chunk, or the close of a close-delimited body.
    @ivar error: what is wrong with the bytes (a bad status line, a bad
        chunk size, a head cut by the close), or L{None}.
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    complete: bool
    error: str | None = None

    def header(self, name: str) -> str | None:
        """
        The last value of header C{name} (case-insensitive), if any.
        """
        name = name.lower()
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


def _bad(error: str, body: bytes = b"") -> Response:
    return Response(0, "", (), body, False, error)


def parse_response(data: bytes, closed: bool) -> Response | None:
    """
    Parse the first final response in C{data}.

    @param closed: whether the server closed the connection after C{data}
        (which completes a close-delimited body, and makes a cut head an
        error rather than something to wait for).
    @return: L{None} when more bytes are needed to read the head.
    """
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if not data.startswith(b"HTTP/1."[: len(data)]):
                return _bad("not an HTTP response", data)
            if closed:
                return _bad("closed inside the response head", data)
            if len(data) > _MAX_HEAD:
                return _bad("response head too long", data)
            return None
        lines = data[:end].split(b"\r\n")
        match = _STATUS_LINE.match(lines[0])
        if match is None:
            return _bad(f"bad status line {lines[0][:60]!r}", data)
        status = int(match.group(1))
        reason = (match.group(2) or b"").decode("latin-1")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return _bad(f"header line without a colon {line[:60]!r}", data)
            headers.append((name.strip().decode("latin-1").lower(),
                            value.strip().decode("latin-1")))
        rest = data[end + 4:]
        if 100 <= status < 200:
            data = rest
            continue
        return _framed(status, reason, tuple(headers), rest, closed)


def _framed(status: int, reason: str, headers: tuple[tuple[str, str], ...], rest: bytes,
            closed: bool) -> Response:
    names = dict(headers)
    if "chunked" in names.get("transfer-encoding", "").lower():
        body, complete, error = dechunk(rest)
        return Response(status, reason, headers, body, complete, error)
    length = names.get("content-length")
    if length is not None:
        if not length.isdigit():
            return Response(status, reason, headers, rest, False, f"bad Content-Length {length!r}")
        size = int(length)
        return Response(status, reason, headers, rest[:size], len(rest) >= size)
    if status in (204, 304):
        return Response(status, reason, headers, b"", True)
    return Response(status, reason, headers, rest, closed)


def dechunk(data: bytes) -> tuple[bytes, bool, str | None]:
    """
    Decode a chunked body: the data so far, whether the last chunk (and
    the trailers' end) arrived, and what is malformed, if anything.
    """
    parts: list[bytes] = []
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(parts), False, None
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return b"".join(parts), False, f"bad chunk size {size_text[:20]!r}"
        if size < 0:
            return b"".join(parts), False, f"bad chunk size {size_text[:20]!r}"
        start = eol + 2
        if size == 0:
            # Trailers, if any, end with an empty line.
            if data.startswith(b"\r\n", start) or data.find(b"\r\n\r\n", start) >= 0:
                return b"".join(parts), True, None
            return b"".join(parts), False, None
        parts.append(data[start:start + size])
        if len(data) < start + size + 2:
            return b"".join(parts), False, None
        if data[start + size:start + size + 2] != b"\r\n":
            return b"".join(parts), False, "chunk not followed by CRLF"
        pos = start + size + 2


@dataclass(frozen=True)
class Event:
    """
    One SSE event: its C{event:} name (empty when absent) and its data
    lines joined by newlines.
    """

    name: str
    data: str


def sse_events(body: bytes) -> list[Event]:
    """
    The complete events of an SSE body (comments and an unterminated last
    event are left out; CRLF, LF and CR line ends are all accepted).
    """
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    events: list[Event] = []
    blocks = text.split("\n\n")
    for block in blocks[:-1]:
        name = ""
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                name = value
        if data or name:
            events.append(Event(name, "\n".join(data)))
    return events


def _json(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def is_error_object(value: Any) -> bool:
    """
    Whether C{value} is C{{"error": {"message": str, "type": str, ...}}}.
    """
    if not isinstance(value, dict):
        return False
    error = value.get("error")
    return (isinstance(error, dict) and isinstance(error.get("message"), str)
            and isinstance(error.get("type"), str))


def is_openai_error(body: bytes) -> bool:
    """
    Whether C{body} is an OpenAI-shaped JSON error.
    """
    return is_error_object(_json(body))


def is_error_event(event: Event) -> bool:
    """
    Whether an SSE event reports an error: a Chat Completions
    C{data: {"error": {...}}}, or a Responses API C{error} or
    C{response.failed} event.
    """
    if event.name in ("error", "response.failed"):
        return True
    value = _json(event.data)
    if not isinstance(value, dict):
        return False
    return is_error_object(value) or value.get("type") in ("error", "response.failed")


@dataclass(frozen=True)
class StreamSummary:
    """
    What an SSE body told the client: how many events, whether one of
    them was an error, whether it ended with C{[DONE]}.
    """

    events: int
    error: bool
    done: bool
    content_events: int


def summarize_stream(body: bytes) -> StreamSummary:
    """
    Summarize an SSE body (see L{StreamSummary}).
    """
    events = sse_events(body)
    done = any(e.data.strip() == "[DONE]" for e in events)
    error = any(is_error_event(e) for e in events)
    content = sum(1 for e in events if e.data.strip() != "[DONE]" and not is_error_event(e))
    return StreamSummary(len(events), error, done, content)


def snippet(data: bytes, limit: int = 80) -> str:
    """
    The first bytes of C{data}, printable, for a report line.
    """
    text = repr(data[:limit])
    return text + ("…" if len(data) > limit else "")


__all__ = ["Event", "Response", "StreamSummary", "dechunk", "is_error_event", "is_error_object",
           "is_openai_error", "parse_response", "sse_events", "snippet", "summarize_stream"]
