"""
The proxy core end to end, from a client through llmproxy to the fake
upstream: in memory (L{MemoryProxy}) for what llmproxy decides, over real
connections for streaming, disconnects and backpressure.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from llmproxy.testing import Drop, Reply, Stall, Stream, chat_chunks, chat_request, sse_data
from tests.harness import MemoryProxy, base_config, client, post, start

CHAT = chat_request("hello there")


class ForwardingTests(SynchronousTestCase):
    def test_body_kept_model_routed_keys_swapped(self) -> None:
        """
        Every field the client sent reaches the upstream as sent; the
        client's Authorization is replaced by the backend's key.
        """
        proxy = MemoryProxy()
        body = {
            "model": "openai:gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": "auto",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
            "reasoning_effort": "low",
            "x_custom_field": {"nested": [1, 2.5, None]},
        }
        status, headers, content = proxy.post(
            "/v1/chat/completions", body, {"authorization": "Bearer client-secret"})
        self.assertEqual(status, 200)
        [seen] = proxy.fake.requests
        self.assertEqual(seen.path, "/v1/chat/completions")
        self.assertEqual(seen.body, {**body, "model": "gpt-4o"})
        self.assertEqual(seen.headers["authorization"], "Bearer sk-test-1")
        self.assertNotIn("client-secret", json.dumps(seen.headers))
        self.assertEqual(headers["x-llmproxy-route"], "openai:gpt-4o")
        self.assertEqual(headers["x-llmproxy-key"], "openai#1")
        self.assertEqual(json.loads(content)["object"], "chat.completion")

    def test_large_image_body_is_forwarded_whole(self) -> None:
        """
        A multi-megabyte base64 image (Twisted spools such bodies to a
        temporary file) reaches the upstream intact.
        """
        proxy = MemoryProxy()
        image = "data:image/png;base64," + "QUJD" * 1_500_000
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image, "detail": "high"}}]}]}
        status, _, _ = proxy.post("/v1/chat/completions", body)
        self.assertEqual(status, 200)
        part = proxy.fake.requests[0].body["messages"][0]["content"][0]
        self.assertEqual(part["image_url"]["url"], image)

    def test_untouched_body_forwarded_byte_for_byte(self) -> None:
        """
        A body routing does not change reaches the upstream as the same
        bytes (key order, spacing and number formats kept).
        """
        proxy = MemoryProxy()
        raw = b'{ "messages": [{"role":"user","content":"hi"}], "model":"gpt-4o", "temperature": 1.0e0 }'
        status, _, _ = proxy.post("/v1/chat/completions", raw)
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].raw, raw)
        # A routed model changes the body: then only the model differs.
        status, _, _ = proxy.post("/v1/chat/completions",
                                  raw.replace(b'"gpt-4o"', b'"openai:gpt-4o"'))
        self.assertEqual(status, 200)
        self.assertNotEqual(proxy.fake.requests[1].raw, raw)
        self.assertEqual(proxy.fake.requests[1].body, json.loads(raw))

    def test_upstream_status_body_and_headers_pass_through(self) -> None:
        proxy = MemoryProxy()
        answer = {"id": "x", "object": "chat.completion", "choices": [], "extra": "kept"}
        proxy.fake.script.append(Reply(200, answer, {"x-request-id": "req-123",
                                                     "x-ratelimit-remaining-requests": "99",
                                                     "set-cookie": "a=b"}))
        status, headers, content = proxy.post("/v1/chat/completions", CHAT)
        self.assertEqual((status, json.loads(content)), (200, answer))
        self.assertEqual(headers["x-request-id"], "req-123")
        self.assertEqual(headers["x-ratelimit-remaining-requests"], "99")
        self.assertNotIn("set-cookie", headers)

    def test_upstream_client_error_returned_as_is(self) -> None:
        proxy = MemoryProxy()
        error = {"error": {"message": "bad messages", "type": "invalid_request_error",
                           "param": "messages", "code": None}}
        proxy.fake.script.append(Reply(400, error))
        status, _, content = proxy.post("/v1/chat/completions", CHAT)
        self.assertEqual((status, json.loads(content)), (400, error))
        self.assertEqual(len(proxy.fake.requests), 1)

    def test_detail_error_rewrapped(self) -> None:
        proxy = MemoryProxy()
        proxy.fake.script.append(Reply(400, {"detail": "Store must be set to false"}))
        status, _, content = proxy.post("/v1/chat/completions", CHAT)
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(content)["error"]["message"], "Store must be set to false")


class StreamingTests(TestCase):
    async def test_events_byte_for_byte(self) -> None:
        proxy = await start(self)
        chunks = chat_chunks("gpt-4o", ["a", "b", "c"], usage=True)
        proxy.fake.script.append(Stream(chunks))
        status, headers, content = await post(self, proxy.url + "/v1/chat/completions",
                                              {**CHAT, "stream": True,
                                               "stream_options": {"include_usage": True}})
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        self.assertEqual(content, b"".join(chunks))
        self.assertTrue(content.endswith(b"data: [DONE]\n\n"))

    async def test_first_event_arrives_before_upstream_finishes(self) -> None:
        """
        With a paced upstream, the client holds the first event while the
        upstream still has most of its stream to send.
        """
        proxy = await start(self)
        chunks = chat_chunks("gpt-4o", [str(i) for i in range(8)])
        proxy.fake.script.append(Stream(chunks, delay=0.1))
        response = await client(self).post(
            proxy.url + "/v1/chat/completions", data=json.dumps({**CHAT, "stream": True}).encode())
        first: Deferred[bytes] = Deferred()
        seen_at_first = []

        class Reader(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not first.called:
                    seen_at_first.append(proxy.fake.completed)
                    first.callback(data)

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(None)

        done: Deferred[None] = Deferred()
        response.deliverBody(Reader())
        data = await first
        self.assertIn(b"data: ", data)
        self.assertEqual(seen_at_first, [0])
        await done
        self.assertEqual(proxy.fake.completed, 1)

    async def test_failure_after_start_is_one_error_event(self) -> None:
        proxy = await start(self)
        chunks = chat_chunks("gpt-4o", ["a", "b"])[:2]
        proxy.fake.script.append(Stream(chunks, delay=0.05, end="drop"))
        status, _, content = await post(self, proxy.url + "/v1/chat/completions",
                                        {**CHAT, "stream": True})
        self.assertEqual(status, 200)
        events = sse_data(content)
        self.assertEqual(events[-1], "[DONE]")
        errors = [json.loads(e) for e in events if e.startswith('{"error"')]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["error"]["status_code"], 502)
        self.assertTrue(content.startswith(chunks[0] + chunks[1]))

    async def test_client_disconnect_cancels_streaming_upstream(self) -> None:
        proxy = await start(self)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["x"] * 50), delay=0.05))
        response = await client(self).post(
            proxy.url + "/v1/chat/completions", data=json.dumps({**CHAT, "stream": True}).encode())
        got: Deferred[None] = Deferred()

        class Quitter(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not got.called:
                    self.transport.stopProducing()
                    got.callback(None)

            def connectionLost(self, reason: Any = None) -> None:
                pass

        response.deliverBody(Quitter())
        await got
        for _ in range(20):
            if proxy.fake.lost:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(proxy.fake.lost, 1)

    async def test_client_disconnect_cancels_non_streaming_upstream(self) -> None:
        proxy = await start(self)
        proxy.fake.script.append(Stall())
        d = client(self).post(proxy.url + "/v1/chat/completions", data=json.dumps(CHAT).encode())
        for _ in range(20):
            if proxy.fake.open:
                break
            await deferLater(reactor, 0.02)
        d.cancel()
        self.failureResultOf(d)
        for _ in range(20):
            if proxy.fake.lost:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(proxy.fake.lost, 1)


class ErrorTests(SynchronousTestCase):
    def _error(self, proxy: MemoryProxy, body: Any, headers: Any = None,
               path: str = "/v1/chat/completions") -> tuple[int, dict[str, Any]]:
        status, _, content = proxy.post(path, body, headers)
        return status, self._shape(content)

    def _shape(self, content: bytes) -> dict[str, Any]:
        data = json.loads(content)
        self.assertEqual(set(data["error"]), {"message", "type", "param", "code"})
        return data["error"]  # type: ignore[no-any-return]

    def test_invalid_json(self) -> None:
        proxy = MemoryProxy()
        status, error = self._error(proxy, b"{not json")
        self.assertEqual((status, error["code"]), (400, "invalid_json"))

    def test_missing_model_and_messages(self) -> None:
        proxy = MemoryProxy()
        status, error = self._error(proxy, {"messages": CHAT["messages"]})
        self.assertEqual((status, error["param"]), (400, "model"))
        status, error = self._error(proxy, {"model": "gpt-4o"})
        self.assertEqual((status, error["param"]), (400, "messages"))
        self.assertEqual(proxy.fake.requests, [])

    def test_proxy_key_required(self) -> None:
        proxy = MemoryProxy(lambda u: base_config(u, proxy_keys=["k1", "k2"]))
        status, error = self._error(proxy, CHAT)
        self.assertEqual(status, 401)
        status, error = self._error(proxy, CHAT, {"authorization": "Bearer nope"})
        self.assertEqual(status, 401)
        self.assertNotIn("nope", error["message"])
        status, _, _ = proxy.post("/v1/chat/completions", CHAT, {"authorization": "Bearer k2"})
        self.assertEqual(status, 200)
        status, _, _ = proxy.post("/healthz", b"")
        self.assertEqual(proxy.get("/healthz").status, 200)

    def test_body_too_large(self) -> None:
        proxy = MemoryProxy(lambda u: base_config(u, max_body_bytes=2048))
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
        status, error = self._error(proxy, big)
        self.assertEqual((status, error["code"]), (413, "request_too_large"))
        self.assertEqual(proxy.fake.requests, [])

    def test_unknown_backend_lists_known(self) -> None:
        proxy = MemoryProxy()
        status, error = self._error(proxy, {**CHAT, "model": "nope:gpt-4o"})
        self.assertEqual(status, 400)
        self.assertIn("openai", error["message"])
        self.assertIn("nope", error["message"])

    def test_upstream_drop_is_502(self) -> None:
        proxy = MemoryProxy(lambda u: base_config(u, failure_handling={"max_attempts": 1}))
        proxy.fake.script.append(Drop())
        status, _ = self._error(proxy, CHAT)
        self.assertEqual(status, 502)

    def test_upstream_timeout_is_504(self) -> None:
        def config(u: str) -> dict[str, Any]:
            data = base_config(u, failure_handling={"max_attempts": 1})
            data["backends"]["openai"]["timeout"] = 30
            return data

        proxy = MemoryProxy(config)
        proxy.fake.script.append(Stall())
        d = proxy.request("POST", "/v1/chat/completions", CHAT)
        proxy.advance(29.9)
        self.assertEqual(len(proxy.fake.open), 1)
        self.assertNoResult(d)
        proxy.advance(0.2)
        status, _, content = self.successResultOf(d)
        self.assertEqual((status, self._shape(content)["code"]), (504, "upstream_timeout"))
        self.assertEqual(proxy.fake.lost, 1, "the stalled upstream request is dropped")

    def test_missing_key_names_env_var(self) -> None:
        proxy = MemoryProxy(lambda u: {"backends": {"openai": {"type": "openai"}},
                                       "default_backend": "openai"})
        status, error = self._error(proxy, CHAT)
        self.assertEqual(status, 500)
        self.assertIn("OPENAI_API_KEY", error["message"])

    def test_unknown_path_and_method(self) -> None:
        proxy = MemoryProxy()
        status, error = self._error(proxy, CHAT, path="/v1/nothing")
        self.assertEqual(status, 404)
        response = proxy.get("/v1/chat/completions")
        self.assertEqual(response.status, 405)
        self.assertIn("error", response.json())

    def test_loop_guard(self) -> None:
        proxy = MemoryProxy()
        status, error = self._error(proxy, CHAT, {"x-llmproxy-loop-guard": "1"})
        self.assertEqual((status, error["code"]), (400, "proxy_loop_detected"))
        self.assertEqual(proxy.fake.requests, [])
        self.assertEqual(proxy.post("/v1/chat/completions", CHAT).status, 200)
        self.assertEqual(proxy.fake.requests[0].headers["x-llmproxy-loop-guard"], "1")


class UnreachableTests(TestCase):
    """
    An upstream nobody listens for (a real refused connection).
    """

    async def test_upstream_unreachable_is_502(self) -> None:
        proxy = await start(self, lambda u: base_config(
            "http://127.0.0.1:1/v1", failure_handling={"max_attempts": 1}))
        status, _, content = await post(self, proxy.url + "/v1/chat/completions", CHAT)
        error = json.loads(content)["error"]
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertEqual(status, 502)

    async def test_models_fall_back_to_config(self) -> None:
        def config(u: str) -> dict[str, Any]:
            data = base_config("http://127.0.0.1:1/v1")
            data["backends"]["openai"]["models"] = ["only-this"]
            return data

        proxy = await start(self, config)
        response = await client(self).get(proxy.url + "/v1/models",
                                          headers=Headers({}))
        ids = {m["id"] for m in json.loads(await treq.content(response))["data"]}
        self.assertEqual(ids, {"only-this", "openai:only-this"})


class ModelsTests(SynchronousTestCase):
    def test_models_from_upstream(self) -> None:
        proxy = MemoryProxy()
        data = proxy.get("/v1/models").json()
        ids = {m["id"] for m in data["data"]}
        self.assertEqual(data["object"], "list")
        self.assertTrue({"gpt-4o", "openai:gpt-4o", "openai:gpt-4o-mini"} <= ids)

    def test_stalled_models_body_falls_back_to_config(self) -> None:
        def config(u: str) -> dict[str, Any]:
            data = base_config(u)
            data["backends"]["openai"]["models"] = ["from-config"]
            data["backends"]["openai"]["timeout"] = 5
            return data

        proxy = MemoryProxy(config)
        proxy.fake.models_reply = Stream([b'{"object": "list", "data": ['], end="stall")
        d = proxy.request("GET", "/v1/models")
        proxy.pump()
        self.assertEqual(len(proxy.fake.open), 1)
        self.assertNoResult(d)
        proxy.advance(5.1)
        ids = {m["id"] for m in self.successResultOf(d).json()["data"]}
        self.assertEqual(ids, {"from-config", "openai:from-config"})
        self.assertEqual(proxy.fake.lost, 1, "the stalled upstream request is dropped")


class BackpressureTests(TestCase):
    async def test_slow_client_pauses_the_upstream(self) -> None:
        """
        A client that stops reading makes llmproxy stop reading the
        upstream: the upstream's unsent bytes pile up on its side (TCP
        pushes back), not in llmproxy; when the client reads again,
        everything arrives.
        """
        proxy = await start(self)
        chunk = b'data: {"x": "' + b"x" * 16_000 + b'"}\n\n'
        count = 1500  # 24 MB
        proxy.fake.script.append(Stream([chunk] * count + [b"data: [DONE]\n\n"]))
        response = await client(self).post(
            proxy.url + "/v1/chat/completions", data=json.dumps({**CHAT, "stream": True}).encode())
        received = []
        done: Deferred[None] = Deferred()

        class Slow(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not received:
                    self.transport.pauseProducing()
                received.append(len(data))

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(None)

        reader = Slow()
        response.deliverBody(reader)
        for _ in range(100):
            await deferLater(reactor, 0.02)
            if received:
                break
        await deferLater(reactor, 0.5)

        [transport] = proxy.fake.stream_transports
        unsent = len(transport.dataBuffer) + transport._tempDataLen
        self.assertGreater(unsent, 8_000_000, "the upstream is held back, not drained")
        reader.transport.resumeProducing()
        await done
        self.assertEqual(sum(received), count * len(chunk) + len(b"data: [DONE]\n\n"))


class TransformTests(SynchronousTestCase):
    def test_no_error_event_after_the_final_one(self) -> None:
        from llmproxy.errors import UpstreamError
        from llmproxy.translate.transforms import ChatPassthrough, ResponsesPassthrough

        chat = ChatPassthrough()
        chat.events([b'data: {"x": 1}\n\n'])
        self.assertIn(b'"error"', ChatPassthrough().error(UpstreamError("cut")))
        chat.events([b"data: [DONE]\n\n"])
        self.assertEqual(chat.error(UpstreamError("late")), b"")
        responses = ResponsesPassthrough()
        responses.events([b'event: response.completed\ndata: {"type": "response.completed"}\n\n'])
        self.assertTrue(responses.finished)
        self.assertEqual(responses.error(UpstreamError("late")), b"")
