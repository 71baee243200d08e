# -*- test-case-name: tests.test_http_protocol -*-
"""
What the connection answers to a request it refuses before any resource
sees it: the OpenAI-shaped error of each protocol fault (malformed request
line or header, framing, sizes, deadlines), and the bytes of that answer.

The messages name the fault, never the request's bytes beyond a short,
escaped excerpt of a method or a coding.
"""

from __future__ import annotations

import re

from http import HTTPStatus
from types import MappingProxyType

from twisted.web.http import RESPONSES

from llmproxy.errors import InvalidRequest, ProxyError

#: Reason phrases Twisted's table lacks (429, 431, ...), from the standard
#: library's.
_REASONS = MappingProxyType({s.value: s.phrase.encode("ascii") for s in HTTPStatus
                             if s.value not in RESPONSES})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A well-formed version whose major is not 1 (HTTP/2.0, HTTP/3, ...).
_OTHER_MAJOR = re.compile(rb"HTTP/[2-9](?:\.[0-9])?")
#: A list of transfer codings, without their parameters' syntax checked.
_CODINGS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?:[ \t]*[,;][ \t]*[!-~]*)*")


def excerpt(data: bytes, most: int = 40) -> str:
    """
    C{data} as printable text, cut to C{most} characters.
    """
    text = data[:most].decode("ascii", "backslashreplace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text + ("..." if len(data) > most else "")


def response(error: ProxyError, body: bool = True) -> bytes:
    """
    The whole HTTP/1.1 answer carrying C{error}, ending the connection;
    without the body (for a C{HEAD} request) unless C{body}.
    """
    data = error.to_json()
    lines = [b"HTTP/1.1 %d %s" % (error.status, reason(error.status)),
             b"Content-Type: application/json", b"Content-Length: %d" % len(data),
             b"Connection: close"]
    lines += [f"{name}: {value}".encode("latin-1") for name, value in error.headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + (data if body else b"")


def reason(status: int) -> bytes:
    """
    The standard reason phrase of C{status}; C{Error} for a status without
    one.
    """
    return RESPONSES.get(status) or _REASONS.get(status, b"Error")


def request_line_error(line: bytes) -> ProxyError:
    """
    Why Twisted refused C{line} as a request line: 505 for a version of
    another major, else 400.
    """
    parts = line.split(b" ")
    if len(parts) == 3 and _TOKEN.fullmatch(parts[0]) and _OTHER_MAJOR.fullmatch(parts[2]):
        return ProxyError(f"HTTP version {excerpt(parts[2])} is not supported: use HTTP/1.1",
                          status=505, type="invalid_request_error",
                          code="http_version_not_supported")
    return InvalidRequest("Malformed HTTP request line: expected 'METHOD /path HTTP/1.1'",
                          code="invalid_request_line")


def header_error(line: bytes) -> ProxyError:
    """
    Why Twisted refused the header C{line}: 501 for a transfer coding it
    does not implement, else 400 (for the header's syntax, or for framing
    headers that conflict).
    """
    name, colon, value = line.partition(b":")
    if not colon:
        return InvalidRequest("Malformed HTTP header: a header line has no colon",
                              code="invalid_header")
    name, value = name.lower(), value.strip(b" \t")
    if name == b"transfer-encoding" and value.lower() != b"chunked" and _CODINGS.fullmatch(value):
        return unsupported_coding(value)
    if name in (b"content-length", b"transfer-encoding"):
        return bad_framing()
    return InvalidRequest("Malformed HTTP header: invalid name, or a value with NUL, CR or LF",
                          code="invalid_header")


def bad_framing() -> InvalidRequest:
    return InvalidRequest(
        "Invalid message framing: Content-Length must be one decimal number, and a "
        "request may not carry both Content-Length and Transfer-Encoding, or either twice",
        code="invalid_framing")


def unsupported_coding(coding: bytes) -> ProxyError:
    return ProxyError(f"Transfer-Encoding {excerpt(coding)} is not supported: "
                      "only 'chunked' is", status=501, type="invalid_request_error",
                      code="unsupported_transfer_encoding")


def uri_too_long(most: int) -> ProxyError:
    return ProxyError(f"Request line longer than {most} bytes", status=414,
                      type="invalid_request_error", code="uri_too_long")


def headers_too_large(most: int, count: int) -> ProxyError:
    return ProxyError(f"Request headers larger than {most} bytes, or more than {count} of them",
                      status=431, type="invalid_request_error", code="headers_too_large")


def bad_line_end() -> InvalidRequest:
    return InvalidRequest("Malformed HTTP request: lines must end with CRLF, and may not "
                          "hold control characters", code="invalid_line_ending")


def bad_host() -> InvalidRequest:
    return InvalidRequest("An HTTP/1.1 request must carry exactly one Host header, "
                          "in ASCII", code="invalid_header")


def coding_on_http10() -> InvalidRequest:
    return InvalidRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request",
                          code="invalid_framing")


def too_slow(part: str, seconds: float) -> ProxyError:
    return ProxyError(f"The request {part} did not arrive in time ({seconds:g} s)",
                      status=408, type="invalid_request_error", code="request_timeout")


__all__ = [
    "bad_framing", "bad_host", "bad_line_end", "coding_on_http10", "excerpt", "header_error",
    "headers_too_large", "request_line_error", "response", "too_slow", "unsupported_coding",
    "uri_too_long",
]
