"""
What a strict client (the Codex CLI) trips over: the count of attempts a
relayed upstream error reports, and the reason phrase of every status.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import ProxyError, UpstreamError
from llmproxy.frontends.rejections import reason
from llmproxy.sse import encode_event
from llmproxy.testing import (
    Reply, backend_data, chat_request, config_data, openai_config, sse_events, sse_json,
)
from llmproxy.translate.transforms import (
    ChatToResponses, ResponsesPassthrough, failed_error, in_band_error,
)
from tests.harness import MemoryProxy, client, start

BAD_REQUEST = Reply(400, {"error": {"message": "bad", "type": "invalid_request_error",
                                    "param": None, "code": None}})
RATE_LIMITED = Reply(429, {"error": {"message": "slow down", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}},
                     {"retry-after": "30"})


class AttemptsHeaderTests(SynchronousTestCase):
    def test_a_relayed_client_error_is_one_attempt(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"]))
        proxy.fake.by_key["k"] = [BAD_REQUEST]
        status, headers, _ = proxy.chat()
        self.assertEqual((status, headers["x-llmproxy-attempts"]), (400, "1"))
        self.assertEqual(len(proxy.fake.requests), 1)

    def test_a_relayed_client_error_after_a_failover(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b"]))
        proxy.fake.by_key["a"] = [Reply(503, {"error": {"message": "down"}})]
        proxy.fake.by_key["b"] = [BAD_REQUEST]
        status, headers, _ = proxy.chat()
        self.assertEqual((status, headers["x-llmproxy-attempts"]), (400, "2"))


class ReasonPhraseTests(SynchronousTestCase):
    def test_standard_phrases(self) -> None:
        self.assertEqual(reason(429), b"Too Many Requests")
        self.assertEqual(reason(431), b"Request Header Fields Too Large")
        self.assertEqual(reason(200), b"OK")
        self.assertEqual(reason(599), b"Error")


class ReasonPhraseOnTheWireTests(TestCase):
    async def test_429_says_too_many_requests(self) -> None:
        proxy = await start(self, lambda u: openai_config(u, ["only"]))
        proxy.fake.by_key["only"] = [RATE_LIMITED]
        response = await client(self).post(
            proxy.url + "/v1/chat/completions", data=json.dumps(chat_request()).encode(),
            headers={"content-type": "application/json"})
        await treq.content(response)
        self.assertEqual((response.code, response.phrase), (429, b"Too Many Requests"))


class ResponsesFailureShapeTests(SynchronousTestCase):
    """
    A Responses stream that fails after it started ends with
    C{response.failed}, whatever relayed it, with the error code a Codex
    client tells apart.
    """

    def _failed(self, raw: bytes) -> dict[str, Any]:
        [event] = sse_events(raw)
        self.assertEqual(event.event, "response.failed")
        data = event.json()
        self.assertEqual(data["type"], "response.failed")
        return data  # type: ignore[no-any-return]

    def test_pass_through_fails_the_upstream_response(self) -> None:
        transform = ResponsesPassthrough("resp_ours")
        created = {"type": "response.created", "sequence_number": 0,
                   "response": {"id": "resp_up", "object": "response", "created_at": 7,
                                "status": "in_progress", "model": "gpt-x", "output": []}}
        transform.events([encode_event(created, "response.created")])
        data = self._failed(transform.error(UpstreamError("cut", code="upstream_timeout")))
        self.assertEqual(data["sequence_number"], 1)
        self.assertEqual((data["response"]["id"], data["response"]["model"]), ("resp_up", "gpt-x"))
        self.assertEqual(data["response"]["status"], "failed")
        self.assertEqual(data["response"]["error"], {"code": "server_error", "message": "cut"})

    def test_upstream_error_event_becomes_response_failed(self) -> None:
        transform = ResponsesPassthrough("resp_ours")
        created = encode_event({"type": "response.created", "sequence_number": 0,
                                "response": {"id": "resp_up", "object": "response",
                                             "status": "in_progress", "output": []}},
                               "response.created")
        delta = encode_event({"type": "response.output_text.delta", "sequence_number": 1,
                              "delta": "x"}, "response.output_text.delta")
        error = encode_event({"type": "error", "sequence_number": 2,
                              "code": "context_length_exceeded", "message": "too long"},
                             "error")
        out = transform.events([created, delta, error])
        self.assertTrue(out.startswith(created + delta), "the other events are untouched")
        data = self._failed(out[len(created + delta):])
        self.assertEqual(data["sequence_number"], 2)
        self.assertEqual(data["response"]["id"], "resp_up")
        self.assertEqual(data["response"]["error"],
                         {"code": "context_length_exceeded", "message": "too long"})
        self.assertTrue(transform.finished)
        self.assertEqual(transform.error(ProxyError("late")), b"")

    def test_before_any_upstream_event(self) -> None:
        raw = in_band_error(RESPONSES, ProxyError("gone", code="upstream_unreachable"), "resp_1")
        self.assertEqual(self._failed(raw)["response"]["id"], "resp_1")

    def test_chat_frontend_keeps_its_error_event(self) -> None:
        raw = in_band_error(CHAT, ProxyError("gone", code="upstream_unreachable"))
        self.assertEqual(sse_json(raw)[0]["error"]["code"], "upstream_unreachable")

    def test_codes(self) -> None:
        cases = {
            "context_length_exceeded": "context_length_exceeded",
            "insufficient_quota": "insufficient_quota",
            "quota_exceeded": "insufficient_quota",
            "rate_limit_exceeded": "rate_limit_exceeded",
            "upstream_timeout": "server_error",
            None: "server_error",
        }
        for code, expected in cases.items():
            self.assertEqual(failed_error(ProxyError("x", code=code))["code"], expected, code)

    def test_rate_limit_hint(self) -> None:
        error = ProxyError("Every API key is rate limited", code="rate_limit_exceeded",
                           headers={"retry-after": "12"})
        self.assertEqual(failed_error(error)["message"],
                         "Every API key is rate limited. Please try again in 12s.")
        hinted = ProxyError("Please try again in 3s", code="rate_limit_exceeded",
                            headers={"retry-after": "3"})
        self.assertEqual(failed_error(hinted)["message"], "Please try again in 3s")

    def test_bridged_stream_uses_the_same_codes(self) -> None:
        transform = ChatToResponses("resp_b", 0, {"model": "m", "input": "hi"})
        events = sse_events(transform.error(ProxyError("no quota", code="quota_exceeded")))
        self.assertEqual(events[-1].event, "response.failed")
        self.assertEqual(events[-1].json()["response"]["error"]["code"], "insufficient_quota")


CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "run", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "namespace", "name": "multi_agent_v1",
     "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]},
    {"type": "web_search"},
]


class CodexToolsTests(SynchronousTestCase):
    """
    The tools the Codex CLI sends with every turn: on a chat backend the
    ones it cannot run are left out and reported, never a 400; a Responses
    backend gets them untouched.
    """

    def _proxy(self) -> MemoryProxy:
        return MemoryProxy(lambda u: config_data({
            "chat": backend_data(u, "sk-c"),
            "resp": backend_data(u, "sk-r", type="openai-responses"),
        }))

    def test_chat_backend(self) -> None:
        proxy = self._proxy()
        status, headers, _ = proxy.post("/v1/responses", {
            "model": "chat:gpt-x", "input": "hi", "tools": CODEX_TOOLS, "tool_choice": "auto"})
        self.assertEqual(status, 200)
        [seen] = proxy.fake.requests
        self.assertEqual([t["function"]["name"] for t in seen.body["tools"]], ["exec_command"])
        self.assertEqual(seen.body["tool_choice"], "auto")
        self.assertIn("tools.namespace", headers["x-llmproxy-dropped-params"].split(","))
        self.assertIn("tools.web_search", headers["x-llmproxy-dropped-params"].split(","))

    def test_responses_backend(self) -> None:
        proxy = self._proxy()
        status, headers, _ = proxy.post("/v1/responses", {
            "model": "resp:gpt-x", "input": "hi", "tools": CODEX_TOOLS})
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].body["tools"], CODEX_TOOLS)
        self.assertNotIn("x-llmproxy-dropped-params", headers)
