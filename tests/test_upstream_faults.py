"""
Upstream faults (issue #10, items 1-4): a 2xx that is no answer never
reaches the client as a success, the time budget bounds every attempt, a
client that stops reading is not blamed on the upstream, and a connection
given up mid-body never serves another request.

The fake upstream (L{FaultyOpenAI}) and llmproxy run in-process on port 0;
a L{Clock} drives llmproxy's timers (and the fake's pacing, where a test
drips).
"""

from __future__ import annotations

import gzip
import json
from typing import Any, Callable, Mapping

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel, Request

from llmproxy.backends import REGISTRY
from llmproxy.backends.health import CircuitBreaker
from llmproxy.config import build_config
from llmproxy.exchange.relay import StreamRelay
from llmproxy.service import ProxyService
from llmproxy.sse import DONE, encode_event
from llmproxy.testing import FaultyOpenAI, Raw, Stream, chat_chunks, chat_completion, listen_faulty
from tests.harness import Proxy, post

USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o", "messages": USER}
STREAM = {**CHAT, "stream": True}
COMPLETION = json.dumps(chat_completion("gpt-4o", "ok")).encode()
EVENTS = chat_chunks("gpt-4o", ["o", "k"])  # [DONE] last
SSE_TEXT = b"".join(EVENTS)
HTML = b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"
ERROR_OBJECT = json.dumps({"error": {"message": "upstream broke", "type": "server_error",
                                    "param": None, "code": None}}).encode()


def config(upstream: str, keys: int = 1, **failure: Any) -> dict[str, Any]:
    """
    One backend at the fake with C{keys} keys (C{k1}, C{k2}, ...), a breaker
    that does not open during a test unless it says so, and short timers.
    """
    return {
        "default_backend": "openai",
        "backends": {"openai": {"type": "openai", "base_url": upstream,
                                "api_keys": [f"k{i + 1}" for i in range(keys)],
                                "timeout": 2, "idle_timeout": 2}},
        "failure_handling": {"circuit_threshold": 100, "total_timeout_budget": 4,
                             "keepalive_after": 0, **failure},
    }


async def start_faulty(
    case: TestCase, make: Callable[[str], Mapping[str, Any]], clock: Clock | None = None,
    fake_clock: Clock | None = None,
) -> Proxy:
    """
    A L{FaultyOpenAI} and llmproxy in front of it, both cleaned up with the
    test; llmproxy's timers run on C{clock}, the fake's on C{fake_clock}
    (both default to the reactor).
    """
    fake, port, upstream = await listen_faulty(reactor, fake_clock)
    case.addCleanup(port.stopListening)
    case.addCleanup(fake.wait_idle)
    data = make(upstream)
    built = build_config(data, environ={}, source="test.yaml", kinds=REGISTRY.kinds)
    service = ProxyService(built, reactor, clock=clock)
    listening = await service_port(service)
    case.addCleanup(service.pool.closeCachedConnections)
    case.addCleanup(listening.stopListening)
    return Proxy(service, f"http://127.0.0.1:{listening.getHost().port}", fake, upstream)


async def service_port(service: ProxyService) -> Any:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        service.app.site())


def faulty(proxy: Proxy) -> FaultyOpenAI:
    assert isinstance(proxy.fake, FaultyOpenAI)
    return proxy.fake


def breaker(proxy: Proxy, model: str = "gpt-4o") -> Any:
    """
    The circuit breaker of the backend's C{model} (a fresh, closed one when
    the model has none).
    """
    breakers = proxy.service.app.runtime.upstreams.breakers["openai"]
    return breakers.breaker(model) or CircuitBreaker(Clock())


def error_of(content: bytes) -> dict[str, Any]:
    """
    The error object of an OpenAI-shaped error body (fails the test if the
    body is anything else).
    """
    data = json.loads(content)
    assert set(data) == {"error"}, data
    assert set(data["error"]) >= {"message", "type", "param", "code"}, data
    return data["error"]


def sse_data(content: bytes) -> list[str]:
    """
    The data of each event of an event stream.
    """
    from llmproxy.sse import SSEParser

    parser = SSEParser()
    return [e.data for e in parser.feed(content) + parser.close() if e.data is not None]


async def turns(count: int = 5) -> None:
    """
    Let the real reactor move bytes around.
    """
    for _ in range(count):
        await deferLater(reactor, 0.01)


async def advance(clock: Clock, seconds: float, step: float = 0.5) -> None:
    """
    Move C{clock} on by C{seconds}, letting the network run between steps.
    """
    moved = 0.0
    while moved < seconds:
        clock.advance(step)
        moved += step
        await turns(2)


#: 2xx answers that are not answers, for a non-streaming request.
NOT_ANSWERS: dict[str, Raw] = {
    "garbage": Raw(200, bytes(range(256)) * 2, {"content-type": "application/json"}),
    "html": Raw(200, HTML, {"content-type": "text/html"}),
    "html labelled json": Raw(200, HTML, {"content-type": "application/json"}),
    "gzip with content-encoding": Raw(200, gzip.compress(COMPLETION),
                                      {"content-type": "application/json",
                                       "content-encoding": "gzip"}),
    "gzip without content-encoding": Raw(200, gzip.compress(COMPLETION),
                                         {"content-type": "application/json"}),
    "an event stream": Raw(200, SSE_TEXT, {"content-type": "text/event-stream"}),
    "empty": Raw(200, b"", {"content-type": "application/json"}),
    "a JSON array": Raw(200, b"[1, 2, 3]", {"content-type": "application/json"}),
    "an error object": Raw(200, ERROR_OBJECT, {"content-type": "application/json"}),
    "half a document": Raw(200, COMPLETION[: len(COMPLETION) // 2],
                           {"content-type": "application/json"}),
    "not UTF-8": Raw(200, COMPLETION.replace(b'"ok"', b'"\xff\xfe"'),
                     {"content-type": "application/json"}),
    "204": Raw(204),
}


class WholeAnswerTests(TestCase):
    """
    A non-streaming request's 2xx must be a JSON answer (item 1).
    """

    async def test_not_an_answer_is_a_502(self) -> None:
        """
        Each kind of non-answer gets an OpenAI-shaped 502
        C{upstream_invalid_response}, and counts against the backend.
        """
        proxy = await start_faulty(self, config)
        for number, (name, answer) in enumerate(NOT_ANSWERS.items(), 1):
            faulty(proxy).script.append(answer)
            status, headers, content = await post(
                self, proxy.url + "/v1/chat/completions", CHAT)
            self.assertEqual((name, status), (name, 502))
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(error_of(content)["code"], "upstream_invalid_response", name)
            self.assertNotIn("x-llmproxy-route", headers)
            self.assertEqual(breaker(proxy).consecutive_failures, number, name)

    async def test_error_in_200_message_is_kept(self) -> None:
        """
        A 200 carrying an error object is not relayed as a success, and the
        client learns what the upstream said.
        """
        proxy = await start_faulty(self, config)
        faulty(proxy).script.append(NOT_ANSWERS["an error object"])
        status, _, content = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        self.assertEqual(status, 502)
        self.assertIn("upstream broke", error_of(content)["message"])

    async def test_next_attempt_serves_it(self) -> None:
        """
        Nothing of the bad answer reached the client, so the next attempt
        serves the request.
        """
        proxy = await start_faulty(self, lambda u: config(u, keys=2))
        faulty(proxy).by_key["k1"] = [NOT_ANSWERS["html"]]
        status, headers, content = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(content)["object"], "chat.completion")
        self.assertEqual((headers["x-llmproxy-key"], headers["x-llmproxy-attempts"]),
                         ("openai#2", "2"))

    async def test_no_error_status_is_a_502(self) -> None:
        """
        A redirect (never followed) or a status beyond 599 is no answer and
        no error status a client knows: the request fails over, and when
        nothing serves it the client gets a 502.
        """
        proxy = await start_faulty(self, config)
        moved = Raw(302, b"", {"location": proxy.upstream + "/elsewhere"})
        for answer in (moved, Raw(999, COMPLETION, {"content-type": "application/json"})):
            faulty(proxy).script.append(answer)
            status, headers, content = await post(self, proxy.url + "/v1/chat/completions", CHAT)
            self.assertEqual((status, error_of(content)["type"]), (502, "server_error"))
            self.assertNotIn("location", headers)
        self.assertEqual(breaker(proxy).consecutive_failures, 2)

        proxy = await start_faulty(self, lambda u: config(u, keys=2))
        faulty(proxy).by_key["k1"] = [moved]
        status, headers, _ = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))

    async def test_coded_error_body_is_not_relayed(self) -> None:
        """
        An error status whose body is content-coded keeps its status, but
        the coded bytes never reach the client as its message.
        """
        proxy = await start_faulty(self, lambda u: config(u, retries_per_target=0))
        faulty(proxy).script.append(Raw(503, gzip.compress(ERROR_OBJECT * 20),
                                        {"content-type": "application/json",
                                         "content-encoding": "gzip"}))
        status, _, content = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        self.assertEqual(status, 503)
        self.assertIn("gzip content coding", error_of(content)["message"])

    async def test_asks_for_no_content_coding(self) -> None:
        """
        llmproxy decodes nothing, so it says so: C{Accept-Encoding:
        identity} (no header would allow any coding).
        """
        proxy = await start_faulty(self, config)
        await post(self, proxy.url + "/v1/chat/completions", CHAT)
        await post(self, proxy.url + "/v1/chat/completions", STREAM)
        self.assertEqual([r.headers.get("accept-encoding") for r in proxy.fake.requests],
                         ["identity", "identity"])


#: Streams that are not answers; none may start a 200 event stream.
NOT_STREAMS: dict[str, Any] = {
    "JSON": Raw(200, COMPLETION, {"content-type": "application/json"}),
    "an error object": Raw(200, ERROR_OBJECT, {"content-type": "application/json"}),
    "HTML": Raw(200, HTML, {"content-type": "text/html"}),
    "JSON labelled as events": Raw(200, COMPLETION, {"content-type": "text/event-stream"}),
    "gzip": Raw(200, gzip.compress(SSE_TEXT), {"content-type": "text/event-stream",
                                               "content-encoding": "gzip"}),
    "empty": Stream([]),
    "[DONE] alone": Stream([DONE]),
    "data that is not JSON": Stream([b"data: hello world\n\n", DONE]),
    "a JSON array": Stream([b"data: [1, 2, 3]\n\n", DONE]),
    "not UTF-8": Stream([EVENTS[0].replace(b'"assistant"', b'"\xff\xfe"'), DONE]),
    "204": Raw(204),
}


class StreamAnswerTests(TestCase):
    """
    A streaming request's 2xx must be an event stream that reaches its
    final event (item 1).
    """

    async def test_not_a_stream_fails_before_the_first_event(self) -> None:
        """
        No 200 stream starts for a non-stream: the client gets a 502 JSON
        error (there is no keepalive in this test, so nothing was
        committed).
        """
        proxy = await start_faulty(self, config)
        for name, answer in NOT_STREAMS.items():
            faulty(proxy).script.append(answer)
            status, headers, content = await post(
                self, proxy.url + "/v1/chat/completions", STREAM)
            self.assertEqual((name, status), (name, 502))
            self.assertEqual(error_of(content)["code"], "upstream_invalid_response", name)
        self.assertEqual(breaker(proxy).consecutive_failures, len(NOT_STREAMS))

    async def test_stream_fails_over_before_the_first_event(self) -> None:
        """
        A bad stream that wrote nothing leaves the request to the next
        attempt.
        """
        proxy = await start_faulty(self, lambda u: config(u, keys=2))
        faulty(proxy).by_key["k1"] = [NOT_STREAMS["HTML"]]
        status, headers, content = await post(self, proxy.url + "/v1/chat/completions", STREAM)
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))
        self.assertEqual(sse_data(content)[-1], "[DONE]")

    async def test_cut_stream_ends_with_an_error(self) -> None:
        """
        A stream that ends cleanly but without C{[DONE]} before its answer
        finished (no C{finish_reason}), after events were relayed, ends with
        an in-band error (and C{[DONE]}), not as if it were whole; the
        backend is blamed.
        """
        proxy = await start_faulty(self, config)
        faulty(proxy).script.append(Stream(EVENTS[:-2]))
        status, _, content = await post(self, proxy.url + "/v1/chat/completions", STREAM)
        data = sse_data(content)
        self.assertEqual(status, 200)
        self.assertEqual(data[-1], "[DONE]")
        self.assertIn("[DONE]", json.loads(data[-2])["error"]["message"])
        self.assertEqual(breaker(proxy).consecutive_failures, 1)

    async def test_a_finished_answer_without_done_is_whole(self) -> None:
        """
        A stream whose answer finished (its C{finish_reason} came) but that
        closed without C{[DONE]} is whole: the client gets C{[DONE]}, no
        error, and the backend is not blamed.
        """
        proxy = await start_faulty(self, config)
        faulty(proxy).script.append(Stream(EVENTS[:-1]))
        status, _, content = await post(self, proxy.url + "/v1/chat/completions", STREAM)
        self.assertEqual((status, content), (200, SSE_TEXT))
        self.assertEqual(breaker(proxy).consecutive_failures, 0)

    async def test_bad_event_mid_stream_ends_with_an_error(self) -> None:
        """
        An event whose data is not JSON, after good ones, ends the stream
        with an in-band error; it is not relayed.
        """
        proxy = await start_faulty(self, config)
        faulty(proxy).script.append(Stream([*EVENTS[:2], b"data: <html>\n\n", *EVENTS[2:]]))
        status, _, content = await post(self, proxy.url + "/v1/chat/completions", STREAM)
        data = sse_data(content)
        self.assertEqual(status, 200)
        self.assertNotIn("<html>", data)
        self.assertEqual(json.loads(data[-2])["error"]["code"], "upstream_invalid_response")

    async def test_responses_client_never_sees_a_cut_stream_completed(self) -> None:
        """
        A Responses client served by a chat upstream whose stream lacks
        C{[DONE]} gets C{response.failed}, never C{response.completed}
        (with whatever output arrived), and an empty chat stream is no
        answer at all.
        """
        proxy = await start_faulty(self, config)
        faulty(proxy).script.append(Stream(EVENTS[:-1]))
        body = {"model": "gpt-4o", "input": "hi", "stream": True}
        status, _, content = await post(self, proxy.url + "/v1/responses", body)
        kinds = [json.loads(d)["type"] for d in sse_data(content)]
        self.assertEqual(status, 200)
        self.assertNotIn("response.completed", kinds)
        self.assertEqual(kinds[-1], "response.failed")

        for empty in ([], [DONE]):
            faulty(proxy).script.append(Stream(empty))
            status, _, content = await post(self, proxy.url + "/v1/responses", body)
            self.assertEqual(status, 502)
            self.assertEqual(error_of(content)["code"], "upstream_invalid_response")


def drip(data: bytes, content_type: str) -> Stream:
    """
    C{data} one byte per second.
    """
    return Stream([data[i:i + 1] for i in range(len(data))], delay=1.0,
                  headers={"content-type": content_type})


class TimeBudgetTests(TestCase):
    """
    The total time budget bounds an attempt while it runs; the idle timer
    measures progress, not bytes (item 2).  Budget 4 s, idle 2 s.
    """

    async def _dripped(
        self, body: dict[str, Any], answer: Stream, seconds: float, **failure: Any
    ) -> tuple[Proxy, Deferred[tuple[int, Mapping[str, str], bytes]]]:
        clock = Clock()
        proxy = await start_faulty(self, lambda u: config(u, **failure), clock, clock)
        faulty(proxy).script.append(answer)
        d = Deferred.fromCoroutine(post(self, proxy.url + "/v1/chat/completions", body))
        await turns()
        await advance(clock, seconds)
        for _ in range(50):
            if d.called:
                break
            await turns(1)
        if not d.called:
            faulty(proxy).wait_idle()
            d.addErrback(lambda _: None)
            self.fail(f"no answer {seconds:g} s into a 4 s budget")
        return proxy, d

    async def test_dripping_body_is_cut_at_the_budget(self) -> None:
        """
        A whole answer dripping one byte per second (each byte well within
        the idle timeout) is cut when the budget is spent: 504.
        """
        _, d = await self._dripped(CHAT, drip(COMPLETION, "application/json"), 5)
        status, _, content = await d
        self.assertEqual(status, 504)
        self.assertEqual(error_of(content)["code"], "upstream_timeout")

    async def test_dripping_stream_gets_the_error_at_the_budget(self) -> None:
        """
        A streaming client kept alive with comments while the upstream
        drips gets the error in-band once the budget is spent, not
        keepalives forever.
        """
        _, d = await self._dripped(STREAM, drip(SSE_TEXT, "text/event-stream"), 5,
                                   keepalive_after=1, keepalive_interval=1)
        status, _, content = await d
        self.assertEqual(status, 200)
        self.assertIn(b": keepalive", content)
        data = sse_data(content)
        self.assertEqual(json.loads(data[-2])["error"]["code"], "upstream_timeout")

    async def test_comments_are_not_progress(self) -> None:
        """
        After its first event, an upstream that only sends comments is
        idle: it is cut after the idle timeout with an in-band error.
        """
        comments = Stream(EVENTS[:2] + [b": ping\n\n"] * 40, delay=0.5)
        _, d = await self._dripped(STREAM, comments, 3)
        status, _, content = await d
        data = sse_data(content)
        self.assertEqual((status, len(data)), (200, 4))
        self.assertEqual(json.loads(data[2])["error"]["code"], "upstream_timeout")

    async def test_events_may_outlast_the_budget(self) -> None:
        """
        A stream that keeps producing events is not cut at the budget: the
        budget bounds the wait for the first event; afterwards only the
        idle timeout does.
        """
        slow = Stream(chat_chunks("gpt-4o", ["x"] * 8), delay=1.0)
        _, d = await self._dripped(STREAM, slow, 12)
        status, _, content = await d
        data = sse_data(content)
        self.assertEqual((status, data[-1]), (200, "[DONE]"))
        self.assertFalse(any('"error"' in item for item in data))


class _Captured(Request):
    def process(self) -> None:
        self.channel.captured = self  # type: ignore[attr-defined]


class PassthroughTransform:
    finished = False

    def events(self, raw: list[bytes]) -> bytes:
        return b"".join(raw)

    def end(self) -> bytes:
        return b""


class StalledClientTests(SynchronousTestCase):
    """
    A client that stops reading is not the upstream's fault (item 3).
    """

    def setUp(self) -> None:
        self.client = StringTransport()
        channel = HTTPChannel()
        channel.timeOut = None
        channel.requestFactory = _Captured
        channel.makeConnection(self.client)
        channel.dataReceived(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
        self.request = channel.captured  # type: ignore[attr-defined]
        self.clock = Clock()
        self.upstream = StringTransport()
        self.relay = StreamRelay(self.request, PassthroughTransform(), self.clock, 5)
        self.relay.makeConnection(self.upstream)

    def test_bytes_after_pause_do_not_blame_the_upstream(self) -> None:
        """
        Bytes Twisted still delivers after C{pauseProducing} do not arm the
        upstream's idle timer: a client paused for long is cut (its
        connection closed), and the relay never fails as "upstream idle".
        """
        self.relay.dataReceived(EVENTS[0])
        self.client.producer.pauseProducing()
        self.assertEqual(self.upstream.producerState, "paused")
        self.relay.dataReceived(EVENTS[1])
        self.clock.advance(4.9)
        self.assertNoResult(self.relay.finished)
        self.assertFalse(self.client.disconnecting)
        self.clock.advance(0.2)
        self.assertNoResult(self.relay.finished)
        self.assertTrue(self.client.disconnecting, "the stalled client is cut")
        self.assertTrue(self.client.disconnected, "aborted, not waiting to flush")

    def test_resumed_client_rearms_the_idle_timer(self) -> None:
        """
        After the client reads again, the upstream's idle time counts from
        the resume.
        """
        self.client.producer.pauseProducing()
        self.clock.advance(4)
        self.client.producer.resumeProducing()
        self.clock.advance(4.9)
        self.assertNoResult(self.relay.finished)
        self.clock.advance(0.2)
        self.failureResultOf(self.relay.finished)
        self.assertFalse(self.client.disconnecting)
        self.relay.connectionLost(Failure(ConnectionDone()))


class _NeverReads(Protocol):
    """
    Sends a streaming request and never reads the answer.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.transport.write(self.request)


class StalledClientsEndToEndTests(TestCase):
    async def test_six_stalled_clients_leave_the_circuit_closed(self) -> None:
        """
        Six clients that never read a fast stream neither open the
        backend's circuit nor count as its failures; each is cut after
        the idle timeout, and the next request is served.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        clock = Clock()
        proxy = await start_faulty(self, lambda u: config(u, circuit_threshold=5), clock)
        event = encode_event({"choices": [{"index": 0, "delta": {"content": "x" * 16_000}}]})
        faulty(proxy).by_model["lots"] = [Stream([event] * 400 + [DONE])]
        body = json.dumps({**STREAM, "model": "lots"}).encode()
        port = int(proxy.url.rsplit(":", 1)[1])
        request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        clients = []
        for _ in range(6):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            clients.append(await connectProtocol(endpoint, _NeverReads(request)))
        self.addCleanup(lambda: [c.transport.abortConnection() for c in clients])
        for _ in range(200):
            if len(proxy.fake.stream_transports) == 6:
                break
            await turns(1)
        await turns(20)
        await advance(clock, 5, step=1)
        await turns(10)
        self.assertEqual(breaker(proxy, "lots").status()["state"], "closed")
        self.assertEqual(breaker(proxy, "lots").consecutive_failures, 0)
        for _ in range(2000):  # real sockets: a busy machine needs more turns
            if not any(t.connected for t in proxy.fake.stream_transports):
                break
            await turns(1)
        self.assertFalse(any(t.connected for t in proxy.fake.stream_transports),
                         "the stalled clients are cut, and their upstreams dropped")
        status, _, _ = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        self.assertEqual(status, 200)


class AbortedConnectionTests(TestCase):
    """
    A connection llmproxy gave up mid-body never carries another request
    (item 4).
    """

    async def test_retry_after_an_oversized_body_uses_a_new_connection(self) -> None:
        """
        A body over the cap, arriving in one read with its end, is given
        up; the next attempt goes out on a fresh connection and succeeds.
        """
        proxy = await start_faulty(
            self, lambda u: {**config(u, keys=2), "max_body_bytes": 4096})
        big = json.dumps({**chat_completion("gpt-4o", "x" * 12_000)}).encode()
        faulty(proxy).by_key["k1"] = [Raw(200, big, {"content-type": "application/json"})]
        status, headers, _ = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))
        self.assertEqual(faulty(proxy).connections, 2)

    async def test_retry_after_an_oversized_event_uses_a_new_connection(self) -> None:
        """
        The same for an event beyond the SSE parser's cap.
        """
        proxy = await start_faulty(self, lambda u: config(u, keys=2))
        huge = encode_event({"choices": [{"index": 0, "delta": {"content": "x" * 300_000}}]})
        faulty(proxy).by_key["k1"] = [Raw(200, huge + DONE,
                                          {"content-type": "text/event-stream"})]
        status, headers, content = await post(self, proxy.url + "/v1/chat/completions", STREAM)
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))
        self.assertEqual(sse_data(content)[-1], "[DONE]")
        self.assertEqual(faulty(proxy).connections, 2)

    async def test_answered_connection_is_reused(self) -> None:
        """
        Dropping only what was given up: healthy answers keep their
        connection.
        """
        proxy = await start_faulty(self, config)
        for _ in range(3):
            status, _, _ = await post(self, proxy.url + "/v1/chat/completions", CHAT)
            self.assertEqual(status, 200)
        self.assertEqual(faulty(proxy).connections, 1)
