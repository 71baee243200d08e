"""
Building requests byte by byte: the L{Case} type and the helpers every
class of bad request uses.  Requests are independent of the proxy's port
(C{Host: 127.0.0.1}); the proxy key and backend names are those of
L{bench.adversary.proxy}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bench.adversary import GOOD, PROXY_KEY

REJECT = "reject"
ACCEPT = "accept"

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
DROP = object()


@dataclass(frozen=True)
class Case:
    """
    One request.

    @ivar group: its class, for the tally.
    @ivar expect: L{REJECT} (a 4xx or a clean close) or L{ACCEPT} (a 2xx).
    @ivar upload: written again and again after C{data} until the exchange
        ends (an upload that never ends).
    @ivar exclusive: heavy for the proxy: run alone, then wait until the
        proxy answers again.
    @ivar also: statuses besides 4xx that are a right answer to this bad
        request (with an OpenAI error body), such as 505 for HTTP/2.0.
    """

    name: str
    group: str
    data: bytes
    expect: str = REJECT
    upload: bytes = b""
    exclusive: bool = False
    also: tuple[int, ...] = ()


def request(method: str = "POST", path: str = CHAT, body: bytes = b"",
            headers: tuple[tuple[str, str], ...] = (), *, version: str = "HTTP/1.1",
            auth: bool = True, length: bool = True, eol: str = "\r\n") -> bytes:
    """
    The bytes of one request: Host, then the proxy key (C{auth}), then a
    JSON Content-Type and a Content-Length (C{length}) for a POST or a
    body, then C{headers}.
    """
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    if auth:
        lines.append(f"Authorization: Bearer {PROXY_KEY}")
    if body or method == "POST":
        lines.append("Content-Type: application/json")
        if length:
            lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in headers]
    head = eol.join(lines) + eol + eol
    return head.encode("latin-1", "surrogateescape") + body


def raw(*lines: bytes, body: bytes = b"") -> bytes:
    """
    Lines joined by CRLF, the empty line, then C{body}.
    """
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chat_fields(**fields: Any) -> dict[str, Any]:
    """
    A valid chat body with C{fields} set (to L{DROP}: removed).
    """
    body: dict[str, Any] = {"model": f"{GOOD}:m", "messages": [{"role": "user", "content": "hi"}]}
    for name, value in fields.items():
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def chat_body(**fields: Any) -> bytes:
    """
    L{chat_fields} as JSON bytes.
    """
    return json.dumps(chat_fields(**fields)).encode()


OK_BODY = chat_body()
OK_BODY_TEXT = OK_BODY.decode()


def chat_request(body: bytes, **kw: Any) -> bytes:
    """
    A POST of C{body} to the chat path (see L{request} for C{kw}).
    """
    return request("POST", CHAT, body, **kw)


def get(path: str, **kw: Any) -> bytes:
    """
    A GET of C{path} (see L{request} for C{kw}).
    """
    return request("GET", path, **kw)


def get_bytes(target: bytes, extra: bytes = b"") -> bytes:
    """
    A GET of a raw target, with C{extra} header lines (CRLF-terminated).
    """
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"


def framed_chat(*headers: str, body: bytes = OK_BODY) -> bytes:
    """
    A POST to the chat path whose framing headers (C{Content-Length},
    C{Transfer-Encoding}) are C{headers}, as given.
    """
    return raw(f"POST {CHAT} HTTP/1.1".encode(), b"Host: 127.0.0.1",
               f"Authorization: Bearer {PROXY_KEY}".encode(), b"Content-Type: application/json",
               *(h.encode("latin-1") for h in headers), body=body)


def chunk(data: bytes) -> bytes:
    """
    One chunk of a chunked body.
    """
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def chunked(body: bytes) -> bytes:
    """
    C{body} as a whole chunked body: one chunk and the last chunk.
    """
    return chunk(body) + b"0\r\n\r\n"


__all__ = ["ACCEPT", "CHAT", "DROP", "OK_BODY", "OK_BODY_TEXT", "REJECT", "RESPONSES", "Case",
           "chat_body", "chat_fields", "chat_request", "chunk", "chunked", "framed_chat", "get",
           "get_bytes", "raw", "request"]
