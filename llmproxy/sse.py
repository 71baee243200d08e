# -*- test-case-name: tests.test_sse -*-
"""
Server-sent events: an incremental framer that splits a byte stream into
complete raw events (so they can be relayed byte for byte), a parser for one
event, and an encoder.

Events end at a blank line; lines end in CR, LF or CRLF, in any mix, and a
chunk boundary may fall anywhere, even between the CR and LF of one line end.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_EVENT_BYTES = 262_144

# Two line ends in a row.  The atomic groups stop "\r\n" counting as two.
_BOUNDARY = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEError(Exception):
    """
    The stream is not valid SSE (an event beyond L{MAX_EVENT_BYTES}).
    """


@dataclass(frozen=True)
class Event:
    """
    One dispatched event.  C{data} is L{None} for an event with no C{data:}
    lines (comments only, or C{event:} alone).
    """

    data: str | None
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    @property
    def done(self) -> bool:
        """
        Whether this is the C{data: [DONE]} terminator.
        """
        return self.data == "[DONE]"

    def json(self) -> Any:
        """
        The data decoded as JSON; raises L{ValueError} if it is not JSON.
        """
        if self.data is None:
            raise ValueError("event has no data")
        return json.loads(self.data)


class SSEFramer:
    """
    Split bytes into complete raw events, each with its terminating blank
    line, exactly as received.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._scan = 0
        self._max = max_event_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add bytes; return the events they complete.

        @raise SSEError: if an event (finished or not) grows beyond the
            limit, however the bytes were chunked.
        """
        buf = self._buffer + data if self._buffer else data
        events = []
        start = 0
        scan = self._scan
        plain = b"\r" not in buf
        while True:
            if plain:
                at = buf.find(b"\n\n", scan)
                end = at + 2
            else:
                match = _BOUNDARY.search(buf, scan)
                at = match.start() if match else -1
                end = match.end() if match else -1
            if at < 0:
                break
            if not plain and end == len(buf) and buf.endswith(b"\r"):
                # A final "\r" may still become "\r\n" ("\r" + "\r" too):
                # wait for more.
                break
            if end - start > self._max:
                raise SSEError(f"SSE event longer than {self._max} bytes")
            events.append(buf[start:end])
            start = scan = end
        self._buffer = buf[start:]
        self._scan = max(0, len(self._buffer) - 3)
        if len(self._buffer) > self._max:
            raise SSEError(f"SSE event longer than {self._max} bytes")
        return events

    def remainder(self) -> bytes:
        """
        Bytes of an unfinished event (returned once, at the end of stream).
        """
        rest, self._buffer, self._scan = self._buffer, b"", 0
        return rest


def parse_event(raw: bytes) -> Event | None:
    """
    Parse one raw event; return L{None} when it dispatches nothing
    (only comments or blank lines).
    """
    text = raw.decode("utf-8", "replace")
    data: list[str] = []
    name = ident = None
    retry = None
    seen = False
    for line in _LINE_END.split(text):
        if not line or line[0] == ":":
            continue
        field, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            ident = value
        elif field == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
        else:
            continue
        seen = True
    if not seen:
        return None
    return Event("\n".join(data) if data else None, name, ident, retry)


class SSEParser:
    """
    Framer and parser together: bytes in, L{Event}s out.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._framer = SSEFramer(max_event_bytes)

    def feed(self, data: bytes) -> list[Event]:
        return [e for e in map(parse_event, self._framer.feed(data)) if e is not None]

    def close(self) -> list[Event]:
        """
        End of stream: parse a final event that lacked its blank line.
        """
        event = parse_event(self._framer.remainder())
        return [event] if event is not None else []


def encode_event(data: Any, event: str | None = None) -> bytes:
    """
    Encode one event; C{data} is JSON-encoded unless it is already a string.
    """
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    # One data: line per line of text, so the parser joins them back.
    lines = "".join(f"data: {line}\n" for line in _LINE_END.split(text))
    return f"{head}{lines}\n".encode("utf-8")


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
