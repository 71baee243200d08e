"""
What a strict client (the Codex CLI) trips over: the count of attempts a
relayed upstream error reports, and the reason phrase of every status.
"""

from __future__ import annotations

import json

import treq
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.frontends.rejections import reason
from llmproxy.testing import Reply, chat_request, openai_config
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
