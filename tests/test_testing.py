# -*- test-case-name: tests.test_testing -*-
"""
Tests for L{llmproxy.testing}, the public fake OpenAI upstream, driven in
memory through L{treq.testing.StubTreq} and a L{Clock}.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from llmproxy.sse import SSEParser
from llmproxy.testing import (
    Drop, FakeOpenAI, Recorded, Reply, Stall, Stream, chat_chunks, chat_completion,
    responses_events, responses_object,
)

URL = "http://fake/v1"


def _chat(text: str = "hi", model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


class FakeTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeOpenAI(self.clock)
        self.stub = StubTreq(self.fake)

    def post(self, body: Any, path: str = "/chat/completions", key: str = "k") -> Any:
        """
        POST C{body} and return the response (headers received).
        """
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        d = self.stub.post(URL + path, data=data, headers={
            "authorization": f"Bearer {key}", "content-type": "application/json",
            "X-Custom": "Yes"})
        self.stub.flush()
        return self.successResultOf(d)

    def read(self, response: Any, ticks: int = 50) -> bytes:
        d = self.stub.content(response)
        for _ in range(ticks):
            if d.called:
                break
            self.clock.advance(1)
            self.stub.flush()
        return self.successResultOf(d)

    def call(self, body: Any, path: str = "/chat/completions", key: str = "k") -> tuple[int, Any]:
        response = self.post(body, path, key)
        return response.code, json.loads(self.read(response))


class RecordingTests(FakeTestCase):
    def test_records_requests(self) -> None:
        """
        Every request is recorded with method, path, lower-cased headers and
        the decoded JSON body (raw bytes when not JSON), in order.
        """
        seen: list[Recorded] = []
        self.fake.on_request = seen.append
        self.call(_chat("one"))
        self.call(b"not json", "/responses")
        self.assertEqual(len(self.fake.requests), 2)
        first, second = self.fake.requests
        self.assertEqual((first.method, first.path), ("POST", "/v1/chat/completions"))
        self.assertEqual(first.headers["authorization"], "Bearer k")
        self.assertEqual(first.headers["x-custom"], "Yes")
        self.assertEqual(first.body, _chat("one"))
        self.assertEqual(first.model, "gpt-4o")
        self.assertEqual((second.path, second.body, second.model),
                         ("/v1/responses", b"not json", None))
        self.assertEqual(seen, self.fake.requests)

    def test_models(self) -> None:
        self.fake.models = ["a", "b"]
        d = self.stub.get(URL + "/models")
        self.stub.flush()
        response = self.successResultOf(d)
        body = json.loads(self.read(response))
        self.assertEqual([m["id"] for m in body["data"]], ["a", "b"])
        self.assertEqual(body["object"], "list")
        d = self.stub.get(URL + "/nothing")
        self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.assertIn("error", json.loads(self.read(response)))
        self.assertEqual([r.method for r in self.fake.requests], ["GET", "GET"])


class DefaultTests(FakeTestCase):
    """
    With nothing scripted, the fake echoes in the request's dialect.
    """

    def test_chat(self) -> None:
        code, body = self.call(_chat("hello there", model="gpt-4o-mini"))
        self.assertEqual(code, 200)
        self.assertEqual(body["model"], "gpt-4o-mini")
        self.assertEqual(body["choices"][0]["message"]["content"], "fake: hello there")

    def test_chat_stream(self) -> None:
        response = self.post(_chat("hello", stream=True,
                                   stream_options={"include_usage": True}))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        events = SSEParser().feed(self.read(response))
        self.assertTrue(events[-1].done)
        chunks = [e.json() for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                       if c["choices"])
        self.assertEqual(text.strip(), "fake: hello")
        self.assertIn("usage", chunks[-1])

    def test_responses(self) -> None:
        code, body = self.call({"model": "gpt-4o", "input": "ping"}, "/responses")
        self.assertEqual(code, 200)
        self.assertEqual(body["object"], "response")
        self.assertEqual(body["output"][0]["content"][0]["text"], "fake: ping")
        response = self.post({"model": "gpt-4o", "input": "ping", "stream": True}, "/responses")
        events = SSEParser().feed(self.read(response))
        self.assertEqual(events[-1].event, "response.completed")
        self.assertEqual(events[-1].json()["response"]["output"][0]["content"][0]["text"],
                         "fake: ping ")


class ScriptTests(FakeTestCase):
    """
    Scripted behaviours: the C{script} queue and per-model lists.
    """

    def test_script_in_order(self) -> None:
        """
        The script is consumed in order, then the default takes over.
        """
        self.fake.script = [Reply(500, {"error": {"message": "boom"}}),
                            Reply(429, {"error": {"message": "slow"}}, {"retry-after": "7"})]
        response = self.post(_chat())
        self.assertEqual(response.code, 500)
        self.read(response)
        response = self.post(_chat())
        self.assertEqual(response.code, 429)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["7"])
        self.assertEqual(json.loads(self.read(response)), {"error": {"message": "slow"}})
        code, body = self.call(_chat("after"))
        self.assertEqual((code, body["choices"][0]["message"]["content"]), (200, "fake: after"))
        self.assertEqual(self.fake.script, [])

    def test_by_model_last_repeats(self) -> None:
        """
        A model's list is consumed in order and its last entry repeats;
        other models fall through to the script.
        """
        self.fake.by_model["gpt-4o"] = [Reply(503, {"error": {}}),
                                        Reply(200, chat_completion("gpt-4o", "fixed"))]
        self.fake.script = [Reply(418, {})]
        self.assertEqual(self.call(_chat())[0], 503)
        for _ in range(3):
            code, body = self.call(_chat())
            self.assertEqual((code, body["choices"][0]["message"]["content"]), (200, "fixed"))
        self.assertEqual(self.call(_chat(model="other"))[0], 418)
        self.assertEqual(self.call(_chat(model="other"))[0], 200)

    def test_by_key(self) -> None:
        """
        A list per bearer token, ahead of the per-model lists.
        """
        self.fake.by_key["bad"] = [Reply(401, {"error": {"message": "invalid key"}})]
        self.fake.by_model["gpt-4o"] = [Reply(202, {})]
        self.assertEqual(self.call(_chat(), key="bad")[0], 401)
        self.assertEqual(self.call(_chat(), key="bad")[0], 401)
        self.assertEqual(self.call(_chat(), key="good")[0], 202)

    def test_stream_paced(self) -> None:
        """
        A scripted stream writes one chunk per C{delay} on the clock, and
        the request counts as completed once closed.
        """
        chunks = chat_chunks("gpt-4o", ["a", "b"])
        self.fake.script = [Stream(chunks, delay=5)]
        response = self.post(_chat(stream=True))
        received: list[bytes] = []
        done = response.collect(received.append)
        self.stub.flush()
        self.assertEqual(received, [chunks[0]])
        self.clock.advance(4)
        self.stub.flush()
        self.assertEqual(len(received), 1)
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(received, chunks[:2])
        for _ in range(len(chunks)):
            self.clock.advance(5)
            self.stub.flush()
        self.successResultOf(done)
        self.assertEqual(b"".join(received), b"".join(chunks))
        self.assertEqual((self.fake.completed, self.fake.lost, self.fake.open), (1, 0, []))

    def test_stream_drop(self) -> None:
        """
        C{end="drop"} cuts the connection after the chunks: the client
        sees a failed body, and the fake counts the request lost.
        """
        self.fake.script = [Stream([b"data: 1\n\n"], end="drop")]
        response = self.post(_chat(stream=True))
        d = self.stub.content(response)
        self.clock.advance(0)
        self.stub.flush()
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual(self.fake.lost, 1)

    def test_stream_stall(self) -> None:
        """
        C{end="stall"} keeps the connection open with no more data, until
        L{FakeOpenAI.wait_idle} aborts it.
        """
        self.fake.script = [Stream([b"data: 1\n\n"], end="stall")]
        response = self.post(_chat(stream=True))
        d = self.stub.content(response)
        self.clock.advance(1000)
        self.stub.flush()
        self.assertNoResult(d)
        self.assertEqual(len(self.fake.open), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.fake.wait_idle()
        self.stub.flush()
        self.failureResultOf(d, ResponseFailed)
        self.assertEqual((self.fake.open, self.fake.lost), ([], 1))

    def test_stall_and_drop(self) -> None:
        """
        L{Stall} never answers; L{Drop} closes without an answer.
        """
        self.fake.script = [Stall(), Drop()]
        stalled = self.stub.post(URL + "/chat/completions", data=json.dumps(_chat()).encode())
        self.stub.flush()
        self.clock.advance(1000)
        self.assertNoResult(stalled)
        dropped = self.stub.post(URL + "/chat/completions", data=json.dumps(_chat()).encode())
        self.stub.flush()
        self.failureResultOf(dropped, ResponseNeverReceived)
        self.fake.wait_idle()
        self.stub.flush()
        self.failureResultOf(stalled, ResponseNeverReceived)
        self.assertEqual(self.fake.lost, 2)


class HelperTests(SynchronousTestCase):
    """
    The canned bodies and event streams are valid.
    """

    def test_chat_chunks(self) -> None:
        events = SSEParser().feed(b"".join(chat_chunks("m", ["x", "y"], usage=True)))
        self.assertTrue(events[-1].done)
        chunks = [e.json() for e in events[:-1]]
        self.assertEqual([c["choices"][0]["delta"].get("content") for c in chunks[:3]],
                         ["", "x", "y"])
        self.assertEqual(chunks[3]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[4]["choices"], [])
        self.assertEqual(chunks[4]["usage"]["completion_tokens"], 2)

    def test_responses_events(self) -> None:
        events = SSEParser().feed(b"".join(responses_events("m", ["a", "b"])))
        payloads = [e.json() for e in events]
        self.assertEqual([e.event for e in events], [p["type"] for p in payloads])
        self.assertEqual([p["sequence_number"] for p in payloads], list(range(len(payloads))))
        self.assertEqual(payloads[0]["type"], "response.created")
        self.assertEqual([p["delta"] for p in payloads
                          if p["type"] == "response.output_text.delta"], ["a", "b"])
        self.assertEqual(payloads[-1]["response"], responses_object("m", "ab"))

    def test_chat_completion(self) -> None:
        body = chat_completion("m", "one two")
        self.assertEqual(body["choices"][0]["message"]["content"], "one two")
        self.assertEqual(body["usage"]["total_tokens"], 5)
