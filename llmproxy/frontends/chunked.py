# -*- test-case-name: tests.test_http_protocol -*-
"""
A strict decoder of C{Transfer-Encoding: chunked} request bodies (RFC 9112
7.1) that holds the body limit: a chunk size that would carry the body past
the limit is refused as soon as its size line is in, before any of its
data, and every framing error is refused at once, never waited on.

Stricter than Twisted's decoder in the ways that made clients hang: line
ends are CRLF only (a bare LF is refused instead of waited for), and a size
is at most 16 hex digits.
"""

from __future__ import annotations

import re
from typing import Callable

from llmproxy.errors import InvalidRequest, ProxyError

#: The longest chunk size line (size and extensions), as in Twisted.
MAX_SIZE_LINE = 1024
#: The most trailer bytes taken after the last chunk.
MAX_TRAILERS = 16 * 1024

_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: A byte a chunk extension may not hold: controls other than HTAB.
_BAD_EXTENSION = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_SIZE_LINE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


def malformed(message: str) -> InvalidRequest:
    return InvalidRequest(f"Malformed chunked request body: {message}",
                          code="invalid_chunked_body")


def too_large(limit: int) -> ProxyError:
    """
    The error of a request body past C{limit} bytes.
    """
    return ProxyError(f"Request body larger than {limit} bytes", status=413,
                      type="invalid_request_error", code="request_too_large")


class ChunkedBody:
    """
    Decode one chunked body, fed in pieces of any size.

    @ivar received: the body bytes delivered so far.
    """

    def __init__(
        self, deliver: Callable[[bytes], None], finish: Callable[[bytes], None],
        fail: Callable[[ProxyError], None], limit: int,
    ) -> None:
        """
        @param deliver: called with each piece of the body's data.
        @param finish: called once, after the last chunk and the trailers,
            with the bytes that followed them (the next request's).
        @param fail: called once with the error that ends the body (400
            for bad framing, 413 past C{limit}); nothing is called after.
        """
        self.deliver = deliver
        self.finish = finish
        self.fail = fail
        self.limit = limit
        self.received = 0
        self._state = _SIZE_LINE
        self._buffer = b""
        self._left = 0
        self._trailers = 0

    def feed(self, data: bytes) -> None:
        """
        Take the next bytes of the body.
        """
        self._buffer += data
        while self._buffer and self._state != _DONE:
            if self._state == _DATA:
                self._data()
            elif not (self._size_line() if self._state == _SIZE_LINE
                      else self._data_end() if self._state == _DATA_END
                      else self._trailer()):
                return

    def _error(self, error: ProxyError) -> bool:
        self._state = _DONE
        self._buffer = b""
        self.fail(error)
        return False

    def _line(self, longest: int) -> bytes | None:
        """
        The next line (without its CRLF), taken from the buffer; L{None}
        while it is incomplete.  A bare LF or a line over C{longest} bytes
        is an error (then the state is L{_DONE}).
        """
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > longest:
                self._error(malformed("line too long"))
            return None
        if end == 0 or self._buffer[end - 1] != 0x0D:
            self._error(malformed("lines must end with CRLF"))
            return None
        if end - 1 > longest:
            self._error(malformed("line too long"))
            return None
        line, self._buffer = self._buffer[:end - 1], self._buffer[end + 1:]
        return line

    def _size_line(self) -> bool:
        line = self._line(MAX_SIZE_LINE)
        if line is None:
            return False
        size, _, extension = line.partition(b";")
        size = size.rstrip(b" \t")
        if not _SIZE.fullmatch(size) or _BAD_EXTENSION.search(extension):
            return self._error(malformed("invalid chunk size line"))
        length = int(size, 16)
        if self.received + length > self.limit:
            return self._error(too_large(self.limit))
        self._left = length
        self._state = _DATA if length else _TRAILER
        return True

    def _data(self) -> None:
        piece, self._buffer = self._buffer[:self._left], self._buffer[self._left:]
        self._left -= len(piece)
        self.received += len(piece)
        if not self._left:
            self._state = _DATA_END
        self.deliver(piece)

    def _data_end(self) -> bool:
        if len(self._buffer) < 2:
            if self._buffer != b"\r":
                return self._error(malformed("chunk data longer than its size"))
            return False
        if not self._buffer.startswith(b"\r\n"):
            return self._error(malformed("chunk data longer than its size"))
        self._buffer = self._buffer[2:]
        self._state = _SIZE_LINE
        return True

    def _trailer(self) -> bool:
        line = self._line(MAX_TRAILERS - self._trailers)
        if line is None:
            return False
        if line:
            self._trailers += len(line) + 2
            return True
        self._state = _DONE
        rest, self._buffer = self._buffer, b""
        self.finish(rest)
        return False


__all__ = ["ChunkedBody", "MAX_SIZE_LINE", "MAX_TRAILERS", "malformed", "too_large"]
