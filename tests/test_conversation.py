"""
Conversation keys (only what the client says) and the in-memory
per-conversation state.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.exchange.sessions import MemorySessions, SessionState
from llmproxy.routing.conversation import conversation_of
from llmproxy.testing import Reply, openai_config
from tests.harness import MemoryProxy

ids = st.text(min_size=1, max_size=20)
maybe = st.one_of(st.none(), ids)


def _headers(**values: str | None) -> Any:
    table = {k.replace("_", "-") if k != "session_id" else k: v for k, v in values.items()}
    return table.get


class ConversationKeyTests(SynchronousTestCase):
    @given(maybe, maybe, maybe, maybe, maybe)
    def test_order(self, header: str | None, field: str | None, cache: str | None,
                   root: str | None, x_header: str | None) -> None:
        body = {k: v for k, v in (("x_llmproxy_session", field), ("prompt_cache_key", cache))
                if v}
        found = conversation_of(_headers(session_id=header, x_session_id=x_header), body, root)
        expected = [("header session_id", header), ("header x-session-id", x_header),
                    ("x_llmproxy_session", field), ("prompt_cache_key", cache),
                    ("previous_response_id", root)]
        first = next(((s, v) for s, v in expected if v), None)
        if first is None:
            self.assertIsNone(found)
        else:
            assert found is not None
            self.assertEqual((found.source, found.value), first)

    def test_nothing_named_is_no_conversation(self) -> None:
        self.assertIsNone(conversation_of(_headers(), {"messages": [{"role": "user"}]}))

    @given(ids, st.text(max_size=5), st.text(max_size=5))
    def test_scoped(self, value: str, a: str, b: str) -> None:
        one = conversation_of(_headers(), {"prompt_cache_key": value}, scope=a)
        two = conversation_of(_headers(), {"prompt_cache_key": value}, scope=b)
        assert one is not None and two is not None
        self.assertEqual(one.key == two.key, a == b)

    def test_a_header_value_is_never_shown(self) -> None:
        found = conversation_of(_headers(session_id="secret-ish"), {})
        assert found is not None
        self.assertEqual(found.shown, "header session_id")
        self.assertNotIn("secret-ish", repr(found))
        body = conversation_of(_headers(), {"prompt_cache_key": "pck-1"})
        assert body is not None
        self.assertEqual(body.shown, "prompt_cache_key pck-1")
        odd = conversation_of(_headers(), {"prompt_cache_key": "a\r\nset-cookie: x"})
        assert odd is not None
        self.assertEqual(odd.shown, "prompt_cache_key")


class MemorySessionsTests(SynchronousTestCase):
    def _await(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def test_update_and_get(self) -> None:
        clock = Clock()
        sessions = MemorySessions(clock)
        self.assertEqual(self._await(sessions.get("a")), SessionState())
        clock.advance(5)
        new = self._await(sessions.update("a", lambda s: replace(s, turns=s.turns + 1)))
        self.assertEqual((new.turns, new.last_seen), (1, 5.0))
        self.assertEqual(self._await(sessions.get("a")).turns, 1)
        self.assertEqual(self._await(sessions.get("b")), SessionState())

    def test_idle_conversations_expire(self) -> None:
        clock = Clock()
        sessions = MemorySessions(clock, max_idle=10)
        self._await(sessions.update("old", lambda s: replace(s, turns=1)))
        clock.advance(6)
        self._await(sessions.update("new", lambda s: replace(s, turns=1)))
        clock.advance(5)
        self.assertEqual(self._await(sessions.get("old")), SessionState())
        sessions.expire()
        self.assertEqual(len(sessions), 1)
        self.assertEqual(self._await(sessions.get("new")).turns, 1)

    @given(st.lists(st.integers(0, 30), max_size=80), st.integers(1, 10))
    def test_bounded_by_count(self, keys: list[int], limit: int) -> None:
        sessions = MemorySessions(Clock(), max_items=limit)
        for k in keys:
            self._await(sessions.update(str(k), lambda s: replace(s, turns=s.turns + 1)))
        self.assertLessEqual(len(sessions), limit)
        if keys:
            self.assertGreaterEqual(self._await(sessions.get(str(keys[-1]))).turns, 1)


class ThroughTheProxyTests(SynchronousTestCase):
    """
    The conversation a request names is told back, and its proxy-only field
    never reaches the upstream.
    """

    def _proxy(self) -> Any:
        return MemoryProxy(lambda u: openai_config(u, ["k"]))

    def test_prompt_cache_key_is_the_conversation(self) -> None:
        proxy = self._proxy()
        answer = proxy.result(proxy.request("POST", "/v1/chat/completions", {
            "model": "gpt-x", "prompt_cache_key": "pck-7",
            "messages": [{"role": "user", "content": "hi"}]}))
        self.assertEqual(answer.headers["x-llmproxy-session"], "prompt_cache_key pck-7")
        self.assertEqual(proxy.fake.requests[0].body["prompt_cache_key"], "pck-7")

    def test_the_proxy_only_field_is_consumed(self) -> None:
        proxy = self._proxy()
        answer = proxy.result(proxy.request("POST", "/v1/chat/completions", {
            "model": "gpt-x", "x_llmproxy_session": "s-1",
            "messages": [{"role": "user", "content": "hi"}]}))
        self.assertEqual(answer.headers["x-llmproxy-session"], "x_llmproxy_session s-1")
        self.assertNotIn("x_llmproxy_session", proxy.fake.requests[0].body)

    def test_a_header_is_named_not_shown(self) -> None:
        proxy = self._proxy()
        answer = proxy.result(proxy.request(
            "POST", "/v1/chat/completions",
            {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]},
            {"session_id": "0192-abc"}))
        self.assertEqual(answer.headers["x-llmproxy-session"], "header session_id")

    def test_no_conversation_no_header(self) -> None:
        proxy = self._proxy()
        answer = proxy.result(proxy.request("POST", "/v1/chat/completions", {
            "model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        self.assertNotIn("x-llmproxy-session", answer.headers)

    def test_idle_conversations_are_expired_by_the_service(self) -> None:
        proxy = self._proxy()
        proxy.service.startService()
        self.addCleanup(proxy.service.stopService)
        sessions = proxy.service.app.runtime.sessions
        assert isinstance(sessions, MemorySessions)
        sessions.max_idle = 100
        Deferred.fromCoroutine(sessions.update("a", lambda s: replace(s, turns=1)))
        self.assertEqual(len(sessions), 1)
        proxy.clock.advance(120)
        self.assertEqual(len(sessions), 0)
        swapped = proxy.service.use_config(proxy.service.config)
        self.assertIs(swapped.sessions, sessions)

    def test_the_header_survives_a_failover(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(
            u, ["a", "b"], failure_handling={"retries_per_target": 0}))
        proxy.fake.by_key["a"] = [Reply(503, {"error": {"message": "down"}})]
        answer = proxy.result(proxy.request("POST", "/v1/chat/completions", {
            "model": "gpt-x", "prompt_cache_key": "pck-9",
            "messages": [{"role": "user", "content": "hi"}]}))
        self.assertEqual((answer.status, answer.headers["x-llmproxy-attempts"]), (200, "2"))
        self.assertEqual(answer.headers["x-llmproxy-session"], "prompt_cache_key pck-9")
