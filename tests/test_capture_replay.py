"""
Captures read back: C{show}'s timeline, C{replay} (in memory, and served
on a real port with llmproxy in front) giving the client what the capture
shows, and C{to-test} writing a test that passes under trial.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from llmproxy.capture.__main__ import main
from llmproxy.capture.replay import CannedAnswer, ReplayUpstream
from llmproxy.capture.timeline import read_requests, spelled
from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunks, chat_request, config_data, openai_config,
    replay_captured,
)
from tests.harness import client, start
from tests.test_capture_proxy import DOWN, CapturedProxy, _result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def capture(case: Any, behaviours: list[Any], body: dict[str, Any],
            path: str = "/v1/chat/completions", **extra: Any) -> tuple[str, str]:
    """
    Capture one request answered by C{behaviours}; the file and the id.
    """
    file = os.path.join(case.mktemp(), "cap.jsonl")
    proxy = CapturedProxy(lambda upstream: openai_config(
        upstream, capture={"file": file}, **extra))
    case.addCleanup(proxy.service.stopService)
    proxy.fake.script.extend(behaviours)
    d = proxy.request("POST", path, body)
    for _ in range(20):
        proxy.advance(0.5)
    _result(d)
    entries = proxy.entries()
    return file, entries[1]["request_id"]


FAILOVER = {"failover_routes": {"gpt-x": {"policy": "m",
                                          "elements": ["openai:m1", "openai:m2"]}},
            "failure_handling": {"retries_per_target": 0}}


class ShowTests(SynchronousTestCase):
    def test_timeline(self) -> None:
        file, rid = capture(self, [DOWN, Stream(chat_chunks("m2", ["Hel", "lo"]))],
                            chat_request("hey", model="gpt-x", stream=True), **FAILOVER)
        out = io.StringIO()
        self.assertEqual(main(["show", file, "--request-id", rid], out), 0)
        text = out.getvalue()
        self.assertIn(f"request {rid}", text)
        self.assertIn("POST /v1/chat/completions", text)
        self.assertIn("attempt 1 to openai:m1", text)
        self.assertIn("attempt 1 (openai:m1, key openai#1): retry_next, status 500", text)
        self.assertIn("attempt 2 (openai:m2, key openai#1): ok", text)
        self.assertIn('text: "Hello"', text)
        self.assertLess(text.index("attempt 1 to"), text.index("attempt 2 to"))

    def test_drops_said(self) -> None:
        file, rid = capture(self, [], chat_request())
        with open(file, "ab") as f:
            f.write(b'{"seq":99,"direction":"dropped","request_id":null,'
                    b'"metadata":{"dropped":7}}\n')
        out = io.StringIO()
        self.assertEqual(main(["show", file], out), 0)
        self.assertIn("7 entries of this file were dropped", out.getvalue())

    def test_no_match(self) -> None:
        file, _ = capture(self, [], chat_request())
        self.assertEqual(main(["show", file, "--session", "nope"], io.StringIO()), 1)

    def test_spelled(self) -> None:
        sse = ('data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
               'data: {"type":"response.output_text.delta","delta":"b"}\n\ndata: [DONE]\n\n')
        self.assertEqual(spelled(sse), "ab")


class ReplayTests(SynchronousTestCase):
    def check(self, behaviours: list[Any], body: dict[str, Any],
              path: str = "/v1/chat/completions", **extra: Any) -> Any:
        file, rid = capture(self, behaviours, body, path, **extra)
        expected, got = replay_captured(file, rid)
        self.assertEqual(got, expected)
        return got

    def test_whole(self) -> None:
        got = self.check([], chat_request("hello"))
        self.assertEqual(got.status, 200)

    def test_stream(self) -> None:
        got = self.check([Stream(chat_chunks("gpt-4o", ["a", "b", "c"]), delay=0.5)],
                         chat_request(stream=True))
        self.assertIn("data: [DONE]", got.body)

    def test_failover(self) -> None:
        self.check([DOWN], chat_request(model="gpt-x"), **FAILOVER)

    def test_mid_stream_failure(self) -> None:
        got = self.check([Stream(chat_chunks("gpt-4o", ["par", "tial"])[:2], end="drop")],
                         chat_request(stream=True))
        self.assertIn("error", got.body)

    def test_client_error(self) -> None:
        got = self.check([Reply(400, {"error": {"message": "bad", "type": "invalid_request_error",
                                                "param": None, "code": None}})],
                         chat_request())
        self.assertEqual(got.status, 400)

    def test_responses(self) -> None:
        self.check([], {"model": "gpt-4o", "input": "hi"}, "/v1/responses")
        self.check([], {"model": "gpt-4o", "input": "hi", "stream": True}, "/v1/responses")

    def test_responses_backend(self) -> None:
        """
        A chat client on a Responses backend: the replay rebuilds the
        backend's dialect.
        """
        file = os.path.join(self.mktemp(), "cap.jsonl")
        proxy = CapturedProxy(lambda upstream: config_data(
            {"r": backend_data(upstream, "sk-r", type="openai-responses")},
            capture={"file": file}))
        self.addCleanup(proxy.service.stopService)
        proxy.request("POST", "/v1/chat/completions", chat_request(stream=True))
        rid = proxy.entries()[1]["request_id"]
        expected, got = replay_captured(file, rid)
        self.assertEqual(got, expected)

    def test_order_per_session(self) -> None:
        """
        A body that matches no digest gets the next answer of its session.
        """
        answers = [CannedAnswer("/chat/completions", "d1", 200, session="a"),
                   CannedAnswer("/chat/completions", "d2", 200, session="b"),
                   CannedAnswer("/chat/completions", "d3", 200, session="b")]
        upstream = ReplayUpstream(answers, Clock())
        self.assertIs(upstream.match("/v1/chat/completions", "x", "b"), answers[1])
        self.assertIs(upstream.match("/v1/chat/completions", "x", "a"), answers[0])
        self.assertIs(upstream.match("/v1/chat/completions", "x", "c"), answers[2])
        self.assertIsNone(upstream.match("/v1/chat/completions", "x", "b"))

    def test_match_by_digest_then_order(self) -> None:
        file, rid = capture(self, [DOWN], chat_request(model="gpt-x"), **FAILOVER)
        upstream = ReplayUpstream.from_file(file, reactor)
        first, second = upstream.answers
        self.assertEqual(upstream.match("/v1/chat/completions", second.digest), second)
        self.assertEqual(upstream.match("/v1/chat/completions", "other"), first)
        self.assertIsNone(upstream.match("/v1/chat/completions", None))


class ToTestTests(SynchronousTestCase):
    def test_written_test_passes(self) -> None:
        file, rid = capture(self, [Stream(chat_chunks("gpt-4o", ["x", "y"]))],
                            chat_request(stream=True))
        folder = self.mktemp()
        out = io.StringIO()
        self.assertEqual(main(["to-test", file, "--request-id", rid, "--out", folder], out), 0)
        name = rid.replace("-", "_")
        self.assertEqual(sorted(os.listdir(folder)),
                         [f"capture_{name}.jsonl", f"test_capture_{name}.py"])
        env = {**os.environ, "PYTHONPATH": ROOT}
        result = subprocess.run(
            [sys.executable, "-m", "twisted.trial", f"test_capture_{name}"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("PASSED", result.stdout)

    def test_unknown_id(self) -> None:
        file, _ = capture(self, [], chat_request())
        self.assertEqual(main(["to-test", file, "--request-id", "nope", "--out",
                               self.mktemp()], io.StringIO()), 1)


class ServedReplayTests(TestCase):
    async def test_same_client_bytes(self) -> None:
        """
        A captured stream, served on a port, with llmproxy in front: the
        same request gets the same bytes.
        """
        file, rid = capture(self, [Stream(chat_chunks("gpt-4o", ["Hel", "lo"]))],
                            chat_request(stream=True))
        captured = read_requests(file)[rid]
        expected = "".join(e["payload"] for e in captured.entries
                           if e["direction"] == "stream_chunk" and e["destination"] == "client")
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(ReplayUpstream.from_file(file, reactor, fast=True)))
        self.addCleanup(port.stopListening)
        upstream = f"http://127.0.0.1:{port.getHost().port}/v1"
        proxy = await start(self, lambda _: openai_config(upstream))
        response = await client(self).post(
            proxy.url + "/v1/chat/completions", json=chat_request(stream=True))
        self.assertEqual((await treq.content(response)).decode(), expected)


class PacingTests(SynchronousTestCase):
    def test_original_pacing(self) -> None:
        """
        Without C{fast}, a stream's chunks come as far apart as they were
        captured.
        """
        clock = Clock()
        answer = CannedAnswer("/chat/completions", None, 200, "text/event-stream",
                              chunks=[(0.0, b"a"), (0.5, b"b"), (1.0, b"c")])
        upstream = ReplayUpstream([answer], clock)
        request = DummyRequest([b""])
        upstream._perform(request, answer)  # type: ignore[arg-type]
        self.assertEqual(request.written, [b"a"])
        clock.advance(0.5)
        self.assertEqual(request.written, [b"a", b"b"])
        clock.advance(0.9)
        self.assertEqual(request.finished, 0)
        clock.advance(0.1)
        self.assertEqual(request.written, [b"a", b"b", b"c"])
        self.assertEqual(request.finished, 1)
