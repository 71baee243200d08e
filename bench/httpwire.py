"""
HTTP/1.1 on the wire for the bench clients: request bytes, and an
incremental reader for one response at a time on a keep-alive connection
(Content-Length, chunked, or read-until-close bodies), which also counts
complete SSE C{data:} events as they arrive.

Hand-written rather than http.client so a client can timestamp every
event, and so the asyncio load generator stays cheap per request.
"""

from __future__ import annotations

from typing import Callable

from bench import CHAT_PATH, PROXY_KEY

_HEAD, _BODY_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE = range(8)


class ProtocolError(Exception):
    """
    The server sent something that is not HTTP/1.1 as expected.
    """


def chat_request(port: int, body: bytes, stream: bool, key: str | None = PROXY_KEY) -> bytes:
    """
    The bytes of one POST of C{body} to the chat completions path.
    """
    lines = [
        f"POST {CHAT_PATH} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Accept: {'text/event-stream' if stream else 'application/json'}",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def get_request(port: int, path: str) -> bytes:
    """
    The bytes of one GET.
    """
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("ascii")


class ResponseReader:
    """
    Parse one response at a time.  Call L{feed} with each received piece;
    it returns True once the response is complete.  L{events} counts the
    complete SSE C{data:} events of the body so far, and L{on_event} (if
    set) is called once per such event, as soon as its last byte arrived.

    @ivar status: the status code (0 until the head is read).
    @ivar keep_alive: whether the connection may carry another request.
    """

    __slots__ = ("state", "buf", "status", "keep_alive", "remaining", "events",
                 "body_bytes", "on_event", "_sse_tail", "count_events")

    def __init__(self, count_events: bool = False) -> None:
        self.count_events = count_events
        self.on_event: Callable[[], None] | None = None
        self.reset()

    def reset(self) -> None:
        """
        Get ready for the next response on the same connection.
        """
        self.state = _HEAD
        self.buf = b""
        self.status = 0
        self.keep_alive = True
        self.remaining = 0
        self.events = 0
        self.body_bytes = 0
        self._sse_tail = b""

    @property
    def done(self) -> bool:
        """
        Whether the current response is complete.
        """
        return self.state == _DONE

    def feed(self, data: bytes) -> bool:
        """
        Consume C{data}; True once the response is complete.
        """
        buf = self.buf + data if self.buf else data
        self.buf = b""
        while buf and self.state != _DONE:
            buf = self._step(buf)
        return self.state == _DONE

    def connection_closed(self) -> bool:
        """
        The peer closed: True if that completes a read-until-close body.
        """
        if self.state == _UNTIL_CLOSE:
            self.state = _DONE
            self.keep_alive = False
            return True
        return self.state == _DONE

    # states

    def _step(self, buf: bytes) -> bytes:
        state = self.state
        if state == _HEAD:
            return self._head(buf)
        if state == _BODY_LENGTH:
            take = buf[: self.remaining]
            self._body(take)
            self.remaining -= len(take)
            if self.remaining == 0:
                self.state = _DONE
            return buf[len(take):]
        if state == _CHUNK_SIZE:
            return self._chunk_size(buf)
        if state == _CHUNK_DATA:
            take = buf[: self.remaining]
            self._body(take)
            self.remaining -= len(take)
            if self.remaining == 0:
                self.state = _CHUNK_CRLF
                self.remaining = 2
            return buf[len(take):]
        if state == _CHUNK_CRLF:
            skip = min(self.remaining, len(buf))
            self.remaining -= skip
            if self.remaining == 0:
                self.state = _CHUNK_SIZE
            return buf[skip:]
        if state == _TRAILER:
            return self._trailer(buf)
        if state == _UNTIL_CLOSE:
            self._body(buf)
            return b""
        raise ProtocolError(f"data after the response ended: {buf[:40]!r}")

    def _head(self, buf: bytes) -> bytes:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                raise ProtocolError("response head too long")
            self.buf = buf
            return b""
        head = buf[:end].decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError(f"bad status line {head[0]!r}")
        self.status = int(parts[1])
        length: int | None = None
        chunked = False
        self.keep_alive = parts[0] == "HTTP/1.1"
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection":
                self.keep_alive = value.lower() == "keep-alive" or (
                    self.keep_alive and value.lower() != "close")
        if chunked:
            self.state = _CHUNK_SIZE
        elif length is not None:
            self.remaining = length
            self.state = _BODY_LENGTH if length else _DONE
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self.state = _DONE
        else:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False
        return buf[end + 4:]

    def _chunk_size(self, buf: bytes) -> bytes:
        end = buf.find(b"\r\n")
        if end < 0:
            self.buf = buf
            return b""
        size = int(buf[:end].split(b";", 1)[0], 16)
        if size == 0:
            self.state = _TRAILER
        else:
            self.state = _CHUNK_DATA
            self.remaining = size
        return buf[end + 2:]

    def _trailer(self, buf: bytes) -> bytes:
        if buf.startswith(b"\r\n"):
            self.state = _DONE
            return buf[2:]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return b""
        self.state = _DONE
        return buf[end + 4:]

    def _body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if not self.count_events or not data:
            return
        text = self._sse_tail + data
        start = 0
        while True:
            end = text.find(b"\n\n", start)
            if end < 0:
                break
            event = text[start:end].lstrip(b"\r\n")
            if event.startswith(b"data:"):
                self.events += 1
                if self.on_event is not None:
                    self.on_event()
            start = end + 2
        self._sse_tail = text[start:]


__all__ = ["ProtocolError", "ResponseReader", "chat_request", "get_request"]
