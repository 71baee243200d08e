"""
Failover, key rotation, retries and timeouts, with a L{Clock} for every
wait: in memory (L{MemoryProxy}) for the decisions, over real connections
for streams that break and for load.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.testing import (
    Reply, Stall, Stream, backend_data, chat_chunks, chat_request, config_data, openai_config,
    sse_data,
)
from tests.harness import MemoryProxy, client, post, start

RATE_LIMITED = Reply(429, {"error": {"message": "Rate limit reached", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}},
                     {"retry-after": "30"})
QUOTA = Reply(429, {"error": {"message": "You exceeded your current quota",
                              "type": "insufficient_quota", "param": None,
                              "code": "insufficient_quota"}})
#: Same-target retries off, for tests of the failover order (see test_retries).
NO_RETRY = {"retries_per_target": 0}
DOWN = Reply(500, {"error": {"message": "boom", "type": "server_error", "param": None,
                             "code": None}})


async def until(predicate: Any, tries: int = 100) -> None:
    """
    Let the real reactor run (network only) until C{predicate()} holds.
    """
    for _ in range(tries):
        if predicate():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("condition never held")


def _chat(proxy: Any, body: dict[str, Any] | None = None) -> Any:
    return post_d(proxy, chat_request(**body or {}))


def post_d(proxy: Any, body: dict[str, Any]) -> Deferred[tuple[int, dict[str, str], bytes]]:
    case = proxy.case
    return Deferred.fromCoroutine(post(case, proxy.url + "/v1/chat/completions", body))


async def started(case: TestCase, make: Any, clock: Any = None) -> Any:
    proxy = await start(case, make, clock=clock)
    proxy.case = case
    return proxy


class KeyRotationTests(SynchronousTestCase):
    def test_rate_limited_key_skipped_every_request_succeeds(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["sk-limited", "sk-good"]))
        proxy.fake.by_key["sk-limited"] = [RATE_LIMITED]
        results = [proxy.chat() for _ in range(6)]
        self.assertEqual([r[0] for r in results], [200] * 6)
        self.assertEqual({r[1]["x-llmproxy-key"] for r in results}, {"openai#2"})
        limited = [r for r in proxy.fake.requests if r.headers["authorization"] == "Bearer sk-limited"]
        self.assertEqual(len(limited), 1, "a cooling key is not tried again")
        self.assertEqual(results[0][1]["x-llmproxy-attempts"], "2")

    def test_round_robin(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1", "k2", "k3"]))
        for _ in range(6):
            proxy.chat()
        used = [r.headers["authorization"][7:] for r in proxy.fake.requests]
        self.assertEqual(sorted(used), ["k1", "k1", "k2", "k2", "k3", "k3"])
        self.assertEqual(len(set(used[:3])), 3)

    def test_instance_pins_one_key(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1", "k2", "k3"]))
        for _ in range(3):
            status, headers, _ = proxy.chat(model="openai.2:gpt-4o")
            self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))
            self.assertEqual(headers["x-llmproxy-route"], "openai:gpt-4o")
        self.assertEqual({r.headers["authorization"] for r in proxy.fake.requests}, {"Bearer k2"})
        status, _, content = proxy.chat(model="openai.4:gpt-4o")
        self.assertEqual(status, 400)
        self.assertIn("no key instance 4", json.loads(content)["error"]["message"])

    def test_environment_pool_instances_follow_the_numbers(self) -> None:
        proxy = MemoryProxy(lambda u: {"default_backend": "openai",
                                       "backends": {"openai": {"base_url": u}}},
                            environ={"OPENAI_API_KEY_1": "e1", "OPENAI_API_KEY_3": "e3",
                                     "OPENAI_API_KEY": "bare"})
        status, headers, _ = proxy.chat(model="openai.3:gpt-4o")
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "OPENAI_API_KEY_3"))
        self.assertEqual(proxy.fake.requests[0].headers["authorization"], "Bearer e3")
        status, _, _ = proxy.chat(model="openai.2:gpt-4o")
        self.assertEqual(status, 400)
        for _ in range(4):
            proxy.chat()
        used = {r.headers["authorization"] for r in proxy.fake.requests}
        self.assertEqual(used, {"Bearer e1", "Bearer e3"}, "the bare key stays out of the pool")

    def test_pinned_key_rate_limited_does_not_switch_keys(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1", "k2"]))
        proxy.fake.by_key["k2"] = [RATE_LIMITED]
        status, _, _ = proxy.chat(model="openai.2:gpt-4o")
        self.assertEqual(status, 429)
        self.assertEqual({r.headers["authorization"] for r in proxy.fake.requests}, {"Bearer k2"})

    def test_invalid_key_marked_and_skipped(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["sk-bad", "sk-good"]))
        proxy.fake.by_key["sk-bad"] = [Reply(401, {"error": {"message": "Incorrect API key",
                                                             "type": "invalid_request_error",
                                                             "param": None,
                                                             "code": "invalid_api_key"}})]
        for _ in range(3):
            status, headers, _ = proxy.chat()
            self.assertEqual((status, headers["x-llmproxy-key"]), (200, "openai#2"))
        raw = proxy.get("/v1/llmproxy/status").content
        keys = json.loads(raw)["backends"]["openai"]["keys"]
        self.assertEqual([k["state"] for k in keys], ["invalid", "ok"])
        self.assertNotIn(b"sk-bad", raw)
        self.assertNotIn(b"sk-good", raw)

    def test_quota_on_every_key_is_503(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["q1", "q2"]))
        proxy.fake.by_key["q1"] = [QUOTA]
        proxy.fake.by_key["q2"] = [QUOTA]
        status, _, content = proxy.chat()
        self.assertEqual(status, 503)
        self.assertEqual(json.loads(content)["error"]["code"], "quota_exceeded")
        status, _, content = proxy.chat()
        self.assertEqual((status, json.loads(content)["error"]["code"]), (503, "quota_exceeded"))
        self.assertEqual(len(proxy.fake.requests), 2, "exhausted keys are not retried")

    def test_all_cooling_waits_then_succeeds(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["only"]))
        proxy.fake.by_key["only"] = [Reply(429, RATE_LIMITED.body, {"retry-after": "3"}),
                                     Reply(200, {"ok": True})]
        d = proxy.chat_d()
        self.assertEqual(len(proxy.fake.requests), 1)
        proxy.advance(3.0 - 0.01)
        self.assertNoResult(d)
        self.assertEqual(len(proxy.fake.requests), 1)
        proxy.advance(0.11)
        status, headers, content = self.successResultOf(d)
        self.assertEqual((status, json.loads(content)), (200, {"ok": True}))
        self.assertEqual(headers["x-llmproxy-attempts"], "2")

    def test_all_cooling_beyond_max_wait_is_429_with_retry_after(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b"]))
        proxy.fake.by_key["a"] = [RATE_LIMITED]
        proxy.fake.by_key["b"] = [Reply(429, RATE_LIMITED.body, {"retry-after": "20"})]
        status, headers, content = proxy.chat()
        self.assertEqual(status, 429)
        self.assertEqual(headers["retry-after"], "20")
        self.assertEqual(len(proxy.fake.requests), 2)
        proxy.advance(5)
        status, headers, _ = proxy.chat()
        self.assertEqual((status, headers["retry-after"]), (429, "15"))
        self.assertEqual(len(proxy.fake.requests), 2, "cooling keys are not hammered")


class FailoverTests(SynchronousTestCase):
    def test_inline_failover_serves_from_second(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"], failure_handling=NO_RETRY))
        proxy.fake.by_model["gpt-4"] = [DOWN]
        status, headers, content = proxy.chat(model="openai:gpt-4|openai:gpt-3.5-turbo")
        self.assertEqual(status, 200)
        self.assertEqual(headers["x-llmproxy-route"], "openai:gpt-3.5-turbo")
        self.assertEqual(headers["x-llmproxy-attempts"], "2")
        self.assertEqual([r.model for r in proxy.fake.requests], ["gpt-4", "gpt-3.5-turbo"])

    def test_client_errors_are_not_retried(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1", "k2"]))
        proxy.fake.script.append(Reply(400, {"error": {"message": "bad", "type": "x",
                                                       "param": None, "code": None}}))
        status, _, _ = proxy.chat(model="openai:gpt-4|openai:gpt-3.5-turbo")
        self.assertEqual((status, len(proxy.fake.requests)), (400, 1))

    def test_everything_down_lists_attempts(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"], failure_handling=NO_RETRY))
        proxy.fake.by_model["a"] = [DOWN]
        proxy.fake.by_model["b"] = [Reply(503, {"error": {"message": "overloaded",
                                                          "type": "server_error",
                                                          "param": None, "code": None}})]
        status, _, content = proxy.chat(model="openai:a|openai:b")
        self.assertEqual(status, 503)
        message = json.loads(content)["error"]["message"]
        self.assertIn("overloaded", message)
        self.assertIn("openai:a", message)
        self.assertIn("openai:b", message)

    def _order(self, policy: str) -> list[tuple[str, str]]:
        proxy = MemoryProxy(lambda u: config_data(
            {"one": backend_data(u, "1a", "1b"), "two": backend_data(u, "2a", "2b")},
            failover_routes={"gpt-x": {"policy": policy, "elements": ["one:m1", "two:m2"]}},
            failure_handling={"max_attempts": 10, **NO_RETRY},
        ))
        proxy.fake.script.extend([DOWN] * 10)
        status, _, _ = proxy.chat(model="gpt-x")
        self.assertEqual(status, 500)
        return [(r.model, r.headers["authorization"][7:]) for r in proxy.fake.requests]

    def test_policy_k(self) -> None:
        order = self._order("k")
        self.assertEqual(sorted(order), [("m1", "1a"), ("m1", "1b")])

    def test_policy_m(self) -> None:
        order = self._order("m")
        self.assertEqual([o[0] for o in order], ["m1", "m2"])

    def test_policy_km(self) -> None:
        order = self._order("km")
        self.assertEqual([o[0] for o in order], ["m1", "m1", "m2", "m2"])
        self.assertEqual(len(set(order)), 4)

    def test_policy_mk(self) -> None:
        order = self._order("mk")
        self.assertEqual([o[0] for o in order], ["m1", "m2", "m1", "m2"])
        self.assertEqual(len(set(order)), 4)

    def test_max_attempts_bounds_the_loop(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b", "c", "d"],
                                            failure_handling={"max_attempts": 2}))
        proxy.fake.script.extend([DOWN] * 4)
        status, _, _ = proxy.chat()
        self.assertEqual((status, len(proxy.fake.requests)), (500, 2))

    def test_total_budget_bounds_slow_attempts(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b"], failure_handling={
            "total_timeout_budget": 10}))
        proxy.fake.script.extend([Stall(), Stall()])
        d = proxy.chat_d()
        self.assertEqual(len(proxy.fake.requests), 1)
        proxy.advance(10.5)
        status, _, content = self.successResultOf(d)
        self.assertEqual(status, 504)
        self.assertEqual(len(proxy.fake.requests), 1, "no attempt starts once the budget is spent")
        self.assertEqual(proxy.fake.lost, 1)

    def test_circuit_breaker_skips_a_failing_backend(self) -> None:
        proxy = MemoryProxy(lambda u: config_data(
            {"bad": backend_data(u, "kb"), "good": backend_data(u, "kg")},
            failure_handling={"circuit_threshold": 2, "circuit_cooldown": 600,
                              **NO_RETRY},
        ))
        proxy.fake.by_key["kb"] = [DOWN]
        for _ in range(4):
            status, headers, _ = proxy.chat(model="bad:m|good:m")
            self.assertEqual((status, headers["x-llmproxy-route"]), (200, "good:m"))
        bad = [r for r in proxy.fake.requests if r.headers["authorization"] == "Bearer kb"]
        self.assertEqual(len(bad), 2)


class RedactionTests(SynchronousTestCase):
    def test_keys_never_reach_the_client_in_errors(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["sk-secret-value-1"]))
        proxy.fake.script.append(Reply(401, {"error": {
            "message": "Incorrect API key provided: sk-secr*****ue-1 (sk-secret-value-1).",
            "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}))
        status, headers, content = proxy.chat()
        self.assertEqual(status, 401)
        self.assertIn(b"[REDACTED]", content)
        self.assertNotIn(b"sk-secr", content)
        self.assertNotIn("sk-secret", json.dumps(headers))
        # The only key is now out: the next request is told so, by name.
        status, _, content = proxy.chat()
        self.assertEqual((status, json.loads(content)["error"]["code"]), (401, "invalid_api_key"))
        self.assertIn(b"openai", content)
        self.assertNotIn(b"sk-secret", content)

    def test_client_error_echoing_a_key_is_redacted(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["sk-secret-value-1"]))
        proxy.fake.script.append(Reply(400, {"error": {
            "message": "bad request for key sk-secret-value-1", "type": "invalid_request_error",
            "param": None, "code": None}}))
        status, _, content = proxy.chat()
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(content)["error"]["message"], "bad request for key [REDACTED]")


class StreamingFailureTests(TestCase):
    async def test_stream_cut_midway_is_an_error_event_not_a_retry(self) -> None:
        # With continuation on, see tests.test_continuation.
        proxy = await started(self, lambda u: openai_config(u, ["k1", "k2"], failure_handling={
            "continuation": False}))
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["par", "tial"])[:2], delay=0.05,
                                        end="drop"))
        status, _, content = await _chat(proxy, {"stream": True, "model": "openai:a|openai:b"})
        self.assertEqual(status, 200)
        events = sse_data(content)
        self.assertEqual(len(proxy.fake.requests), 1, "no retry after the first byte")
        self.assertEqual(sum(1 for e in events if e and '"error"' in e), 1)
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(sum(1 for e in events if e and "\"par\"" in e), 1)

    async def test_stream_failing_before_any_event_fails_over(self) -> None:
        proxy = await started(self, lambda u: openai_config(u, ["k1"]))
        proxy.fake.by_model["a"] = [Stream([], end="drop")]
        status, headers, content = await _chat(proxy, {"stream": True, "model": "openai:a|openai:b"})
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "openai:b"))
        self.assertTrue(content.endswith(b"data: [DONE]\n\n"))
        self.assertNotIn(b'"error"', content)

    async def test_idle_stream_is_cut_and_reported(self) -> None:
        clock = Clock()

        def config(u: str) -> dict[str, Any]:
            data = openai_config(u, ["k"])
            data["backends"]["openai"]["idle_timeout"] = 20
            return data

        proxy = await started(self, config, clock)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["x"])[:2], end="stall"))
        d = _chat(proxy, {"stream": True})
        await until(lambda: proxy.fake.open)
        await deferLater(reactor, 0.05)
        clock.advance(21)
        status, _, content = await d
        error = [json.loads(e) for e in sse_data(content) if "error" in e]
        self.assertEqual(error[0]["error"]["status_code"], 504)
        await until(lambda: proxy.fake.lost == 1)

    async def test_keepalive_while_waiting_for_a_cooling_key(self) -> None:
        """
        A streaming client that waits longer than keepalive_after gets the
        200 event stream at once, comments every keepalive_interval, then the
        answer.
        """
        clock = Clock()
        proxy = await started(self, lambda u: openai_config(u, ["only"], failure_handling={
            "keepalive_after": 5, "keepalive_interval": 2, "max_wait": 30}), clock)
        proxy.fake.by_key["only"] = [Reply(429, RATE_LIMITED.body, {"retry-after": "9"}),
                                     Stream(chat_chunks("gpt-4o", ["late"]))]
        response_d = client(self).post(
            proxy.url + "/v1/chat/completions",
            data=json.dumps(chat_request(stream=True)).encode())
        got: list[Any] = []
        response_d.addBoth(lambda r: got.append(r) or r)
        await until(lambda: len(proxy.fake.requests) == 1)
        await deferLater(reactor, 0.05)
        self.assertEqual(got, [], "nothing is sent before keepalive_after")
        clock.advance(5)
        response = await response_d
        self.assertEqual(response.code, 200)
        content_d = treq.content(response)
        for _ in range(3):
            clock.advance(2)
        await until(lambda: len(proxy.fake.requests) == 2)
        for _ in range(5):
            await deferLater(reactor, 0.02)
            clock.advance(0.01)
        content = await content_d
        self.assertTrue(content.startswith(b": keepalive\n\n"))
        self.assertGreaterEqual(content.count(b": keepalive"), 3)
        self.assertLess(content.rfind(b": keepalive"), content.find(b"data:"),
                        "keepalives stop at the first event")
        self.assertIn(b"late", content)
        self.assertTrue(content.endswith(b"data: [DONE]\n\n"))

    async def test_error_after_keepalive_is_in_band(self) -> None:
        clock = Clock()
        proxy = await started(self, lambda u: openai_config(u, ["only"], failure_handling={
            "keepalive_after": 1, "keepalive_interval": 1, "max_wait": 30}), clock)
        proxy.fake.by_key["only"] = [Reply(429, RATE_LIMITED.body, {"retry-after": "3"}),
                                     DOWN]
        d = _chat(proxy, {"stream": True})
        await until(lambda: len(proxy.fake.requests) == 1)
        await deferLater(reactor, 0.05)
        for _ in range(4):
            clock.advance(1)
        await until(lambda: len(proxy.fake.requests) == 2)
        status, _, content = await d
        self.assertEqual(status, 200)
        events = sse_data(content)
        self.assertEqual(json.loads(events[0])["error"]["status_code"], 500)
        self.assertEqual(events[-1], "[DONE]")
        self.assertIn(b": keepalive", content)


class LoadTests(TestCase):
    async def test_200_concurrent_with_a_limited_key_and_a_dead_backend(self) -> None:
        proxy = await started(self, lambda u: {
            "default_backend": "openai",
            "backends": {
                "dead": {"base_url": "http://127.0.0.1:1/v1", "api_key": "kd"},
                "openai": {"base_url": u, "api_keys": ["k1", "k2", "k3"]},
            },
            "failover_routes": {"gpt-4o": {"policy": "m",
                                           "elements": ["dead:gpt-4o", "openai:gpt-4o"]}},
        })
        proxy.fake.by_key["k2"] = [RATE_LIMITED]
        results = await gatherResults([_chat(proxy) for _ in range(200)])
        self.assertEqual([r[0] for r in results], [200] * 200, [r[2] for r in results if r[0] != 200][:1])
        served = [r for r in proxy.fake.requests if r.headers["authorization"] != "Bearer k2"]
        self.assertEqual(len(served), 200)


class ReviewRegressionTests(SynchronousTestCase):
    """
    Cases a review found broken; each test failed before its fix.
    """

    def test_same_model_twice_with_different_pins(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1", "k2"], failure_handling=NO_RETRY))
        proxy.fake.script.extend([DOWN, DOWN])
        proxy.chat(model="openai.1:gpt-4o|openai.2:gpt-4o")
        self.assertEqual([r.headers["authorization"] for r in proxy.fake.requests],
                         ["Bearer k1", "Bearer k2"])

    def test_same_model_twice_with_different_params(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1"], failure_handling=NO_RETRY))
        proxy.fake.script.extend([DOWN])
        proxy.chat(model="openai:gpt-4o?temperature=0.1|openai:gpt-4o?temperature=0.9")
        self.assertEqual([r.body.get("temperature") for r in proxy.fake.requests], [0.1, 0.9])

    def test_round_robin_with_one_backend_twice_in_a_route(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k1", "k2"], failover_routes={
            "gpt-x": {"policy": "m", "elements": ["openai:gpt-4o", "openai:gpt-4o-mini"]}}))
        for _ in range(4):
            proxy.chat(model="gpt-x")
        used = [r.headers["authorization"] for r in proxy.fake.requests]
        self.assertEqual(sorted(used), ["Bearer k1", "Bearer k1", "Bearer k2", "Bearer k2"])

    def test_waits_for_the_earliest_rate_limited_key(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b"]))
        proxy.fake.by_key["a"] = [Reply(429, RATE_LIMITED.body, {"retry-after": "8"}),
                                  Reply(200, {"ok": "a"})]
        proxy.fake.by_key["b"] = [Reply(429, RATE_LIMITED.body, {"retry-after": "30"})]
        d = proxy.chat_d()
        self.assertEqual(len(proxy.fake.requests), 2)
        proxy.advance(7.9)
        self.assertNoResult(d)
        proxy.advance(0.6)
        status, _, content = self.successResultOf(d)
        self.assertEqual((status, json.loads(content)), (200, {"ok": "a"}))

    def test_keyless_backend_429_waits_for_retry_after(self) -> None:
        proxy = MemoryProxy(lambda u: config_data({"local": {"base_url": u}},
                                                  failure_handling={"max_wait": 10}))
        proxy.fake.script.extend([Reply(429, RATE_LIMITED.body, {"retry-after": "3"}),
                                  Reply(200, {"ok": True})])
        d = proxy.chat_d()
        self.assertEqual(len(proxy.fake.requests), 1, "no instant retry")
        proxy.advance(2.9)
        self.assertEqual(len(proxy.fake.requests), 1, "no retry before retry-after")
        proxy.advance(0.2)
        status, _, _ = self.successResultOf(d)
        self.assertEqual((status, len(proxy.fake.requests)), (200, 2))

    def test_broken_streams_open_the_circuit(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"], failure_handling={
            "circuit_threshold": 2, "circuit_cooldown": 600}))
        for _ in range(2):
            proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["x", "y"])[:2], delay=0.05,
                                            end="drop"))
            d = proxy.chat_d(stream=True)
            proxy.advance(0.05)
            proxy.advance(0.05)
            self.assertEqual(self.successResultOf(d).status, 200)
        status = proxy.get("/v1/llmproxy/status").json()["backends"]["openai"]
        self.assertEqual(status["circuits"]["gpt-4o"]["state"], "open")

    def test_unreadable_success_body_fails_over(self) -> None:
        proxy = MemoryProxy(lambda u: config_data({
            "resp": backend_data(u, "k", type="openai-responses"),
            "chat": backend_data(u, "k2")}))
        proxy.fake.by_model["a"] = [Reply(200, b"<html>oops</html>")]
        status, headers, _ = proxy.chat(model="resp:a|chat:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "chat:b"))
        status, _, content = proxy.chat(model="resp:a")
        self.assertEqual((status, json.loads(content)["error"]["code"]),
                         (502, "upstream_invalid_response"))

    def test_loop_guard_on_every_route_before_auth(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"], proxy_keys=["pk"]))
        response = proxy.get("/v1/models", headers={"x-llmproxy-loop-guard": "1"})
        self.assertEqual(response.status, 400)
        self.assertEqual(response.json()["error"]["code"], "proxy_loop_detected")

    def test_stream_options_must_be_an_object(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"]))
        status, _, content = proxy.chat(stream=True, stream_options="x")
        self.assertEqual((status, json.loads(content)["error"]["param"]), (400, "stream_options"))
        self.assertEqual(proxy.fake.requests, [])

    def test_quota_retry_after_comes_from_the_pool(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["sk-quota"], failure_handling={
            "quota_cooldown": 120}))
        proxy.fake.by_key["sk-quota"] = [QUOTA]
        status, headers, content = proxy.chat()
        self.assertEqual((status, headers.get("retry-after")), (503, "120"), content)
        proxy.advance(100)
        status, headers, _ = proxy.chat()
        self.assertEqual((status, headers["retry-after"]), (503, "20"))

    def test_a_key_value_inside_an_error_does_not_change_its_meaning(self) -> None:
        """
        Redaction applies to what the client sees, after classification: a
        key whose value occurs in the upstream's error code (here "quota")
        does not turn a quota error into a rate limit.
        """
        proxy = MemoryProxy(lambda u: openai_config(u, ["quota"]))
        proxy.fake.by_key["quota"] = [QUOTA]
        status, _, content = proxy.chat()
        self.assertEqual((status, json.loads(content)["error"]["code"]), (503, "quota_exceeded"))

    def test_key_level_answer_closes_a_half_open_circuit(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b"], failure_handling={
            "circuit_threshold": 1, "circuit_cooldown": 30, **NO_RETRY}))
        proxy.fake.script.extend([DOWN, DOWN, RATE_LIMITED])
        proxy.chat()
        proxy.advance(31)
        status, _, _ = proxy.chat()
        self.assertEqual(status, 200, "the probe's 429 moved on to the next key")
        circuits = proxy.get("/v1/llmproxy/status").json()["backends"]["openai"]["circuits"]
        self.assertEqual(circuits, {}, "closed: no model has a breaker")

    def test_element_without_its_key_is_skipped(self) -> None:
        proxy = MemoryProxy(lambda u: config_data(
            {"openai": backend_data(u), "local": backend_data(u)}))
        status, headers, _ = proxy.chat(model="openai:gpt-4o|local:llama")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "local:llama"))
        status, _, content = proxy.chat(model="openai:gpt-4o")
        self.assertEqual(status, 500)
        self.assertIn(b"OPENAI_API_KEY", content)


class StreamingRegressionTests(TestCase):
    """
    Review cases about streams, over real connections.
    """

    async def test_stream_broken_before_first_event_fails_over_after_keepalive(self) -> None:
        clock = Clock()
        proxy = await started(self, lambda u: openai_config(u, ["k"], failure_handling={
            "keepalive_after": 1, "keepalive_interval": 1, **NO_RETRY}), clock)
        proxy.fake.by_model["a"] = [Stream([b": still thinking\n\n"], delay=0.01, end="drop")]
        d = _chat(proxy, {"stream": True, "model": "openai:a|openai:b"})
        await until(lambda: len(proxy.fake.requests) >= 1)
        clock.advance(1)
        await until(lambda: len(proxy.fake.requests) == 2)
        for _ in range(5):
            await deferLater(reactor, 0.02)
            clock.advance(0.01)
        status, _, content = await d
        self.assertEqual(status, 200)
        self.assertIn(b": keepalive", content)
        self.assertNotIn(b'"error"', content)
        self.assertTrue(content.endswith(b"data: [DONE]\n\n"))
