"""
Bad requests at the HTTP layer: request lines, methods, versions, control
bytes, sizes, header counts and syntax, body framing, chunk sizes, bare LF
line ends.  Each generator yields C{(label, bytes)}.
"""

from __future__ import annotations

import random
from typing import Iterator

from bench.adversary import PROXY_KEY
from bench.adversary.build import (
    CHAT, OK_BODY, chat_request, chunked, framed_chat, get, get_bytes, raw, request,
)


def request_line() -> Iterator[tuple[str, bytes]]:
    """
    Malformed request lines, and bytes that are not HTTP at all.
    """
    rnd = random.Random(1)
    yield "method only", b"GET\r\n\r\n"
    yield "no version (HTTP/0.9 style)", b"GET /healthz\r\n\r\n"
    yield "double space", raw(b"GET  /healthz HTTP/1.1", b"Host: x")
    yield "leading space", raw(b" GET /healthz HTTP/1.1", b"Host: x")
    yield "extra word", raw(b"GET /healthz HTTP/1.1 extra", b"Host: x")
    yield "tabs as separators", raw(b"GET\t/healthz\tHTTP/1.1", b"Host: x")
    yield "TLS client hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + rnd.randbytes(64)
    yield "HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    yield "random binary", rnd.randbytes(512) + b"\r\n\r\n"
    yield "spaces only", b"   \r\n\r\n"
    yield "asterisk target on GET", raw(b"GET * HTTP/1.1", b"Host: x")
    yield "CONNECT authority", raw(b"CONNECT 127.0.0.1:443 HTTP/1.1", b"Host: 127.0.0.1:443")
    yield "target without slash", raw(b"GET v1/models HTTP/1.1", b"Host: x")
    yield "no method", raw(b"/healthz HTTP/1.1", b"Host: x")
    yield "space inside target", raw(b"GET /he althz HTTP/1.1", b"Host: x")
    yield "stray CR in request line", raw(b"GET /healthz\r HTTP/1.1", b"Host: x")


def methods() -> Iterator[tuple[str, bytes]]:
    """
    Unknown, lowercase, absurd and oversized methods on C{/healthz}.
    """
    for label, method in [("lowercase get", b"get"), ("FOO", b"FOO"), ("BREW", b"BREW"),
                          ("M-SEARCH", b"M-SEARCH"), ("PROPFIND", b"PROPFIND"),
                          ("digits", b"123"), ("non-token char", b"G(ET"),
                          ("DEL in method", b"GET\x7f"), ("NUL in method", b"GE\x00T"),
                          ("1000-char method", b"A" * 1000),
                          ("20 KiB method", b"A" * 20000)]:
        yield label, raw(method + b" /healthz HTTP/1.1", b"Host: x")


def versions() -> Iterator[tuple[str, bytes]]:
    """
    Versions that are not HTTP/1.0 or HTTP/1.1, on C{/healthz}.
    """
    for version in [b"HTTP/2.0", b"HTTP/3", b"HTTP/9.9", b"HTTP/1", b"HTTP/1.1.1", b"http/1.1",
                    b"HTTP/-1.1", b"HTTPS/1.1", b"HTTP/1.1x", b"HTTP/", b"HTTP/0.9",
                    b"HTTP/1.10", b"HTTP/11", b"FTP/1.1", b"HTTP/1.1\x00", b"HTTP/\xff.1"]:
        yield repr(version)[2:-1], raw(b"GET /healthz " + version, b"Host: x")


def control_bytes() -> Iterator[tuple[str, bytes]]:
    """
    NUL and control bytes in the request line, headers and body.
    """
    yield "NUL in path", get_bytes(b"/healthz\x00")
    yield "SOH in path", get_bytes(b"/heal\x01thz")
    yield "ESC in path", get_bytes(b"/v1/models/\x1b[31m")
    yield "NUL in header name", get_bytes(b"/healthz", b"X-Fo\x00o: bar\r\n")
    yield "NUL in header value", get_bytes(b"/healthz", b"X-Foo: b\x00ar\r\n")
    yield "DEL in header name", get_bytes(b"/healthz", b"X-Fo\x7fo: bar\r\n")
    yield "lone CR in header value", get_bytes(b"/healthz", b"X-Foo: a\rb\r\n")
    yield "vertical tab in header name", get_bytes(b"/healthz", b"X-F\x0boo: bar\r\n")
    yield "form feed in header name", get_bytes(b"/healthz", b"X-\x0cFoo: bar\r\n")
    yield "NUL in Host", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\x00evil\r\n\r\n"
    yield "bare CR line ends", b"GET /healthz HTTP/1.1\rHost: x\r\r"
    yield "NUL in proxy key", request("POST", CHAT, OK_BODY, auth=False,
                                      headers=(("Authorization", f"Bearer {PROXY_KEY}\x00"),))
    yield "NUL inside JSON body", chat_request(OK_BODY[:-2] + b"\x00" + OK_BODY[-2:])


def oversize() -> Iterator[tuple[str, bytes]]:
    """
    URLs and headers over 16 KiB.
    """
    yield "URL of 17 KiB", get("/healthz?q=" + "a" * 17 * 1024, auth=False)
    yield "URL of 64 KiB", get("/v1/models/" + "m" * 64 * 1024)
    yield "chat URL of 20 KiB", chat_request(OK_BODY, auth=True).replace(
        CHAT.encode(), CHAT.encode() + b"?x=" + b"a" * 20 * 1024, 1)
    yield "header value of 17 KiB", get("/healthz", headers=(("X-Big", "v" * 17 * 1024),))
    yield "header name of 17 KiB", get("/healthz", headers=(("X" * 17 * 1024, "v"),))
    yield "8 headers of 8 KiB", get("/healthz", headers=tuple(
        (f"X-Big-{i}", "v" * 8 * 1024) for i in range(8)))
    yield "header of 256 KiB", get("/healthz", headers=(("Cookie", "c" * 256 * 1024),))


def header_count() -> Iterator[tuple[str, bytes]]:
    """
    More headers than a server should take.
    """
    for count in (501, 600, 1000, 2500):
        yield f"{count} headers", get("/healthz", headers=tuple(("a", "b") for _ in range(count)))
    yield "600 distinct headers on chat", chat_request(OK_BODY, headers=tuple(
        (f"x{i}", "1") for i in range(600)))


def header_syntax() -> Iterator[tuple[str, bytes]]:
    """
    Header lines without a colon or with bad whitespace; Host missing or twice.
    """
    yield "line without colon", get_bytes(b"/healthz", b"Foo\r\n")
    yield "words without colon", get_bytes(b"/healthz", b"Foo bar baz\r\n")
    yield "empty header name", get_bytes(b"/healthz", b": value\r\n")
    yield "space before colon", get_bytes(b"/healthz", b"Foo : bar\r\n")
    yield "tab-led first header", b"GET /healthz HTTP/1.1\r\n\tHost: x\r\n\r\n"
    yield "space-led first header", b"GET /healthz HTTP/1.1\r\n Host: x\r\n\r\n"
    yield "Content-Length without colon", raw(
        f"POST {CHAT} HTTP/1.1".encode(), b"Host: x", f"Authorization: Bearer {PROXY_KEY}".encode(),
        f"Content-Length {len(OK_BODY)}".encode(), body=OK_BODY)
    yield "no Host on HTTP/1.1", b"GET /healthz HTTP/1.1\r\n\r\n"
    yield "two Host headers", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"




def framing() -> Iterator[tuple[str, bytes]]:
    """
    Ambiguous or invalid body framing: CL+TE, unknown codings, bad lengths.
    """
    n = len(OK_BODY)
    whole = chunked(OK_BODY)
    yield "CL then TE", framed_chat(f"Content-Length: {n}", "Transfer-Encoding: chunked",
                                     body=whole)
    yield "TE then CL", framed_chat("Transfer-Encoding: chunked", f"Content-Length: {n}",
                                     body=whole)
    yield "TE chunked twice", framed_chat("Transfer-Encoding: chunked",
                                           "Transfer-Encoding: chunked", body=whole)
    yield "TE chunked, identity", framed_chat("Transfer-Encoding: chunked, identity",
                                               body=whole)
    yield "TE identity", framed_chat("Transfer-Encoding: identity", body=OK_BODY)
    yield "TE gzip only", framed_chat("Transfer-Encoding: gzip", body=OK_BODY)
    yield "TE xchunked", framed_chat("Transfer-Encoding: xchunked", body=whole)
    yield "TE chunked + VT", framed_chat("Transfer-Encoding: chunked\x0b", body=whole)
    yield "two different CLs", framed_chat(f"Content-Length: {n}", f"Content-Length: {n + 1}")
    yield "CL list 5, 6", framed_chat("Content-Length: 5, 6")
    yield "CL -1", framed_chat("Content-Length: -1")
    yield "CL abc", framed_chat("Content-Length: abc")
    yield "CL +N", framed_chat(f"Content-Length: +{n}")
    yield "CL hex", framed_chat(f"Content-Length: 0x{n:x}")
    yield "CL 2**70", framed_chat(f"Content-Length: {2 ** 70}")
    yield "CL with inner space", framed_chat(f"Content-Length: {str(n)[0]} {str(n)[1:]}")
    yield "CL empty", framed_chat("Content-Length: ")
    yield "TE on HTTP/1.0", framed_chat("Transfer-Encoding: chunked", body=whole).replace(
        b"HTTP/1.1", b"HTTP/1.0", 1)


def chunk_sizes() -> Iterator[tuple[str, bytes]]:
    """
    Invalid chunk sizes (the body is sent up to the bad one, then nothing).
    """
    part = OK_BODY[:20]
    for label, size_line in [("non-hex size", b"zz"), ("absurd size", b"f" * 24),
                             ("negative size", b"-5"), ("empty size line", b""),
                             ("0x prefix", b"0x14"), ("size with inner space", b"1 4"),
                             ("NUL in extension", b"14;ext\x00"),
                             ("2**63-1", b"7fffffffffffffff")]:
        yield label, framed_chat("Transfer-Encoding: chunked", body=size_line + b"\r\n" + part)
    yield "data longer than size", framed_chat(
        "Transfer-Encoding: chunked", body=b"5\r\n" + part + b"\r\n0\r\n\r\n")
    yield "20 KiB extension", framed_chat(
        "Transfer-Encoding: chunked", body=b"14;" + b"e" * 20 * 1024 + b"\r\n" + part)


def bare_lf() -> Iterator[tuple[str, bytes]]:
    """
    Line ends of a bare LF.
    """
    yield "GET all LF", b"GET /healthz HTTP/1.1\nHost: x\n\n"
    yield "request line CRLF, headers LF", b"GET /healthz HTTP/1.1\r\nHost: x\nX-A: b\n\n"
    yield "POST chat all LF", chat_request(OK_BODY, eol="\n")
    yield "LF-only final empty line", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\n"
    yield "chunked body with LF", framed_chat(
        "Transfer-Encoding: chunked", body=f"{len(OK_BODY):x}\n".encode() + OK_BODY + b"\n0\n\n")


__all__ = ["bare_lf", "chunk_sizes", "control_bytes", "framing", "header_count", "header_syntax",
           "methods", "oversize", "request_line", "versions"]
