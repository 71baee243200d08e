# -*- test-case-name: tests.test_testing -*-
"""
Tests for L{llmproxy.testing}: the public fake OpenAI upstream (driven in
memory through L{treq.testing.StubTreq} and a L{Clock}), the canned bodies
and streams (checked with the OpenAI SDK's own accumulators), the SSE
readers, the configuration builders and L{MemoryAgent}.
"""

from __future__ import annotations

import json
from typing import Any, cast

from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived, readBody
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from llmproxy.config import ConfigError
from llmproxy.sse import DONE
from llmproxy.testing import (
    Drop, FakeOpenAI, MemoryAgent, Recorded, Reply, Stall, Stream, backend_data, chat_chunk,
    chat_chunks, chat_completion, chat_request, chat_tool_chunks, chat_tool_completion,
    config_data, function_call_events, function_call_response, make_config, openai_config,
    responses_events, responses_object, sse_data, sse_events, sse_json,
)
from llmproxy.backends.openai import BytesProducer

URL = "http://fake/v1"

_chat = chat_request


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
        events = sse_events(self.read(response))
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
        events = sse_events(self.read(response))
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
        events = sse_events(b"".join(chat_chunks("m", ["x", "y"], usage=True)))
        self.assertTrue(events[-1].done)
        chunks = [e.json() for e in events[:-1]]
        self.assertEqual([c["choices"][0]["delta"].get("content") for c in chunks[:3]],
                         ["", "x", "y"])
        self.assertEqual(chunks[3]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[4]["choices"], [])
        self.assertEqual(chunks[4]["usage"]["completion_tokens"], 2)

    def test_responses_events(self) -> None:
        events = sse_events(b"".join(responses_events("m", ["a", "b"])))
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

    def test_chat_request(self) -> None:
        self.assertEqual(chat_request(), {"model": "gpt-4o",
                                          "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual(chat_request("yo", "m", stream=True, model_x=1), {
            "model": "m", "messages": [{"role": "user", "content": "yo"}], "stream": True,
            "model_x": 1})

    def test_chat_chunk(self) -> None:
        self.assertEqual(chat_chunk("m", {})["created"], 1700000000)
        chunk = chat_chunk("m", {"content": "x"}, "stop", ident="c1", created=7)
        self.assertEqual(chunk, {"id": "c1", "object": "chat.completion.chunk",
                                 "created": 7, "model": "m",
                                 "choices": [{"index": 0, "delta": {"content": "x"},
                                              "logprobs": None, "finish_reason": "stop"}]})

    def test_chat_tool_chunks(self) -> None:
        """
        The SDK's own accumulator rebuilds one call from the pieces, and the
        stream ends in C{[DONE]}.
        """
        events = chat_tool_chunks("m", "get_weather", ['{"city": ', '"Paris"}'], "call_7")
        self.assertEqual(events[-1], DONE)
        state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
        for payload in sse_json(b"".join(events)):
            state.handle_chunk(cast(ChatCompletionChunk,
                                    construct_type(type_=ChatCompletionChunk, value=payload)))
        choice = state.get_final_completion().choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        [call] = choice.message.tool_calls or []
        self.assertEqual((call.id, call.function.name, call.function.arguments),
                         ("call_7", "get_weather", '{"city": "Paris"}'))

    def test_chat_tool_completion(self) -> None:
        body = chat_tool_completion("m", "f", "{}", "call_2")
        [choice] = body["choices"]
        self.assertEqual(choice["finish_reason"], "tool_calls")
        self.assertEqual(choice["message"]["tool_calls"], [
            {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}])

    def test_function_call_events(self) -> None:
        """
        Numbered events whose argument deltas join to the arguments the
        C{done} event, the finished item and the final response carry.
        """
        events = sse_events(b"".join(function_call_events("m", "f", ['{"a"', ": 1}"], "call_3")))
        payloads = [e.json() for e in events]
        self.assertEqual([e.event for e in events], [p["type"] for p in payloads])
        self.assertEqual([p["sequence_number"] for p in payloads], list(range(len(payloads))))
        self.assertEqual([p["type"] for p in payloads], [
            "response.created", "response.in_progress", "response.output_item.added",
            "response.function_call_arguments.delta", "response.function_call_arguments.delta",
            "response.function_call_arguments.done", "response.output_item.done",
            "response.completed"])
        deltas = "".join(p["delta"] for p in payloads if p["type"].endswith("arguments.delta"))
        self.assertEqual(deltas, '{"a": 1}')
        self.assertEqual(payloads[5]["arguments"], deltas)
        final = function_call_response("m", "f", '{"a": 1}', "call_3")
        self.assertEqual(payloads[-1]["response"], final)
        self.assertEqual(payloads[6]["item"], final["output"][0])
        self.assertEqual(final["output"][0]["call_id"], "call_3")

    def test_sse_readers(self) -> None:
        """
        Comments are skipped, a last event without its blank line counts,
        C{sse_data} keeps C{[DONE]} and C{sse_json} drops it.
        """
        body = b': keepalive\n\ndata: {"a": 1}\n\nevent: x\n\ndata: [DONE]\n\ndata: {"b": 2}'
        self.assertEqual([(e.event, e.data) for e in sse_events(body)],
                         [(None, '{"a": 1}'), ("x", None), (None, "[DONE]"), (None, '{"b": 2}')])
        self.assertEqual(sse_data(body), ['{"a": 1}', "[DONE]", '{"b": 2}'])
        self.assertEqual(sse_json(body), [{"a": 1}, {"b": 2}])
        self.assertRaises(ValueError, sse_json, b"data: nope\n\n")


class ConfigBuilderTests(SynchronousTestCase):
    def test_openai_config(self) -> None:
        config = make_config(openai_config("http://up/v1", ["k1", "k2"], max_body_bytes=4096))
        self.assertEqual(config.default_backend, "openai")
        backend = config.backends["openai"]
        self.assertEqual((backend.type, backend.base_url), ("openai", "http://up/v1"))
        self.assertEqual([(k.name, k.value) for k in backend.keys],
                         [("openai#1", "k1"), ("openai#2", "k2")])
        self.assertEqual(config.max_body_bytes, 4096)
        [key] = make_config(openai_config("http://up/v1")).backends["openai"].keys
        self.assertEqual(key.value, "sk-test-1")

    def test_config_data_default_is_the_first_backend(self) -> None:
        backends = {"z": backend_data("http://z/v1"), "a": backend_data("http://a/v1", "k")}
        self.assertEqual(config_data(backends)["default_backend"], "z")
        self.assertEqual(config_data(backends, default="a")["default_backend"], "a")
        config = make_config(config_data(backends))
        self.assertEqual(config.backends["z"].keys, ())
        self.assertEqual(config_data({}), {"default_backend": None, "backends": {}})

    def test_backend_data(self) -> None:
        self.assertEqual(backend_data("u", "k", type="openai-responses", timeout=3), {
            "type": "openai-responses", "base_url": "u", "api_keys": ["k"], "timeout": 3})
        self.assertNotIn("api_keys", backend_data("u"))

    def test_make_config_reads_only_what_it_is_given(self) -> None:
        data = config_data({"openai": {"base_url": "http://up/v1"}})
        self.assertEqual(make_config(data).backends["openai"].keys, ())
        [key] = make_config(data, {"OPENAI_API_KEY": "e"}).backends["openai"].keys
        self.assertEqual(key.value, "e")
        config = make_config(data, model_aliases=("^a$=b",))
        self.assertEqual([r.replacement for r in config.model_aliases], ["b"])
        with self.assertRaises(ConfigError) as caught:
            make_config({"nope": 1}, source="mine.yaml")
        self.assertIn("mine.yaml", str(caught.exception))


class _Marked(Request):
    """
    The site's own request factory, to see that it serves.
    """

    def process(self) -> None:
        self.setHeader(b"x-factory", b"marked")
        super().process()


class _Echo(Resource):
    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        return b"got " + request.content.read()


class MemoryAgentTests(SynchronousTestCase):
    def _call(self, agent: MemoryAgent, d: Deferred[IResponse]) -> tuple[IResponse, bytes]:
        self.assertTrue(agent.flush())
        response = self.successResultOf(d)
        body = readBody(response)
        agent.flush()
        return response, self.successResultOf(body)

    def test_served_by_the_site_in_memory(self) -> None:
        """
        Nothing moves until L{MemoryAgent.flush}; then the site answers,
        through its own request factory, and the finished connection is
        forgotten (C{flush} has nothing left to move).
        """
        agent = MemoryAgent(Site(_Echo(), requestFactory=_Marked))
        d = agent.request(b"POST", b"http://anywhere:1234/echo", None, BytesProducer(b"hello"))
        self.assertNoResult(d)
        response, body = self._call(agent, d)
        self.assertEqual((response.code, body), (200, b"got hello"))
        self.assertEqual(response.headers.getRawHeaders(b"x-factory"), [b"marked"])
        self.assertFalse(agent.flush())

    def test_site_timers_stay_off_the_global_reactor(self) -> None:
        """
        A connection's idle timer (started as it opens, paused while a
        request is served) runs on the agent's memory clock.
        """
        before = set(cast(IReactorTime, reactor).getDelayedCalls())
        fake = FakeOpenAI(Clock())
        fake.script = [Stall()]
        agent = MemoryAgent(Site(fake))
        d = agent.request(b"POST", b"http://fake/v1/chat/completions", None,
                          BytesProducer(json.dumps(chat_request()).encode()))
        self.assertEqual(set(cast(IReactorTime, reactor).getDelayedCalls()), before)
        agent.flush()
        self.assertEqual(len(fake.open), 1)
        fake.wait_idle()
        agent.flush()
        self.failureResultOf(d, ResponseNeverReceived)
        self.assertFalse(agent.flush())

    def test_streams_follow_the_fake_s_clock(self) -> None:
        clock = Clock()
        fake = FakeOpenAI(clock)
        chunks = chat_chunks("m", ["a", "b"])
        fake.script = [Stream(chunks, delay=1)]
        agent = MemoryAgent(Site(fake))
        d = agent.request(b"POST", b"http://fake/v1/chat/completions", None,
                          BytesProducer(json.dumps(chat_request(stream=True)).encode()))
        agent.flush()
        response = self.successResultOf(d)
        received: list[bytes] = []
        done = Deferred[None]()

        class Collect(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

            def connectionLost(self, reason: object = None) -> None:
                done.callback(None)

        response.deliverBody(Collect())
        agent.flush()
        self.assertEqual(b"".join(received), chunks[0])
        for _ in chunks[1:]:
            clock.advance(1)
            agent.flush()
        self.successResultOf(done)
        self.assertEqual(b"".join(received), b"".join(chunks))
        self.assertEqual(fake.completed, 1)
