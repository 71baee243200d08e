"""
Backends that only stream (C{streams_only}, as the ChatGPT backend): over
real HTTP, a client that wants a whole answer gets one aggregated from the
stream (L{llmproxy.exchange.aggregated}); streaming clients are served as
before; a stream that fails before anything reached the client fails over,
or is relayed as the client's error when it is.

C{chatgpt} below is a test-only backend type: an C{openai-responses}
backend that declares C{streams_only} and makes every body say C{stream:
true} (the real backend's adapt step does that), in front of a fake that
refuses anything but streams and ends its streams, like the ChatGPT
backend, with a final response that lists no output.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IResponse
from twisted.web.server import Site

from llmproxy.backends import REGISTRY, BackendContext, BackendType
from llmproxy.backends.openai import OpenAIResponsesBackend
from llmproxy.config import ApiKey, BackendConfig, BackendKind, build_config
from llmproxy.exchange.aggregated import failed_stream, failure_status, retry_hint
from llmproxy.exchange.events import ATTEMPT_NAMESPACE, REPLY_NAMESPACE
from llmproxy.service import ProxyService
from llmproxy.sse import encode_event
from llmproxy.testing import (
    FakeOpenAI, Recorded, Reply, Stream, backend_data, config_data, function_call_events,
    listen_fake, responses_events, responses_object, sse_json,
)
from llmproxy.testing.upstream import Behaviour
from tests.harness import in_thread, post, sdk

TOOLS = [{"type": "function", "function": {
    "name": "exec_command", "description": "Run a command",
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}},
                   "required": ["cmd"]}}}]


class StreamOnlyBackend(OpenAIResponsesBackend):
    """
    A Responses backend whose upstream answers only streams.
    """

    streams_only = True

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        data = json.loads(body)
        data["stream"] = True
        return super().send(json.dumps(data).encode(), key, stream, timeout)


def build(config: BackendConfig, context: BackendContext) -> StreamOnlyBackend:
    return StreamOnlyBackend(config, context.pool, context.reactor, context.clock)


WITH_CHATGPT = REGISTRY.plus(BackendType(BackendKind("chatgpt"), build))


def chatgpt_style(chunks: Sequence[bytes]) -> list[bytes]:
    """
    A Responses stream as the ChatGPT backend sends it: its final response
    lists no output.
    """
    out = []
    for event in map(sse_json, chunks):
        data = event[0]
        if data["type"] == "response.completed":
            data = {**data, "response": {**data["response"], "output": []}}
        out.append(encode_event(data, data["type"]))
    return out


def failed(code: str | None, message: str, **extra: Any) -> list[bytes]:
    """
    A stream that starts, then fails with C{code}.
    """
    head = responses_events("gpt-5", ["Hel", "lo"])[:4]
    error = {"code": code, "message": message, **extra}
    return head + [encode_event({"type": "response.failed", "sequence_number": 4,
                                 "response": {"id": "resp_fake", "status": "failed",
                                              "error": error}}, "response.failed")]


class ChatGPTFake(FakeOpenAI):
    """
    Refuses what is not a stream, as the ChatGPT backend does, and answers
    streams in its style.
    """

    def _behaviour(self, recorded: Recorded) -> Behaviour | None:
        if not isinstance(recorded.body, dict) or recorded.body.get("stream") is not True:
            return Reply(400, {"detail": "Stream must be set to true"})
        return super()._behaviour(recorded)

    def _default(self, recorded: Recorded) -> Behaviour:
        behaviour = super()._default(recorded)
        assert isinstance(behaviour, Stream)
        return Stream(chatgpt_style(behaviour.chunks))


class StreamsOnlyTests(TestCase):
    """
    llmproxy with a C{chatgpt} backend (the default) and a C{backup} chat
    backend, each at its own fake.
    """

    async def setUp(self) -> None:
        self.chatgpt = ChatGPTFake(reactor)
        site = Site(self.chatgpt)
        site.noisy = False
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.addCleanup(self.chatgpt.wait_idle)
        self.backup, backup_port, backup_url = await listen_fake(reactor)
        self.addCleanup(backup_port.stopListening)
        self.addCleanup(self.backup.wait_idle)
        chatgpt_url = f"http://127.0.0.1:{port.getHost().port}/v1"
        data = config_data({"chatgpt": backend_data(chatgpt_url, "sk-chatgpt", type="chatgpt"),
                            "backup": backend_data(backup_url, "sk-backup")},
                           # Same-target retries (tests.test_retries) off.
                           failure_handling={"retries_per_target": 0})
        config = build_config(data, environ={}, source="test.yaml", kinds=WITH_CHATGPT.kinds)
        self.service = ProxyService(config, reactor, registry=WITH_CHATGPT)
        proxy_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.service.app.site())
        self.addCleanup(self.service.pool.closeCachedConnections)
        self.addCleanup(proxy_port.stopListening)
        self.url = f"http://127.0.0.1:{proxy_port.getHost().port}"
        self.replies: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        events = self.service.app.events

        def observe(event: dict[str, Any]) -> None:
            if event["log_namespace"] == REPLY_NAMESPACE:
                self.replies.append(event)
            elif event["log_namespace"] == ATTEMPT_NAMESPACE:
                self.attempts.append(event)

        events.addObserver(observe)
        self.addCleanup(events.removeObserver, observe)

    def sent(self) -> dict[str, Any]:
        """
        The one request the ChatGPT fake received, checked to be a stream.
        """
        [request] = self.chatgpt.requests
        self.assertIs(request.body["stream"], True)
        self.assertEqual(request.headers["accept"], "text/event-stream")
        return request.body  # type: ignore[no-any-return]

    # whole answers

    async def test_chat(self) -> None:
        """
        A chat client that wants a whole answer gets one, from the stream:
        text, finish reason and usage, translated; the reply event has the
        usage.
        """
        status, headers, body = await post(self, self.url + "/v1/chat/completions", {
            "model": "gpt-5", "messages": [{"role": "user", "content": "hello there"}]})
        self.assertEqual(status, 200, body)
        self.assertTrue(headers["content-type"].startswith("application/json"))
        answer = json.loads(body)
        self.assertEqual(answer["object"], "chat.completion")
        self.assertEqual(answer["choices"][0]["message"]["content"], "fake: hello there ")
        self.assertEqual(answer["choices"][0]["finish_reason"], "stop")
        self.assertEqual(answer["usage"]["prompt_tokens"], 3)
        self.assertEqual(headers["x-llmproxy-route"], "chatgpt:gpt-5")
        self.assertEqual(self.sent()["model"], "gpt-5")
        [reply] = self.replies
        self.assertEqual((reply["status"], reply["streamed"], reply["usage"]["input_tokens"]),
                         (200, False, 3))

    async def test_chat_sdk_tools(self) -> None:
        """
        The SDK's chat client gets a tool call.
        """
        self.chatgpt.script.append(Stream(chatgpt_style(function_call_events(
            "gpt-5", "exec_command", ['{"cmd":', '"ls"}'], "call_9"))))

        def call() -> Any:
            with sdk(self.url) as client:
                return client.chat.completions.create(
                    model="gpt-5", messages=[{"role": "user", "content": "list"}], tools=TOOLS)

        completion = await in_thread(call)
        [tool_call] = completion.choices[0].message.tool_calls
        self.assertEqual((tool_call.id, tool_call.function.name, tool_call.function.arguments),
                         ("call_9", "exec_command", '{"cmd":"ls"}'))
        self.assertEqual(completion.choices[0].finish_reason, "tool_calls")
        self.assertEqual(completion.usage.total_tokens, 3)
        self.sent()

    async def test_responses_sdk(self) -> None:
        """
        The SDK's Responses client gets a whole response with its output
        and usage.
        """
        def call() -> Any:
            with sdk(self.url) as client:
                return client.responses.create(model="gpt-5", input="hello sdk")

        response = await in_thread(call)
        self.assertEqual(response.output_text, "fake: hello sdk ")
        self.assertEqual((response.status, response.usage.input_tokens), ("completed", 3))
        self.sent()

    async def test_responses_items(self) -> None:
        """
        Reasoning (with its encrypted content) and function call items
        survive, in order.
        """
        reasoning = {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA",
                     "summary": [{"type": "summary_text", "text": "Look first."}]}
        calls = function_call_events("gpt-5", "exec_command", ['{"cmd":"ls"}'])
        events = [json.loads(e.split(b"data: ", 1)[1]) for e in chatgpt_style(calls)]
        for event in events:
            if "output_index" in event:
                event["output_index"] += 1
        events[2:2] = [{"type": "response.output_item.done", "output_index": 0,
                        "item": reasoning}]
        self.chatgpt.script.append(Stream([encode_event(e, e["type"]) for e in events]))
        status, _, body = await post(self, self.url + "/v1/responses", {
            "model": "gpt-5", "input": "list", "include": ["reasoning.encrypted_content"]})
        self.assertEqual(status, 200, body)
        output = json.loads(body)["output"]
        self.assertEqual([item["type"] for item in output], ["reasoning", "function_call"])
        self.assertEqual(output[0], reasoning)
        self.assertEqual(output[1]["arguments"], '{"cmd":"ls"}')

    async def test_previous_response(self) -> None:
        """
        The store keeps an aggregated answer: a request continuing from it
        on a chat backend sends its history.
        """
        status, _, body = await post(self, self.url + "/v1/responses", {
            "model": "gpt-5", "input": "first"})
        self.assertEqual(status, 200, body)
        first = json.loads(body)["id"]
        status, _, body = await post(self, self.url + "/v1/responses", {
            "model": "backup:gpt-4o", "input": "second", "previous_response_id": first})
        self.assertEqual(status, 200, body)
        [request] = self.backup.requests
        self.assertEqual(request.body["messages"], [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "fake: first "},
            {"role": "user", "content": "second"}])

    # streaming clients

    async def test_streams_unchanged(self) -> None:
        """
        Streaming clients get the upstream's events as they were.
        """
        def call() -> tuple[str, list[str]]:
            with sdk(self.url) as client:
                chat = client.chat.completions.create(
                    model="gpt-5", messages=[{"role": "user", "content": "a b"}], stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
                kinds = [e.type for e in client.responses.create(
                    model="gpt-5", input="c", stream=True)]
                return text, kinds

        text, kinds = await in_thread(call)
        self.assertEqual(text, "fake: a b ")
        self.assertEqual(kinds[0], "response.created")
        self.assertEqual(kinds[-1], "response.completed")
        self.assertEqual(len(self.chatgpt.requests), 2)

    # failures

    async def failover(
        self, chunks: list[bytes], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        self.chatgpt.script.append(Stream(chunks, headers=headers or {}))
        status, headers, body = await post(self, self.url + "/v1/chat/completions", {
            "model": "chatgpt:gpt-5|backup:gpt-4o",
            "messages": [{"role": "user", "content": "hi"}]})
        self.sent()
        return status, dict(headers), json.loads(body)

    async def test_failover_server_error(self) -> None:
        """
        A C{response.failed} before anything reached the client fails
        over; no route header of the failed attempt stays.
        """
        status, headers, body = await self.failover(failed("server_error", "Oops."))
        self.assertEqual(status, 200, body)
        self.assertEqual(body["choices"][0]["message"]["content"], "fake: hi")
        self.assertEqual((headers["x-llmproxy-route"], headers["x-llmproxy-attempts"]),
                         ("backup:gpt-4o", "2"))
        self.assertEqual(len(self.backup.requests), 1)
        self.assertEqual([(a["backend"], a["outcome"], a["error"]) for a in self.attempts],
                         [("chatgpt", "retry_next", "FailedStream"), ("backup", "ok", None)])

    async def test_head_checked_as_stream(self) -> None:
        """
        The answer to the stream asked for must be an event stream: a JSON
        answer is no answer, and the next attempt serves the client.
        """
        status, headers, body = await self.failover(
            [json.dumps(responses_object("gpt-5", "whole")).encode()],
            {"content-type": "application/json"})
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:gpt-4o"))
        self.assertEqual(self.attempts[0]["outcome"], "broken")

    async def test_failover_no_terminal(self) -> None:
        """
        A stream that ends without its final event fails over.
        """
        status, headers, body = await self.failover(responses_events("gpt-5", ["a"])[:5])
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:gpt-4o"))

    async def test_failover_rate_limited(self) -> None:
        """
        A rate limit in the stream fails over and cools the key for the
        time its message gives.
        """
        status, headers, body = await self.failover(
            failed("rate_limit_exceeded", "Rate limit reached. Please try again in 30s."))
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:gpt-4o"))
        [key] = json.loads((await post_get(self, self.url + "/v1/llmproxy/status")))[
            "backends"]["chatgpt"]["keys"]
        self.assertEqual(key["state"], "rate_limited", key)
        self.assertGreater(key["cooldown_left"], 25)

    async def test_server_error_alone(self) -> None:
        """
        With nowhere else to go, a stream's server error reaches the client
        as a 502 with the upstream's message.
        """
        self.chatgpt.script.append(Stream(failed("server_error", "Oops.")))
        status, _, body = await post(self, self.url + "/v1/responses", {
            "model": "gpt-5", "input": "hi"})
        self.assertEqual(status, 502, body)
        error = json.loads(body)["error"]
        self.assertEqual((error["message"], error["code"], error["type"]),
                         ("Oops.", "server_error", "server_error"))

    async def test_client_fault(self) -> None:
        """
        A failure that is the client's is relayed as the OpenAI error it
        is, without failing over; the SDK raises it typed.
        """
        self.chatgpt.script.append(Stream(failed(
            "invalid_prompt", "Your prompt was flagged as potentially violating policy.")))

        def call() -> Any:
            import openai

            with sdk(self.url) as client:
                try:
                    client.chat.completions.create(
                        model="chatgpt:gpt-5|backup:gpt-4o",
                        messages=[{"role": "user", "content": "long"}])
                except openai.BadRequestError as e:
                    return e
            return None

        error = await in_thread(call)
        self.assertIsNotNone(error)
        self.assertEqual(error.status_code, 400)
        self.assertEqual(error.code, "invalid_prompt")
        self.assertEqual(error.body["type"], "invalid_request_error")
        self.assertIn("flagged", error.body["message"])
        self.assertEqual(error.response.headers["x-llmproxy-route"], "chatgpt:gpt-5")
        self.assertEqual(self.backup.requests, [])
        [attempt] = self.attempts
        self.assertEqual(attempt["outcome"], "client_error")

    async def test_usage_limit(self) -> None:
        """
        A usage limit with nowhere else to go is a 429 with a truthful
        C{Retry-After} (the key cools longer than a request may wait).
        """
        self.chatgpt.script.append(Stream(failed(
            "usage_limit_reached", "The usage limit has been reached", resets_in_seconds=42)))
        status, headers, body = await post(self, self.url + "/v1/responses", {
            "model": "gpt-5", "input": "hi"})
        self.assertEqual(status, 429, body)
        self.assertEqual(json.loads(body)["error"]["code"], "rate_limit_exceeded")
        self.assertEqual(headers["retry-after"], "42")


class FailureStatusTests(SynchronousTestCase):
    """
    What a failed stream's error amounts to (L{failed_stream}).
    """

    def test_statuses(self) -> None:
        cases = [({"code": "context_length_exceeded"}, 400),
                 ({"code": None, "type": "invalid_request_error"}, 400),
                 ({"code": "invalid_api_key"}, 401), ({"code": "usage_not_included"}, 403),
                 ({"code": "rate_limit_exceeded"}, 429), ({"code": "usage_limit_reached"}, 429),
                 ({"code": "insufficient_quota"}, 429), ({"type": "tokens"}, 429),
                 ({"code": "server_error"}, 502), ({"code": None, "type": None}, 502),
                 ({"code": "whatever", "type": "odd"}, 502)]
        self.assertEqual([failure_status(error) for error, _ in cases],
                         [status for _, status in cases])

    def test_retry_hints(self) -> None:
        self.assertEqual(retry_hint({"resets_in_seconds": 7}, 100.0), 7.0)
        self.assertEqual(retry_hint({"resets_at": 130}, 100.0), 30.0)
        self.assertEqual(retry_hint({"resets_at": 30}, 100.0), 0.0)
        self.assertEqual(retry_hint({"message": "Please try again in 1.5s."}, 0), 1.5)
        self.assertEqual(retry_hint({"message": "try again in 250ms"}, 0), 0.25)
        self.assertEqual(retry_hint({"message": "Try again in 3 seconds"}, 0), 3.0)
        self.assertIsNone(retry_hint({"message": "later", "resets_at": True}, 0))

    def test_body(self) -> None:
        """
        The upstream's error object is the body, a type given when it had
        none; a retry hint becomes a C{retry-after} in whole seconds.
        """
        failed = failed_stream({"code": "usage_limit_reached", "message": "Limit.",
                                "type": None, "resets_at": 110.2, "plan_type": "plus"}, 100.0)
        self.assertEqual(failed.status, 429)
        self.assertEqual(json.loads(failed.body), {"error": {
            "code": "usage_limit_reached", "message": "Limit.", "type": "invalid_request_error",
            "resets_at": 110.2, "plan_type": "plus"}})
        self.assertEqual(failed.headers, {"retry-after": "11"})
        self.assertEqual(failed_stream({"message": "x", "type": None}, 0).headers, {})
        self.assertEqual(json.loads(failed_stream({"message": "x"}, 0).body)["error"]["type"],
                         "server_error")


async def post_get(case: TestCase, url: str) -> bytes:
    """
    GET C{url}'s body.
    """
    import treq

    from tests.harness import client

    response = await client(case).get(url)
    return await treq.content(response)  # type: ignore[no-any-return]
