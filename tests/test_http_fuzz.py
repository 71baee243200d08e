"""
A fuzzer over the HTTP request grammar (issue #10): request lines, headers,
framing and chunked bodies, built from their parts with bad variants of
each, then mutated (bytes flipped, inserted, cut) and delivered in pieces
of any size.  Whatever comes in, the client gets well-formed HTTP answers
(status line, headers, a body framed as announced, an OpenAI-shaped JSON
error for every 4xx and 5xx) or a clean close; never a traceback in the
log, never a connection left hanging: a complete request is answered at
once, anything else by the deadlines.

In memory, on a L{Clock}: llmproxy's own site over a L{StringTransport},
with scripted backends.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.memsite import USER, config_of, memory_app

KEY = "k-fuzz"
#: Longer than every deadline and Twisted's idle timeout (60 s).
QUIET = 90.0

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2}) [^\r\n]*")

# The parts of a request: good ones, and bad variants.

GOOD_METHODS = [b"GET", b"POST", b"HEAD"]
BAD_METHODS = [b"PUT", b"OPTIONS", b"DELETE", b"get", b"BREW", b"TRACE", b"CONNECT", b"",
               b"G(T", b"GE\x00T", b"A" * 300]
GOOD_PATHS = [b"/v1/chat/completions", b"/v1/responses", b"/v1/models", b"/v1/models/a:m",
              b"/v1/llmproxy/status", b"/healthz", b"/healthz?x=1"]
BAD_PATHS = [b"/", b"*", b"//healthz", b"/v1//chat/completions", b"/v1/models//x", b"/%ff",
             b"/v1/models/%c3%28", b"v1/models", b"/x\x80", b"/a b", b"http://h/v1/models",
             b"/" + b"p" * 300]
GOOD_VERSIONS = [b"HTTP/1.1", b"HTTP/1.0"]
BAD_VERSIONS = [b"HTTP/2.0", b"http/1.1", b"HTTP/1.1x", b"HTTP/0.9", b"", b"HTTP/3"]
GOOD_HEADERS = [(b"Accept", b"*/*"), (b"User-Agent", b"fuzz/1"), (b"Expect", b"100-continue"),
                (b"Connection", b"close"), (b"Connection", b"keep-alive"),
                (b"Content-Type", b"application/json"), (b"X-A", b" padded ")]
BAD_NAMES = [b"X\x00Y", b"X Y", b"", b"X:Y", b"\tX", b"Host"]
BAD_VALUES = [b"a\x00b", b"a\rb", b"\xff\xfe", b"v" * 200]
GOOD_BODIES = [json.dumps({"model": "a:m", "messages": USER}).encode(),
               json.dumps({"model": "a:m", "messages": USER, "stream": True}).encode(),
               json.dumps({"model": "a:m", "input": "hi"}).encode()]
BAD_BODIES = [b"{", b"", b"[]", b"\x00\xff", b"x" * 600]


def part(good: list[Any], bad: list[Any], valid: bool) -> st.SearchStrategy[Any]:
    """
    A good part when C{valid}; else mostly good, sometimes bad.
    """
    if valid:
        return st.sampled_from(good)
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))


@st.composite
def framed(draw: Any, valid: bool) -> tuple[list[bytes], bytes, bool]:
    """
    Framing headers, the body bytes after the head, and whether the body
    as framed is complete.
    """
    body = draw(part(GOOD_BODIES, BAD_BODIES, valid))
    kind = draw(part(["length", "length", "chunked", "none"],
                     ["bad-length", "both", "over", "short"], valid))
    if kind == "length":
        return [b"Content-Length: %d" % len(body)], body, True
    if kind == "none":
        return [], b"", True
    if kind == "bad-length":
        value = draw(st.sampled_from([b"-1", b"abc", b"1, 2", b"", b"+5", b"0x10", b"9" * 30]))
        return [b"Content-Length: " + value], body, True
    if kind == "both":
        return [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"], body, True
    if kind == "over":
        return [b"Content-Length: 100000000"], body, False
    if kind == "short":
        return [b"Content-Length: %d" % (len(body) + 50)], body, False
    sizes = draw(st.lists(st.integers(1, 64), max_size=4))
    pieces, at = [], 0
    for size in sizes:
        piece = body[at:at + size]
        at += len(piece)
        if piece:
            line = draw(part([b"%x" % len(piece), b"%X;ext=1" % len(piece)],
                             [b"zz", b"-1", b"f" * 20, b"%x " % len(piece)], valid))
            pieces.append(line + b"\r\n" + piece + b"\r\n")
    if at < len(body):
        pieces.append(b"%x\r\n" % (len(body) - at) + body[at:] + b"\r\n")
    end = draw(part([b"0\r\n\r\n", b"0\r\nT: 1\r\n\r\n"], [b"0\r\n", b"0\n\n", b""], valid))
    coding = draw(part([b"chunked"], [b"gzip", b"chunked, gzip"], valid))
    return [b"Transfer-Encoding: " + coding], b"".join(pieces) + end, end.endswith(b"\r\n\r\n")


@st.composite
def requests(draw: Any) -> tuple[bytes, bytes, bool]:
    """
    The method, the request's bytes, and whether it is complete (not cut
    short by construction; it may still be malformed).
    """
    valid = draw(st.booleans())
    method = draw(part(GOOD_METHODS, BAD_METHODS, valid))
    line = b" ".join([method, draw(part(GOOD_PATHS, BAD_PATHS, valid)),
                      draw(part(GOOD_VERSIONS, BAD_VERSIONS, valid))])
    headers = [b"Host: proxy"] if valid or draw(st.integers(0, 3)) else []
    auth = draw(part([b"Bearer " + KEY.encode()], [b"Bearer nope", b"", None], valid))
    if auth is not None:
        headers.append(b"Authorization: " + auth)
    names = st.sampled_from([n for n, _ in GOOD_HEADERS]) if valid else \
        part([n for n, _ in GOOD_HEADERS], BAD_NAMES, False)
    values = part([v for _, v in GOOD_HEADERS], BAD_VALUES, valid)
    headers += [n + b": " + v for n, v in draw(st.lists(st.tuples(names, values), max_size=4))]
    framing, body, complete = draw(framed(valid))
    headers += framing
    headers = draw(st.permutations(headers))
    eol = draw(part([b"\r\n"], [b"\n", b"\r", b"\r\r\n"], valid))
    data = eol.join([line, *headers]) + eol + eol + body
    return method, data, complete and eol == b"\r\n"


@st.composite
def mutated(draw: Any) -> tuple[bytes, bytes, bool]:
    method, data, complete = draw(requests())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "cut", "delete"]))
        if action == "flip" and at < len(data):
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
        elif action == "insert":
            data = data[:at] + draw(st.sampled_from(
                [b"\r\n", b"\n", b"\x00", b" ", b":", b"\r\n\r\n", b"0\r\n\r\n"])) + data[at:]
        elif action == "cut":
            data = data[:at]
        elif at < len(data):
            data = data[:at] + data[at + 1:]
        complete = False
    return method, data, complete


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)]) if data[a:b]]


def answers(data: bytes, closed: bool, head_first: bool) -> list[int]:
    """
    Parse C{data} as a sequence of whole HTTP answers (the first maybe to
    a HEAD request if C{head_first}); their statuses.  Fails unless every one is
    well formed, an error is OpenAI-shaped, and nothing is left over (a
    body without framing runs to the close).
    """
    statuses = []
    while data:
        top, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"unterminated head: {top[:200]!r}"
        lines = top.split(b"\r\n")
        match = _STATUS.fullmatch(lines[0])
        assert match, f"bad status line {lines[0]!r}"
        status = int(match.group(1))
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b": ")
            assert colon and name and b"\r" not in value and b"\n" not in value, line
            headers[name.lower()] = value
        if status == 100:
            continue
        # The answer to a HEAD request has no body, unless the request was
        # refused before its request line was read (then it has one).
        bodiless = status in (204, 304) or (head_first and not statuses and (
            not data or data.startswith(b"HTTP/1.")))
        if bodiless:
            body = b""
        elif headers.get(b"transfer-encoding") == b"chunked":
            body, data = _dechunk(data)
        elif b"content-length" in headers:
            size = int(headers[b"content-length"])
            assert len(data) >= size, "body shorter than its Content-Length"
            body, data = data[:size], data[size:]
        else:
            assert closed, "a body without framing, and the connection still open"
            body, data = data, b""
        if status >= 400 and not bodiless:
            assert headers.get(b"content-type") == b"application/json", (status, headers)
            error = json.loads(body)["error"]
            assert set(error) == {"message", "type", "param", "code"}, error
            assert isinstance(error["message"], str) and error["message"]
        statuses.append(status)
    return statuses


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    out = []
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        assert sep, "unterminated chunk size"
        size = int(size_line, 16)
        if size == 0:
            assert data.startswith(b"\r\n"), "no end of chunked body"
            return b"".join(out), data[2:]
        assert data[size:size + 2] == b"\r\n", "chunk without its CRLF"
        out.append(data[:size])
        data = data[size + 2:]


class HTTPFuzzTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.app = memory_app(config_of({"a": {}}, proxy_keys=[KEY]), self.clock)
        self.site = self.app.site()
        self.failures: list[LogEvent] = []

        def watch(event: LogEvent) -> None:
            if "log_failure" in event or "failure" in event or "isError" in event and \
                    event["isError"]:
                self.failures.append(event)

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)

    def serve(self, data: bytes, cuts: list[int]) -> tuple[StringTransport, Any]:
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 999))
        channel = self.site.buildProtocol(None)
        channel.makeConnection(transport)
        for piece in pieces(data, cuts):
            if transport.disconnecting:
                break
            channel.dataReceived(piece)
        return transport, channel

    @given(mutated() | requests(), st.lists(st.integers(0, 10_000), max_size=5))
    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def test_always_an_answer_or_a_clean_close(self, request: tuple[bytes, bytes, bool],
                                               cuts: list[int]) -> None:
        method, data, complete = request
        transport, channel = self.serve(data, cuts)
        self.clock.advance(0)
        self.clock.advance(0.5)
        if complete:
            # A whole request (well formed or not) is answered at once.
            self.assertTrue(transport.value(), data)
        waited = 0.0
        while not transport.disconnecting and waited < QUIET:
            self.clock.advance(1)
            waited += 1
        self.assertTrue(transport.disconnecting, f"still open after {QUIET} s: {data!r}")
        first = data[2:] if data.startswith(b"\r\n") else data
        statuses = answers(transport.value(), True, first.startswith(b"HEAD "))
        for status in statuses:
            self.assertLess(status, 600)
        self.assertEqual(self.failures, [], data)
        channel.connectionLost(Failure(ConnectionDone()))
