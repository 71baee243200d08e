"""
The HTTP layer under abuse (issue #10, items 6, 7, 9, 11, 12): every request
the connection refuses gets an OpenAI-shaped JSON error with its status and
C{Connection: close}, then the connection closes; auth and the body limit
are decided when the headers are in; deadlines end slow heads and bodies; a
repeated slash is an unknown path on every route; the listen backlog fits a
burst.  Raw sockets against an in-process llmproxy where the wire is under
test, a L{Clock} over a L{StringTransport} where time is.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel
from zope.interface import implementer

from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.errors import ProxyError
from llmproxy.exchange.events import REPLY_NAMESPACE
from llmproxy.frontends import app as app_module
from llmproxy.frontends.channel import ChannelLimits, ProxyChannel
from llmproxy.frontends.chunked import ChunkedBody
from llmproxy.service import BACKLOG, ProxyService, with_backlog
from tests.harness import Proxy, base_config, start
from tests.memsite import USER, config_of, memory_app

KEY = "k-proxy-1"
LIMIT = 4096
CHAT = json.dumps({"model": "openai:gpt-4o", "messages": USER}).encode()


def _keyed(upstream: str) -> dict[str, Any]:
    return base_config(upstream, proxy_keys=[KEY], max_body_bytes=LIMIT)


def head(method: str, path: str, *headers: str, version: str = "HTTP/1.1",
         key: bool = True) -> bytes:
    lines = [f"{method} {path} {version}", "Host: proxy"]
    lines += [f"Authorization: Bearer {KEY}"] if key else []
    return ("\r\n".join(lines + list(headers)) + "\r\n\r\n").encode()


def chat(*headers: str, key: bool = True, body: bytes = CHAT) -> bytes:
    return head("POST", "/v1/chat/completions", f"Content-Length: {len(body)}",
                *headers, key=key) + body


class Answer:
    """
    A parsed answer: status, headers (lower-case names, last value), body.
    """

    def __init__(self, data: bytes) -> None:
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        self.body = rest[:int(self.headers["content-length"])] \
            if "content-length" in self.headers else rest

    def error(self) -> dict[str, Any]:
        """
        The OpenAI error object of the body; fails unless it is one.
        """
        assert self.headers.get("content-type") == "application/json", self.headers
        error = json.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        return dict(error)


def _whole(data: bytes) -> bool:
    """
    Whether C{data} holds a whole answer framed by its Content-Length.
    """
    top, sep, rest = data.partition(b"\r\n\r\n")
    for line in top.split(b"\r\n")[1:] if sep else ():
        name, _, value = line.partition(b": ")
        if name.lower() == b"content-length":
            return len(rest) >= int(value)
    return bool(sep)


@implementer(IPushProducer)
class RawClient(Protocol):
    """
    One connection: what it received, when, and how it ended; optionally an
    endless upload after the request, written as fast as the server reads.
    """

    def __init__(self, request: bytes, upload: bytes = b"") -> None:
        self.request = request
        self.data = bytearray()
        self.upload = upload
        self.paused = False
        self.first_byte: float | None = None
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.uploaded = 0

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]
        if self.upload:
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self._pump()

    def _pump(self) -> None:
        if self.paused or self.ended.called:
            return
        self.transport.write(self.upload)  # type: ignore[union-attr]
        self.uploaded += len(self.upload)
        reactor.callLater(0, self._pump)  # type: ignore[attr-defined]

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self._pump()

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        self.data += data

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.reason = reason
        self.ended.callback(None)


class RawTestCase(TestCase):
    """
    Raw exchanges with a running llmproxy (auth on, a 4 KiB body limit).
    """

    proxy: Proxy

    async def setUp(self) -> None:
        self.proxy = await start(self, _keyed)
        self.port = int(self.proxy.url.rsplit(":", 1)[1])

    async def exchange(self, data: bytes, upload: bytes = b"", within: float = 1.0,
                       close: bool = True) -> tuple[Answer, float]:
        """
        Send C{data}; the answer, and the seconds until its first byte
        (under C{within}).  With C{close}, the server must have closed the
        connection within half a second more.
        """
        client = RawClient(data, upload)
        began = time.monotonic()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        assert client.transport is not None
        if close:
            timer = reactor.callLater(within + 1, client.transport.abortConnection)  # type: ignore
            await client.ended
            if timer.active():
                timer.cancel()
            self.assertLess(time.monotonic() - began, within + 0.5, "closed in time")
        else:
            for _ in range(int(within * 100)):
                if _whole(bytes(client.data)):
                    break
                await deferLater(reactor, 0.01)
            client.transport.loseConnection()
            await client.ended
        await self.server_side_closed()
        self.assertTrue(client.data, "no answer")
        assert client.first_byte is not None
        elapsed = client.first_byte - began
        self.assertLess(elapsed, within)
        answer = Answer(bytes(client.data))
        if close:
            self.assertEqual(answer.headers.get("connection"), "close")
        return answer, elapsed

    async def server_side_closed(self) -> None:
        """
        Wait until llmproxy saw the end of every connection.
        """
        for _ in range(300):
            if not any(isinstance(getattr(r, "protocol", None), ProxyChannel)
                       for r in reactor.getReaders()):  # type: ignore[attr-defined]
                return
            await deferLater(reactor, 0.01)
        self.fail("llmproxy kept a connection open")


class RejectionTests(RawTestCase):
    """
    Item 7: protocol-level faults get an OpenAI-shaped error with their
    status and Connection: close, then the connection closes, within 1 s.
    """

    CASES: list[tuple[str, bytes, int, str]] = [
        ("malformed request line", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400,
         "invalid_request_line"),
        ("method only", b"GET\r\n\r\n", 400, "invalid_request_line"),
        ("too many headers", head("GET", "/healthz", *["a: b"] * 600), 431,
         "headers_too_large"),
        ("header of 17 KiB", head("GET", "/healthz", "X-Big: " + "v" * 17 * 1024), 431,
         "headers_too_large"),
        ("headers of 24 KiB", head("GET", "/healthz", *[f"X-{i}: " + "v" * 8000
                                                          for i in range(3)]), 431,
         "headers_too_large"),
        ("URL of 20 KiB", head("GET", "/healthz?q=" + "a" * 20 * 1024), 414, "uri_too_long"),
        ("URL of 64 KiB", head("GET", "/v1/models/" + "m" * 64 * 1024), 414, "uri_too_long"),
        ("CL and TE", chat("Transfer-Encoding: chunked"), 400, "invalid_framing"),
        ("two CLs", chat("Content-Length: 7"), 400, "invalid_framing"),
        ("CL not a number", head("POST", "/v1/chat/completions", "Content-Length: abc"), 400,
         "invalid_framing"),
        ("TE gzip", head("POST", "/v1/chat/completions", "Transfer-Encoding: gzip"), 501,
         "unsupported_transfer_encoding"),
        ("TE identity", head("POST", "/v1/chat/completions", "Transfer-Encoding: identity"),
         501, "unsupported_transfer_encoding"),
        ("TE on HTTP/1.0", head("POST", "/v1/chat/completions", "Transfer-Encoding: chunked",
                                version="HTTP/1.0") + b"0\r\n\r\n", 400, "invalid_framing"),
        ("non-hex chunk size", head("POST", "/v1/chat/completions",
                                    "Transfer-Encoding: chunked") + b"zz\r\nabc", 400,
         "invalid_chunked_body"),
        ("absurd chunk size", head("POST", "/v1/chat/completions",
                                   "Transfer-Encoding: chunked") + b"f" * 24 + b"\r\nabc", 400,
         "invalid_chunked_body"),
        ("chunk data past its size", head("POST", "/v1/chat/completions",
                                          "Transfer-Encoding: chunked")
         + b"2\r\nabcdef\r\n0\r\n\r\n", 400, "invalid_chunked_body"),
        ("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505,
         "http_version_not_supported"),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505,
         "http_version_not_supported"),
        ("http/1.1", b"GET /healthz http/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request_line"),
        ("NUL in header value", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400,
         "invalid_header"),
        ("NUL in path", b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n", 400,
         "invalid_request_line"),
        ("line without colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nFoo\r\n\r\n", 400,
         "invalid_header"),
        ("no Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400, "invalid_header"),
        ("two Hosts", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400,
         "invalid_header"),
        ("all bare LF", b"GET /healthz HTTP/1.1\nHost: x\n\n", 400, "invalid_line_ending"),
        ("headers bare LF", b"GET /healthz HTTP/1.1\r\nHost: x\nX-A: b\n\n", 400,
         "invalid_line_ending"),
        ("bare CR", b"GET /healthz HTTP/1.1\rHost: x\r\r", 400, "invalid_line_ending"),
        ("chunked body with LF", head("POST", "/v1/chat/completions",
                                      "Transfer-Encoding: chunked")
         + b"%x\n" % len(CHAT) + CHAT + b"\n0\n\n", 400, "invalid_chunked_body"),
        ("TLS client hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"r" * 64, 400,
         "invalid_line_ending"),
        ("unknown method", head("BREW", "/healthz"), 501, "method_not_implemented"),
        ("lowercase get", head("get", "/healthz"), 501, "method_not_implemented"),
        ("asterisk target", head("GET", "*"), 400, "invalid_request_target"),
    ]

    #: Refused by the site (the request was whole): the connection stays.
    KEPT = {"unknown method", "lowercase get", "asterisk target"}

    async def test_each_fault_is_answered(self) -> None:
        for label, data, status, code in self.CASES:
            answer, _ = await self.exchange(data, close=label not in self.KEPT)
            self.assertEqual((answer.status, answer.error()["code"]), (status, code), label)

    async def test_head_refusal_has_no_body(self) -> None:
        answer, _ = await self.exchange(head("HEAD", "/v1/models", key=False))
        self.assertEqual((answer.status, answer.body), (401, b""))


class DoubleSlashTests(RawTestCase):
    """
    Item 6: a repeated slash is an unknown path (a JSON 404) on every
    route, the hot POSTs included; never a 500, never a traceback.
    """

    async def test_every_route(self) -> None:
        gets = ["/v1//models", "/v1/models//x", "/v1/llmproxy//status", "//healthz", "//",
                "/v1/models/x//y", "//v1/models"]
        posts = ["/v1//chat/completions", "//v1/chat/completions", "/v1/chat//completions",
                 "/v1//responses"]
        for method, path in [("GET", p) for p in gets] + [("POST", p) for p in posts]:
            data = chat() if method == "POST" else head("GET", path)
            data = data.replace(b"/v1/chat/completions", path.encode(), 1)
            answer, _ = await self.exchange(data, close=False)
            error = answer.error()
            self.assertEqual(answer.status, 404, path)
            self.assertIn(error["code"], ("unknown_url", "model_not_found"), path)
        self.assertEqual(self.proxy.fake.requests, [])

    async def test_not_utf8_after_decoding(self) -> None:
        """
        Klein would log a traceback for these (and answer without JSON).
        """
        for path in ["/%ff", "/v1/models/%c3%28", "/\x80"]:
            answer, _ = await self.exchange(head("GET", path).replace(
                path.encode("utf-8"), path.encode("latin-1")), close=False)
            self.assertEqual((answer.status, answer.error()["code"]), (404, "unknown_url"))


class HostNameTests(RawTestCase):
    """
    A Host that IDNA refuses (werkzeug would raise while binding Klein's URL
    map, a bare 500) is a JSON 400 on the Klein routes; the hot POSTs do
    not route by host and serve it.
    """

    async def test_klein_routes(self) -> None:
        for host in ["a..b", ".", "x" * 64 + ".example"]:
            data = head("GET", "/v1/models").replace(b"Host: proxy", f"Host: {host}".encode())
            answer, _ = await self.exchange(data, close=False)
            self.assertEqual((answer.status, answer.error()["code"]), (400, "invalid_header"),
                             host)

    async def test_hot_route(self) -> None:
        answer, _ = await self.exchange(chat().replace(b"Host: proxy", b"Host: a..b"),
                                        close=False)
        self.assertEqual(answer.status, 200)


class EarlyDecisionTests(RawTestCase):
    """
    Item 9: the key and the body limit are decided at the end of the
    headers, before the body.
    """

    async def test_no_key_and_a_body_never_sent(self) -> None:
        answer, _ = await self.exchange(chat(key=False).replace(
            f"Content-Length: {len(CHAT)}".encode(), b"Content-Length: 10000000000")[:-len(CHAT)])
        self.assertEqual((answer.status, answer.error()["code"]), (401, "invalid_api_key"))

    async def test_wrong_key(self) -> None:
        answer, _ = await self.exchange(chat("Authorization: Bearer nope", key=False))
        self.assertEqual(answer.status, 401)
        self.assertNotIn("nope", answer.error()["message"])

    async def test_two_authorization_headers(self) -> None:
        answer, _ = await self.exchange(chat("Authorization: Bearer nope"))
        self.assertEqual(answer.status, 401)

    async def test_length_over_the_limit(self) -> None:
        answer, _ = await self.exchange(head("POST", "/v1/chat/completions",
                                             f"Content-Length: {LIMIT + 1}"))
        self.assertEqual((answer.status, answer.error()["code"]), (413, "request_too_large"))

    async def test_no_key_upload_never_ends(self) -> None:
        """
        The client keeps sending: it still gets its whole answer, not a
        reset, and the connection ends within the linger.
        """
        data = chat(key=False).replace(f"Content-Length: {len(CHAT)}".encode(),
                                       b"Content-Length: 10000000000")[:-len(CHAT)]
        answer, _ = await self.exchange(data, upload=b"x" * 65536, within=1.0)
        self.assertEqual(answer.status, 401)

    async def test_whole_body_sent_before_reading(self) -> None:
        """
        A client that writes its whole request before it reads (as most
        do), with a wrong key, still gets its 401: llmproxy reads and
        drops the body meanwhile rather than reset the connection.
        """
        body = b'{"model": "m", "messages": [], "pad": "' + b"x" * (3 << 20) + b'"}'
        data = chat("Authorization: Bearer nope", key=False, body=body)

        def blocking() -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(data)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                return received

        answer = Answer(await deferToThread(blocking))
        self.assertEqual((answer.status, answer.error()["code"]), (401, "invalid_api_key"))
        await self.server_side_closed()

    async def test_chunked_upload_past_the_limit_never_ends(self) -> None:
        data = head("POST", "/v1/chat/completions", "Transfer-Encoding: chunked")
        answer, _ = await self.exchange(data, upload=b"400\r\n" + b"x" * 1024 + b"\r\n")
        self.assertEqual((answer.status, answer.error()["code"]), (413, "request_too_large"))

    async def test_chunked_body_within_the_limit_is_served(self) -> None:
        data = head("POST", "/v1/chat/completions", "Transfer-Encoding: chunked") + \
            b"".join(b"%x\r\n%s\r\n" % (len(CHAT[i:i + 7]), CHAT[i:i + 7])
                     for i in range(0, len(CHAT), 7)) + b"0\r\nX-Trailer: 1\r\n\r\n"
        answer, _ = await self.exchange(data, close=False)
        self.assertEqual(answer.status, 200, answer.body)

    async def test_health_needs_no_key(self) -> None:
        answer, _ = await self.exchange(head("GET", "/healthz", key=False), close=False)
        self.assertEqual(answer.status, 200)

    async def test_unknown_paths_need_a_key(self) -> None:
        answer, _ = await self.exchange(head("GET", "/admin", key=False))
        self.assertEqual(answer.status, 401)

    async def test_the_runtime_keys(self) -> None:
        """
        The gate reads the keys of the runtime requests run on now.
        """
        data = _keyed(self.proxy.upstream)
        data["proxy_keys"] = ["k-new"]
        self.proxy.service.use_config(build_config(data, environ={}, source="new.yaml",
                                                   kinds=REGISTRY.kinds))
        answer, _ = await self.exchange(chat())
        self.assertEqual(answer.status, 401)
        answer, _ = await self.exchange(chat("Authorization: Bearer k-new", key=False),
                                        close=False)
        self.assertEqual(answer.status, 200)

    async def test_one_key_check_per_request(self) -> None:
        """
        The hot path checks the key once: at the gate, not again in the
        handler.
        """
        calls: list[object] = []
        real = app_module.check_key

        def counting(*args: Any) -> None:
            calls.append(args)
            real(*args)

        self.patch(app_module, "check_key", counting)
        answer, _ = await self.exchange(chat(), close=False)
        self.assertEqual((answer.status, len(calls)), (200, 1))


@implementer(ITCPTransport)
class TCPTransport(StringTransport):
    """
    A L{StringTransport} that half-closes and aborts, as TCP does.
    """

    half_closed = False
    aborted = False

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.9", 1234))

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def loseWriteConnection(self) -> None:
        self.half_closed = True

    def abortConnection(self) -> None:
        self.aborted = True


class ClockedChannel:
    """
    One connection to a site of C{app} over a L{StringTransport}, on a
    L{Clock}, with deadlines C{limits}.
    """

    def __init__(self, app: Any, clock: Clock, limits: ChannelLimits | None = None,
                 transport: StringTransport | None = None) -> None:
        site = app.site()
        site.reactor = clock
        if limits is not None:
            site.limits = limits
        self.transport = transport or StringTransport(
            peerAddress=IPv4Address("TCP", "10.0.0.9", 1234))
        self.channel = site.buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def answer(self) -> Answer:
        return Answer(self.transport.value())


class DeadlineTests(SynchronousTestCase):
    """
    Item 11: a slow head or body is cut by its deadline (Twisted's idle
    timer, reset by every byte, never was), and everyone else is served
    meanwhile.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = memory_app(config_of({"a": {}}), self.clock)

    def drip(self, conn: ClockedChannel, data: bytes, every: float) -> None:
        for i in range(len(data)):
            if conn.transport.disconnecting:
                return
            conn.send(data[i:i + 1])
            self.clock.advance(every)

    def test_header_deadline(self) -> None:
        slow = ClockedChannel(self.app, self.clock, ChannelLimits(header_timeout=10))
        data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        self.drip(slow, data, 3.0)
        self.assertTrue(slow.transport.disconnecting)
        answer = slow.answer()
        self.assertEqual((answer.status, answer.error()["code"]), (408, "request_timeout"))
        self.assertEqual(self.clock.seconds(), 12.0, "cut 10 s after the first byte")

    def test_others_are_served_meanwhile(self) -> None:
        slow = ClockedChannel(self.app, self.clock)
        slow.send(b"GET /healthz HTTP/1.1\r\nHo")
        self.clock.advance(5)
        other = ClockedChannel(self.app, self.clock)
        other.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(other.answer().status, 200)
        self.assertEqual(slow.transport.value(), b"")
        self.clock.advance(5)
        self.assertEqual(slow.answer().status, 408)
        self.assertFalse(other.transport.disconnecting)

    def test_body_deadline(self) -> None:
        slow = ClockedChannel(self.app, self.clock)
        slow.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(CHAT))
        self.drip(slow, CHAT, 3.0)
        answer = slow.answer()
        self.assertEqual((answer.status, answer.error()["code"]), (408, "request_timeout"))
        self.assertTrue(19.9 < self.clock.seconds() < 21.1, self.clock.seconds())

    def test_slow_but_steady_body_is_served(self) -> None:
        """
        The body deadline grows by a second per C{body_min_rate} bytes: a
        body at twice that rate is never cut, however long it takes.
        """
        limits = ChannelLimits(body_timeout=2, body_min_rate=100)
        conn = ClockedChannel(self.app, self.clock, limits)
        body = json.dumps({"model": "a:m", "messages": USER, "user": "u" * 2000}).encode()
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 20):
            self.assertFalse(conn.transport.disconnecting, i)
            conn.send(body[i:i + 20])
            self.clock.advance(0.1)
        self.clock.advance(1)
        self.assertEqual(conn.answer().status, 200)
        self.assertGreater(self.clock.seconds(), 10)

    def test_a_whole_request_costs_no_timer(self) -> None:
        """
        The deadlines are armed only when a head or body is still
        incomplete after the bytes at hand; a whole request sees only the
        idle timer Twisted re-arms after each request.
        """
        conn = ClockedChannel(self.app, self.clock)
        armed: list[float] = []
        call_later = conn.channel.callLater

        def recording(delay: float, f: Any, *a: Any, **kw: Any) -> Any:
            armed.append(delay)
            return call_later(delay, f, *a, **kw)

        conn.channel.callLater = recording
        body = json.dumps({"model": "a:m", "messages": USER}).encode()
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.clock.advance(0)
        self.assertEqual(conn.answer().status, 200)
        self.assertEqual(armed, [60])
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        conn.send(b"Content-Length: %d\r\n\r\n" % len(body) + body[:5])
        self.assertEqual(armed, [60, 10, 20])

    def test_idle_keepalive_is_twisteds(self) -> None:
        """
        Between requests the idle timeout is Twisted's, untouched.
        """
        conn = ClockedChannel(self.app, self.clock)
        conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(conn.channel.timeOut, 60)
        self.clock.advance(59)
        self.assertFalse(conn.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(conn.transport.disconnecting)

    def test_linger_ends_in_an_abort(self) -> None:
        """
        After a refusal, what the client still sends is dropped, and the
        connection is aborted after the linger, or sooner past its bytes.
        """
        limits = ChannelLimits(linger=2, linger_bytes=1000)
        conn = ClockedChannel(self.app, self.clock, limits, TCPTransport())
        conn.send(b"GET\r\n\r\n")
        tcp = conn.transport
        assert isinstance(tcp, TCPTransport)
        self.assertEqual((conn.answer().status, tcp.half_closed, tcp.disconnecting),
                         (400, True, False))
        conn.send(b"x" * 500)
        self.clock.advance(1.9)
        self.assertFalse(tcp.aborted)
        self.clock.advance(0.2)
        self.assertTrue(tcp.aborted)
        other = ClockedChannel(self.app, self.clock, limits, TCPTransport())
        other.send(b"GET\r\n\r\n" + b"x" * 2000)
        assert isinstance(other.transport, TCPTransport)
        self.assertTrue(other.transport.aborted)


class GateTests(SynchronousTestCase):
    """
    Item 9, in memory: what the gate sees, and the refusals' reply events.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = memory_app(config_of({"a": {}}, proxy_keys=[KEY]), self.clock)

    def test_refusals_are_reply_events(self) -> None:
        seen: list[dict[str, Any]] = []
        self.app.events.addObserver(seen.append)
        conn = ClockedChannel(self.app, self.clock)
        conn.send(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t/1\r\n"
                  b"Content-Length: 5\r\n\r\n")
        (event,) = [e for e in seen if e["log_namespace"] == REPLY_NAMESPACE]
        self.assertEqual(
            {k: event[k] for k in ("method", "path", "protocol", "client", "user_agent",
                                   "status", "completed", "route", "attempts")},
            {"method": "POST", "path": "/v1/chat/completions", "protocol": "HTTP/1.1",
             "client": "10.0.0.9", "user_agent": "t/1", "status": 401, "completed": True,
             "route": None, "attempts": 0})
        self.assertEqual(event["bytes"], len(conn.answer().body))

    def test_no_continue_for_a_refused_request(self) -> None:
        conn = ClockedChannel(self.app, self.clock)
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 5\r\n\r\n")
        self.assertTrue(conn.transport.value().startswith(b"HTTP/1.1 401 "))

    def test_continue_for_an_admitted_one(self) -> None:
        conn = ClockedChannel(self.app, self.clock)
        conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(conn.transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")

    def test_loop_guard_comes_before_auth(self) -> None:
        conn = ClockedChannel(self.app, self.clock)
        conn.send(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Llmproxy-Loop-Guard: 1\r\n\r\n")
        answer = conn.answer()
        self.assertEqual((answer.status, answer.error()["code"]), (400, "proxy_loop_detected"))

    def test_options_asterisk(self) -> None:
        conn = ClockedChannel(self.app, self.clock)
        conn.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + KEY.encode() + b"\r\n\r\n")
        self.assertEqual(conn.answer().status, 204)


class ChunkedBodyTests(SynchronousTestCase):
    """
    The strict chunked decoder: the same body however the bytes are cut,
    and every error reported once, at once.
    """

    def decode(self, pieces: list[bytes], limit: int = 1000) -> tuple[bytes, Any, list[Any]]:
        data: list[bytes] = []
        ends: list[bytes] = []
        errors: list[ProxyError] = []
        body = ChunkedBody(data.append, ends.append, errors.append, limit)
        for piece in pieces:
            if ends or errors:
                break
            body.feed(piece)
        return b"".join(data), ends, errors

    @given(st.lists(st.binary(min_size=1, max_size=40), max_size=8),
           st.lists(st.integers(0, 400), max_size=6))
    @settings(max_examples=150, deadline=None)
    def test_any_cut(self, chunks: list[bytes], cuts: list[int]) -> None:
        wire = b"".join(b"%x;e=1\r\n%s\r\n" % (len(c), c) for c in chunks) \
            + b"0\r\nT: 1\r\n\r\nNEXT"
        points = sorted({min(c, len(wire)) for c in cuts})
        pieces = [wire[a:b] for a, b in zip([0] + points, points + [len(wire)])]
        data, ends, errors = self.decode(pieces)
        self.assertEqual((data, errors), (b"".join(chunks), []))
        self.assertEqual(len(ends), 1)
        # What came after the end, then or later, is the channel's again.
        self.assertTrue(b"NEXT".startswith(ends[0]))

    def test_errors(self) -> None:
        for wire, status in [(b"zz\r\n", 400), (b"5\nabcde\r\n", 400), (b"-5\r\n", 400),
                             (b"1 4\r\n", 400), (b"0x14\r\n", 400), (b"f" * 17 + b"\r\n", 400),
                             (b"2\r\nabc\r\n", 400), (b"3e9\r\n", 413),
                             (b"3e8\r\n" + b"x" * 1000 + b"\r\n1\r\n", 413),
                             (b"1;" + b"e" * 2000, 400), (b"1;a\x00\r\n", 400)]:
            data, ends, errors = self.decode([wire])
            self.assertEqual([e.status for e in errors], [status], wire)
            self.assertEqual(ends, [])


class BacklogTests(SynchronousTestCase):
    """
    Item 12: the listen backlog is 1024 unless the endpoint names one.
    """

    def listened(self, listen: str) -> list[Any]:
        reactor = MemoryReactorClock()
        data = base_config("http://127.0.0.1:9/v1", listen=listen)
        config = build_config(data, environ={}, source="t.yaml", kinds=REGISTRY.kinds)
        service = ProxyService(config, reactor)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        return reactor.tcpServers

    def test_default(self) -> None:
        ((port, _, backlog, interface),) = self.listened("tcp:0:interface=127.0.0.1")
        self.assertEqual((port, backlog, interface), (0, BACKLOG, "127.0.0.1"))
        self.assertEqual(BACKLOG, 1024)

    def test_explicit(self) -> None:
        ((_, _, backlog, _),) = self.listened("tcp:0:interface=127.0.0.1:backlog=64")
        self.assertEqual(backlog, 64)

    def test_descriptions(self) -> None:
        for given_, expected in [
            ("tcp:8000", "tcp:8000:backlog=1024"),
            ("tcp:0:interface=\\:\\:1", "tcp:0:interface=\\:\\:1:backlog=1024"),
            ("tcp:8000:127.0.0.1:64", "tcp:8000:127.0.0.1:64"),
            ("unix:/run/x.sock", "unix:/run/x.sock:backlog=1024"),
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ]:
            self.assertEqual(with_backlog(given_), expected)


class TwistedInternalsTests(SynchronousTestCase):
    """
    What L{ProxyChannel} relies on beyond Twisted's public API: if an
    upgrade changes one of these, this fails first.
    """

    def test_bad_request_hook(self) -> None:
        self.assertTrue(callable(HTTPChannel._respondToBadRequestAndDisconnect))
        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        channel.setTimeout(None)
        called: list[bool] = []
        channel._respondToBadRequestAndDisconnect = lambda: called.append(True)  # type: ignore
        channel.dataReceived(b"GET\r\n")
        self.assertEqual(called, [True])

    def test_network_producer_is_the_transport(self) -> None:
        channel = HTTPChannel()
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.setTimeout(None)
        self.assertIs(channel._networkProducer, transport)

    def test_line_buffer(self) -> None:
        receiver = LineReceiver()
        receiver.lineReceived = lambda line: None  # type: ignore[method-assign]
        receiver.makeConnection(StringTransport())
        receiver.dataReceived(b"a\r\nbc")
        self.assertEqual(receiver._buffer, b"bc")

    def test_chunked_length_is_none(self) -> None:
        """
        After a chunked request's headers, C{length} is None (the channel
        then decodes the body itself).
        """
        lengths: list[Any] = []

        class Channel(HTTPChannel):
            def allHeadersReceived(self) -> None:
                lengths.append(self.length)
                super().allHeadersReceived()

        channel = Channel()
        channel.makeConnection(StringTransport())
        channel.setTimeout(None)
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(lengths, [None])

    def test_site_protocol(self) -> None:
        clock = Clock()
        site = memory_app(config_of({"a": {}}), clock).site()
        self.assertIsInstance(site.buildProtocol(None), ProxyChannel)

