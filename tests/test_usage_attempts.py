"""
Usage per attempt and on disconnect (#17, section 1): each attempt event
says what that attempt consumed (the upstream's usage, else a marked
estimate for a stream that relayed events, else L{None}); a client that
left mid-stream has what reached llmproxy in its reply event.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.exchange.events import ATTEMPT_NAMESPACE, REPLY_NAMESPACE
from llmproxy.testing import chat_chunks, chat_completion, chat_request
from llmproxy.testing.upstream import Reply, Stream
from tests.harness import MemoryProxy, client, start
from tests.test_usage import DETAILED, openai_layout


class Events:
    """
    The attempt and reply events of an app's publisher.
    """

    def __init__(self, events: Any) -> None:
        self.attempts: list[LogEvent] = []
        self.replies: list[LogEvent] = []
        events.addObserver(self)

    def __call__(self, event: LogEvent) -> None:
        if event["log_namespace"] == ATTEMPT_NAMESPACE:
            self.attempts.append(event)
        elif event["log_namespace"] == REPLY_NAMESPACE:
            self.replies.append(event)


def two_keys(upstream: str) -> dict[str, Any]:
    return {"backends": {"openai": {"type": "openai", "base_url": upstream,
                                    "api_keys": ["sk-one", "sk-two"]}}}


class AttemptUsageTests(SynchronousTestCase):
    """
    What each attempt event says it consumed.
    """

    def test_whole_answer(self) -> None:
        proxy = MemoryProxy()
        events = Events(proxy.service.app.events)
        proxy.fake.script.append(Reply(200, {**chat_completion("gpt-4o", "hi"),
                                             "usage": DETAILED}))
        proxy.chat()
        [attempt] = events.attempts
        self.assertEqual(attempt["usage"], DETAILED)
        self.assertEqual(attempt["frontend"], "chat")
        self.assertIsNone(attempt["events"])

    def test_stream(self) -> None:
        proxy = MemoryProxy()
        events = Events(proxy.service.app.events)
        layout = openai_layout()
        proxy.fake.script.append(Stream(layout))
        proxy.chat(stream=True)
        [attempt] = events.attempts
        self.assertEqual(attempt["usage"], DETAILED)
        self.assertEqual(attempt["events"], len(layout))

    def test_broken_after_its_usage(self) -> None:
        """
        A stream that reported its usage and then broke still counts it,
        unmarked: the upstream said so.
        """
        proxy = MemoryProxy()
        events = Events(proxy.service.app.events)
        proxy.fake.script.append(Stream(openai_layout()[:-1], end="drop"))
        answer = proxy.chat(stream=True)
        self.assertIn(b'"error"', answer.content)
        [attempt] = events.attempts
        self.assertEqual(attempt["outcome"], "broken")
        self.assertEqual(attempt["usage"], DETAILED)
        self.assertEqual(events.replies[0]["usage"], DETAILED)

    def test_broken_mid_answer_is_estimated(self) -> None:
        """
        A stream broken mid-answer without usage: the events relayed, as a
        marked estimate, on the attempt and on the reply the client got.
        """
        proxy = MemoryProxy()
        events = Events(proxy.service.app.events)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["a", "b", "c"])[:3], end="drop"))
        proxy.chat(stream=True)
        [attempt] = events.attempts
        self.assertEqual(attempt["usage"], {"output_tokens": 3, "estimated": True})
        self.assertEqual(attempt["events"], 3)
        self.assertEqual(events.replies[0]["usage"], {"output_tokens": 3, "estimated": True})

    def test_failed_attempt_then_another(self) -> None:
        """
        The first key's stream breaks before its answer reached the client
        (a failover): that attempt counts what it streamed, marked; the
        reply only the answer's usage.
        """
        proxy = MemoryProxy(two_keys)
        events = Events(proxy.service.app.events)
        proxy.fake.by_key["sk-one"] = [Stream(chat_chunks("gpt-4o", ["a"])[:1], end="drop")]
        proxy.fake.by_key["sk-two"] = [Stream(openai_layout())]
        answer = proxy.chat(stream=True)
        self.assertEqual(answer.status, 200)
        first, second = events.attempts
        self.assertEqual((first["outcome"], first["usage"]),
                         ("broken", {"output_tokens": 1, "estimated": True}))
        self.assertEqual((second["outcome"], second["usage"]), ("ok", DETAILED))
        self.assertEqual(events.replies[0]["usage"], DETAILED)

    def test_refused_attempt_has_none(self) -> None:
        proxy = MemoryProxy(two_keys)
        events = Events(proxy.service.app.events)
        proxy.fake.by_key["sk-one"] = [Reply(500, {"error": {"message": "down"}})]
        proxy.chat()
        first, second = events.attempts
        self.assertIsNone(first["usage"])
        self.assertIsNotNone(second["usage"])

    def test_reply_fields(self) -> None:
        """
        The reply event says the frontend, the route split, the session's
        key (a digest, never the client's id) and when its first event went.
        """
        proxy = MemoryProxy()
        events = Events(proxy.service.app.events)
        proxy.advance(5)
        proxy.post("/v1/chat/completions", chat_request(stream=True),
                   {"x-session-id": "my-secret-session"})
        [reply] = events.replies
        self.assertEqual((reply["frontend"], reply["backend"], reply["model"]),
                         ("chat", "openai", "gpt-4o"))
        self.assertTrue(reply["session"])
        self.assertNotIn("my-secret-session", reply["session"])
        self.assertEqual(reply["time_to_first_event"], 0.0)
        self.assertRegex(reply["request_id"], r"^req_[0-9a-f]{24}$")


class DisconnectUsageTests(TestCase):
    """
    A client that leaves mid-stream, over real sockets.
    """

    async def _leave(self, chunks: list[bytes], delay: float = 0.02, events_seen: int = 2,
                     linger: float = 0.0) -> Events:
        proxy = await start(self)
        events = Events(proxy.service.app.events)
        proxy.fake.script.append(Stream(chunks, delay=delay, end="stall"))
        response = await client(self).post(
            proxy.url + "/v1/chat/completions",
            data=json.dumps(chat_request(stream=True)).encode())
        got: Deferred[None] = Deferred()
        seen: list[bytes] = []

        class Quitter(Protocol):
            def dataReceived(self, data: bytes) -> None:
                seen.append(data)
                if b"".join(seen).count(b"\n\n") >= events_seen and not got.called:
                    got.callback(None)
                    # A moment for what the upstream sent with it to arrive.
                    reactor.callLater(linger, self.transport.stopProducing)

            def connectionLost(self, reason: Any = None) -> None:
                pass

        response.deliverBody(Quitter())
        await got
        for _ in range(40 + int(linger * 20)):
            if events.replies:
                break
            await deferLater(reactor, 0.05)
        return events

    async def test_partial_estimate(self) -> None:
        events = await self._leave(chat_chunks("gpt-4o", ["x"] * 3)[:4])
        [reply] = events.replies
        self.assertFalse(reply["completed"])
        usage = reply["usage"]
        self.assertTrue(usage["estimated"])
        self.assertGreaterEqual(usage["output_tokens"], 2)
        [attempt] = events.attempts
        self.assertEqual(attempt["outcome"], "cancelled")
        self.assertEqual(attempt["usage"], usage)

    async def test_usage_that_came(self) -> None:
        """
        The usage chunk came (the upstream sent all but C{[DONE]} at once,
        then stalled) before the client left: it is the reply's, unmarked.
        """
        events = await self._leave(openai_layout()[:-1], delay=0, events_seen=5, linger=0.2)
        [reply] = events.replies
        self.assertFalse(reply["completed"])
        self.assertEqual(reply["usage"], DETAILED)
        self.assertEqual(events.attempts[0]["usage"], DETAILED)


class ContinuationUsageTests(SynchronousTestCase):
    """
    A stream broken mid-answer, continued on the next target, which breaks
    too: each attempt counts what it streamed.
    """

    def test_both_cut(self) -> None:
        from llmproxy.testing.continuation import Speak
        from tests.test_continuation import TEXT, memory, two_backends

        proxy = memory(two_backends("prefill"))
        events = Events(proxy.service.app.events)
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT, cut_after=4)]
        proxy.post("/v1/chat/completions", {
            "model": "first:m1|second:m2", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
        first, second = events.attempts[:2]
        self.assertEqual((first["outcome"], first["usage"]["estimated"]), ("broken", True))
        self.assertEqual(second["backend"], "second")
        self.assertTrue(second["usage"]["estimated"])
        self.assertGreaterEqual(second["usage"]["output_tokens"], 1)
