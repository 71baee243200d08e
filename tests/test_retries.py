"""
Same-target retries and the failovers of a request that does not fit its
model (#15 items 1, 2 and 6): over real connections to the fake upstream,
with llmproxy's waits on a L{Clock} so the time each retry took is
asserted; the policy's pure functions with hypothesis.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.config import ConfigError, build_config
from llmproxy.exchange.events import ATTEMPT_NAMESPACE
from llmproxy.exchange.outcome import Outcome, classify_status
from llmproxy.exchange.retries import RetryPolicy, backoff, same_target_wait
from llmproxy.testing import (
    Drop, Reply, Stream, backend_data, chat_chunks, chat_completion, chat_request, config_data,
    listen_fake, make_config, sse_data,
)
from llmproxy.service import ProxyService
from llmproxy.testing.upstream import listen_local
from tests.harness import Proxy, post, start
from tests.test_attempts import World
from tests.test_streams_only import WITH_CHATGPT, ChatGPTFake, failed
from tests.test_upstream_faults import service_port

OK = Reply(200, chat_completion("a", "from the primary"))


def error(status: int, code: str | None, message: str = "no", **headers: str) -> Reply:
    """
    An OpenAI-shaped error answer.
    """
    return Reply(status, {"error": {"message": message, "type": "invalid_request_error",
                                    "param": None, "code": code}}, headers)


def rate_limited(seconds: float) -> Reply:
    return error(429, "rate_limit_exceeded", "Rate limit reached", **{"retry-after": str(seconds)})


SERVER_ERROR = error(500, None, "boom")
UNAVAILABLE = error(503, None, "overloaded")


def two_backends(upstream: str, **failure: Any) -> dict[str, Any]:
    """
    A primary (key C{kp}) and a backup (key C{kb}) backend at the fake.
    """
    return config_data({"primary": backend_data(upstream, "kp"),
                        "backup": backend_data(upstream, "kb")},
                       failure_handling=failure)


async def spin(tries: int = 20) -> None:
    """
    Let the real reactor move bytes for a moment (llmproxy's clock stays).
    """
    for _ in range(tries):
        await deferLater(reactor, 0.005)


class Harness:
    """
    llmproxy on a L{Clock} before a fake upstream, a full-jitter draw of 1
    (so a backoff is its ceiling), and the attempt events it emits.
    """

    def __init__(self, case: TestCase, proxy: Proxy, clock: Clock) -> None:
        self.case, self.proxy, self.clock = case, proxy, clock
        app = proxy.service.app
        app.runtime = replace(app.runtime, jitter=lambda: 1.0)
        self.attempts: list[LogEvent] = []
        app.events.addObserver(self._observe)

    def _observe(self, event: LogEvent) -> None:
        if event["log_namespace"] == ATTEMPT_NAMESPACE:
            self.attempts.append(event)

    def by_key(self, key: str) -> list[str]:
        """
        The models the fake was asked for with C{key}, in order.
        """
        return [r.model for r in self.proxy.fake.requests
                if r.headers.get("authorization") == f"Bearer {key}"]

    def chat(self, model: str, **fields: Any) -> Deferred[tuple[int, dict[str, str], bytes]]:
        url = self.proxy.url + "/v1/chat/completions"
        return Deferred.fromCoroutine(post(self.case, url, chat_request(model=model, **fields)))

    async def until(self, count: int) -> None:
        """
        Wait (really) until C{count} attempts are over: llmproxy has decided
        what follows them, and its clock may move on.
        """
        for _ in range(400):
            if len(self.attempts) >= count:
                return
            await deferLater(reactor, 0.005)
        raise AssertionError(f"{len(self.attempts)} attempts are over")

    async def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass on llmproxy's clock, then let bytes move.
        """
        self.clock.advance(seconds)
        await spin()


async def harness(case: TestCase, **failure: Any) -> Harness:
    clock = Clock()
    clock.advance(1000)
    proxy = await start(case, lambda u: two_backends(u, **failure), clock=clock)
    return Harness(case, proxy, clock)


class RateLimitTests(TestCase):
    """
    Item 1: a short 429 on the primary waits and retries it; a long one
    fails over at once; a target is never asked within its Retry-After.
    """

    async def test_short_retry_after_waits_for_the_primary(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [rate_limited(2), OK]
        d = h.chat("primary:a|backup:b")
        await h.until(1)
        await h.advance(1.99)
        self.assertEqual(len(h.proxy.fake.requests), 1, "nothing within the Retry-After")
        await h.advance(0.01)
        status, headers, content = await d
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "primary:a"))
        self.assertEqual(json.loads(content)["choices"][0]["message"]["content"],
                         "from the primary")
        self.assertEqual(headers["x-llmproxy-attempts"], "2")
        self.assertEqual((h.by_key("kp"), h.by_key("kb")), (["a", "a"], []))
        self.assertEqual([(e["outcome"], e["retry"]) for e in h.attempts],
                         [("rate_limited", False), ("ok", True)])

    async def test_long_retry_after_fails_over_at_once(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [rate_limited(10)]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual((h.by_key("kp"), h.by_key("kb")), (["a"], ["b"]))

    async def test_no_hint_fails_over_at_once(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [error(429, "rate_limit_exceeded")]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))

    async def test_configured_longest_same_target_wait(self) -> None:
        h = await harness(self, retry_same_max_wait=1)
        h.proxy.fake.by_key["kp"] = [rate_limited(2)]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))

    async def test_never_within_the_retry_after_even_when_parked(self) -> None:
        """
        A single target limited twice: its same-target retry after the
        first Retry-After, then the pool's parking after the second; each
        attempt waits its whole Retry-After.
        """
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [rate_limited(2), rate_limited(2), OK]
        d = h.chat("primary:a")
        await h.until(1)
        for count in (1, 2):
            await h.advance(1.99)
            self.assertEqual(len(h.proxy.fake.requests), count)
            await h.advance(0.01)
            await h.until(count + 1)
        status, headers, _ = await d
        self.assertEqual((status, headers["x-llmproxy-attempts"]), (200, "3"))

    async def test_a_wait_past_the_budget_is_not_taken(self) -> None:
        h = await harness(self, total_timeout_budget=2)
        h.proxy.fake.by_key["kp"] = [rate_limited(2), OK]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual(h.by_key("kp"), ["a"])

    async def test_another_free_key_goes_first(self) -> None:
        """
        An element with another free key moves to it at once rather than
        waiting for the limited one.
        """
        clock = Clock()
        proxy = await start(self, lambda u: config_data(
            {"primary": backend_data(u, "kp1", "kp2"), "backup": backend_data(u, "kb")},
            failover_routes={"x": {"policy": "km", "elements": ["primary:a", "backup:b"]}}),
            clock=clock)
        h = Harness(self, proxy, clock)
        proxy.fake.by_key["kp1"] = [rate_limited(2)]
        status, headers, _ = await h.chat("x")
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "primary#2"))
        self.assertEqual((h.by_key("kp1"), h.by_key("kp2"), h.by_key("kb")), (["a"], ["a"], []))


class TransientTests(TestCase):
    """
    Item 2: a 5xx or a broken connection is retried on the same target
    after a jittered backoff, C{retries_per_target} times, then fails over;
    a 4xx never is.
    """

    async def test_500_once_is_retried_after_the_backoff(self) -> None:
        h = await harness(self)
        chunks = chat_chunks("a", ["whole ", "answer"])
        h.proxy.fake.by_key["kp"] = [SERVER_ERROR, Stream(chunks)]
        d = h.chat("primary:a|backup:b", stream=True)
        await h.until(1)
        await h.advance(0.24)
        self.assertEqual(len(h.proxy.fake.requests), 1, "not before the backoff (0.25 s)")
        await h.advance(0.01)
        status, headers, content = await d
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "primary:a"))
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in (json.loads(e) for e in sse_data(content) if e != "[DONE]"))
        self.assertEqual(text, "whole answer")
        self.assertEqual(h.by_key("kb"), [])

    async def test_responses_frontend(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [UNAVAILABLE, OK]
        clock = h.clock
        url = h.proxy.url + "/v1/responses"
        d = Deferred.fromCoroutine(post(self, url, {"model": "primary:a|backup:b",
                                                    "input": "hi"}))
        await h.until(1)
        clock.advance(0.25)
        status, headers, content = await d
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "primary:a"))
        self.assertEqual(json.loads(content)["output"][0]["content"][0]["text"],
                         "from the primary")
        self.assertEqual(headers["x-llmproxy-attempts"], "2")

    async def test_persistent_503_retries_then_fails_over(self) -> None:
        h = await harness(self, retries_per_target=2)
        h.proxy.fake.by_key["kp"] = [UNAVAILABLE]
        d = h.chat("primary:a|backup:b")
        await h.until(1)
        await h.advance(0.25)
        await h.until(2)
        await h.advance(0.49)
        self.assertEqual(len(h.proxy.fake.requests), 2, "the second backoff doubles")
        await h.advance(0.01)
        status, headers, _ = await d
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual(headers["x-llmproxy-attempts"], "4")
        self.assertEqual((h.by_key("kp"), h.by_key("kb")), (["a", "a", "a"], ["b"]))
        self.assertEqual([(e["backend"], e["outcome"], e["retry"]) for e in h.attempts],
                         [("primary", "retry_next", False), ("primary", "retry_next", True),
                          ("primary", "retry_next", True), ("backup", "ok", False)])

    async def test_503_with_a_long_retry_after_fails_over_at_once(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [error(503, None, **{"retry-after": "30"})]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual(h.by_key("kp"), ["a"])

    async def test_a_reset_connection_is_retried(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [Drop(), OK]
        d = h.chat("primary:a|backup:b")
        await h.until(1)
        await spin()
        self.assertEqual(len(h.proxy.fake.requests), 1)
        await h.advance(0.25)
        status, headers, _ = await d
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "primary:a"))
        self.assertEqual([(e["outcome"], e["retry"]) for e in h.attempts],
                         [("unreachable", False), ("ok", True)])

    async def test_client_errors_are_never_retried(self) -> None:
        h = await harness(self)
        for status in (400, 404, 408, 422):
            h.proxy.fake.by_key["kp"] = [error(status, "invalid_value")]
            got, _, _ = await h.chat("primary:a")
            self.assertEqual(got, 408 if status == 408 else status)
        self.assertEqual(len(h.proxy.fake.requests), 4)

    async def test_an_opened_circuit_ends_the_retry(self) -> None:
        """
        A failure that opens its backend's circuit is not retried there.
        """
        h = await harness(self, circuit_threshold=1)
        h.proxy.fake.by_key["kp"] = [SERVER_ERROR]
        d = h.chat("primary:a")
        await h.until(1)
        await h.advance(0.25)
        status, _, content = await d
        self.assertEqual(status, 500, content)
        self.assertEqual(len(h.proxy.fake.requests), 1)

    async def test_retries_off(self) -> None:
        h = await harness(self, retries_per_target=0)
        h.proxy.fake.by_key["kp"] = [SERVER_ERROR]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-attempts"]), (200, "2"))

    async def test_max_attempts_counts_the_retries(self) -> None:
        h = await harness(self, max_attempts=2)
        h.proxy.fake.by_key["kp"] = [SERVER_ERROR]
        d = h.chat("primary:a|backup:b")
        await h.until(1)
        await h.advance(0.25)
        status, _, _ = await d
        self.assertEqual(status, 500)
        self.assertEqual(h.by_key("kb"), [], "the retry used the last attempt")


class NextElementTests(TestCase):
    """
    Item 6: a request too long for its model moves to the next element,
    never to that model again; with none left the client gets the
    original error.  Configured statuses and codes fail over too.
    """

    TOO_LONG = error(400, "context_length_exceeded",
                     "This model's maximum context length is 8192 tokens")

    async def test_context_length_moves_to_the_next_element(self) -> None:
        clock = Clock()
        proxy = await start(self, lambda u: config_data(
            {"primary": backend_data(u, "kp1", "kp2"), "backup": backend_data(u, "kb")},
            failover_routes={"x": {"policy": "km", "elements": ["primary:a", "backup:b"]}}),
            clock=clock)
        h = Harness(self, proxy, clock)
        proxy.fake.by_model["a"] = [self.TOO_LONG]
        status, headers, _ = await h.chat("x")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual([r.model for r in proxy.fake.requests], ["a", "b"],
                         "the model's other key is not tried")
        self.assertEqual([e["outcome"] for e in h.attempts], ["next_element", "ok"])

    async def test_with_none_left_the_original_error(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [self.TOO_LONG]
        status, headers, content = await h.chat("primary:a")
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(content), self.TOO_LONG.body)
        self.assertEqual(headers["x-llmproxy-route"], "primary:a")

    async def test_the_last_element_too_long_is_relayed_after_a_failover(self) -> None:
        h = await harness(self)
        h.proxy.fake.by_key["kp"] = [error(503, None, **{"retry-after": "30"})]
        h.proxy.fake.by_key["kb"] = [self.TOO_LONG]
        status, _, content = await h.chat("primary:a|backup:b")
        self.assertEqual((status, json.loads(content)), (400, self.TOO_LONG.body))

    async def test_extra_failover_statuses(self) -> None:
        h = await harness(self, extra_failover_statuses=[409])
        h.proxy.fake.by_key["kp"] = [error(409, None, "conflict")]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual(h.by_key("kp"), ["a"], "a 4xx is not retried on its target")

    async def test_extra_failover_codes(self) -> None:
        h = await harness(self, extra_failover_codes=["Unsupported_Feature"])
        h.proxy.fake.by_key["kp"] = [error(400, "unsupported_feature")]
        status, headers, _ = await h.chat("primary:a|backup:b")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        h.proxy.fake.by_key["kp"] = [error(400, "something_else")]
        status, _, _ = await h.chat("primary:a|backup:b")
        self.assertEqual(status, 400)


class StreamsOnlyTests(TestCase):
    """
    A backend that only streams says C{context_length_exceeded} in its
    stream's failure: the request moves on as from a 400.
    """

    async def test_context_length_in_a_failed_stream_moves_on(self) -> None:
        chatgpt = ChatGPTFake(reactor)
        port, origin = await listen_local(reactor, chatgpt)
        self.addCleanup(port.stopListening)
        backup, backup_port, backup_url = await listen_fake(reactor)
        self.addCleanup(backup_port.stopListening)
        data = config_data({"chatgpt": backend_data(origin + "/v1", "kc", type="chatgpt"),
                            "backup": backend_data(backup_url, "kb")})
        config = build_config(data, environ={}, source="test.yaml", kinds=WITH_CHATGPT.kinds)
        service = ProxyService(config, reactor, registry=WITH_CHATGPT)
        listening = await service_port(service)
        self.addCleanup(service.pool.closeCachedConnections)
        self.addCleanup(listening.stopListening)
        chatgpt.script.append(Stream(failed("context_length_exceeded", "Too long.")))
        url = f"http://127.0.0.1:{listening.getHost().port}/v1/chat/completions"
        status, headers, _ = await post(self, url, chat_request(model="chatgpt:gpt-5|backup:b"))
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "backup:b"))
        self.assertEqual((len(chatgpt.requests), len(backup.requests)), (1, 1))


class HoldTests(SynchronousTestCase):
    """
    The held retry in L{AttemptQueue} (over L{tests.test_attempts.World}).
    """

    def test_held_first_and_nothing_before_it_is_ready(self) -> None:
        world = World(a=1, b=1)
        world.breakers["a"].threshold = 5
        queue = world.queue("a:m", "b:m")
        slot = queue.next()
        assert slot is not None
        queue.failed(slot, Outcome.RETRY_NEXT, None, same=0.5)
        self.assertIsNone(queue.next(), "the element's retry waits; b does not jump it")
        self.assertEqual(queue.wait(), 0.5)
        world.clock.advance(0.5)
        again = queue.next()
        self.assertIs(again, slot)
        self.assertTrue(again is not None and again.repeat)
        self.assertEqual([s.target.backend for s in queue.queue], ["b"])

    def test_an_open_circuit_lets_the_hold_go(self) -> None:
        world = World(a=1, b=1)
        queue = world.queue("a:m", "b:m")
        slot = queue.next()
        assert slot is not None
        world.breakers["a"].record_failure("m")  # threshold 1: open
        queue.failed(slot, Outcome.RETRY_NEXT, None, same=0.5)
        world.clock.advance(0.5)
        nxt = queue.next()
        self.assertEqual(nxt.target.backend if nxt else None, "b")

    def test_a_longer_cooldown_from_elsewhere_parks_the_hold(self) -> None:
        world = World(a=1, b=1)
        queue = world.queue("a:m", "b:m")
        slot = queue.next()
        assert slot is not None and slot.key is not None
        world.pools["a"].mark_rate_limited(slot.key, 2)
        queue.failed(slot, Outcome.RATE_LIMITED, 2, same=2)
        world.pools["a"].mark_rate_limited(slot.key, 30)  # another request's 429
        nxt = queue.next()
        self.assertEqual(nxt.target.backend if nxt else None, "b")
        self.assertEqual(queue.parked, [slot])

    def test_a_spare_key_beats_the_hold(self) -> None:
        world = World(a=2)
        queue = world.queue("a:m", policy="m")
        slot = queue.next()
        assert slot is not None and slot.key is not None
        world.pools["a"].mark_rate_limited(slot.key, 2)
        queue.failed(slot, Outcome.RATE_LIMITED, 2, same=2)
        self.assertIsNone(queue.hold)
        nxt = queue.next()
        self.assertEqual(nxt.key.name if nxt and nxt.key else None, "a#2")

    def test_next_element_drops_the_model(self) -> None:
        world = World(a=2, b=1)
        queue = world.queue("a:m", "a:n", "b:m")
        slot = queue.next()
        assert slot is not None
        self.assertTrue(queue.elsewhere(slot.target))
        queue.failed(slot, Outcome.NEXT_ELEMENT, None)
        self.assertEqual([(s.target.backend, s.target.model) for s in queue.queue],
                         [("a", "n"), ("a", "n"), ("b", "m")])


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        failure = make_config(config_data({"a": backend_data("http://x/v1")})).failure
        self.assertEqual((failure.retry_same_max_wait, failure.retries_per_target,
                          failure.retry_backoff_base, failure.extra_failover_statuses,
                          failure.extra_failover_codes), (3.0, 1, 0.25, (), ()))

    def test_keys(self) -> None:
        failure = make_config(config_data({"a": backend_data("http://x/v1")}, failure_handling={
            "retry_same_max_wait": 1.5, "retries_per_target": 3, "retry_backoff_base": 0.5,
            "extra_failover_statuses": [409, 422], "extra_failover_codes": ["A_B"]})).failure
        self.assertEqual((failure.retry_same_max_wait, failure.retries_per_target,
                          failure.retry_backoff_base, failure.extra_failover_statuses,
                          failure.extra_failover_codes), (1.5, 3, 0.5, (409, 422), ("a_b",)))

    def test_bad_values(self) -> None:
        for key, value in [("extra_failover_statuses", [500]), ("extra_failover_statuses", [True]),
                           ("extra_failover_statuses", "409"), ("extra_failover_codes", [1]),
                           ("retries_per_target", -1), ("retry_backoff_base", -0.1)]:
            with self.assertRaises(ConfigError) as caught:
                make_config(config_data({"a": backend_data("http://x/v1")},
                                        failure_handling={key: value}))
            self.assertIn(key, str(caught.exception))


class ClassifyTests(SynchronousTestCase):
    def outcome(self, status: int, code: str, **kw: Any) -> Outcome:
        body = json.dumps({"error": {"message": "m", "type": "x", "code": code}}).encode()
        return classify_status(status, body, {}, 0.0, **kw).outcome

    def test_context_length(self) -> None:
        for status in (400, 413, 422):
            self.assertEqual(self.outcome(status, "context_length_exceeded"),
                             Outcome.NEXT_ELEMENT)
        self.assertEqual(self.outcome(500, "context_length_exceeded"), Outcome.RETRY_NEXT)
        self.assertEqual(self.outcome(429, "context_length_exceeded"), Outcome.RATE_LIMITED)

    def test_extra_codes(self) -> None:
        self.assertEqual(self.outcome(400, "Odd_One", extra_codes={"odd_one"}),
                         Outcome.NEXT_ELEMENT)
        self.assertEqual(self.outcome(400, "other", extra_codes={"odd_one"}),
                         Outcome.CLIENT_ERROR)


POLICY = st.builds(RetryPolicy, st.integers(0, 5), st.floats(0, 5), st.floats(0, 30))
HINT = st.none() | st.floats(0, 60)
DRAW = st.floats(0, 1)


class PolicyTests(SynchronousTestCase):
    @given(st.integers(0, 200), st.floats(0, 10), st.floats(0, 100), DRAW)
    def test_backoff_bounds(self, retry: int, base: float, cap: float, draw: float) -> None:
        wait = backoff(retry, base, cap, draw)
        self.assertGreaterEqual(wait, 0.0)
        self.assertLessEqual(wait, cap)
        if retry < 64:
            self.assertLessEqual(wait, base * 2 ** retry)

    @given(POLICY, st.sampled_from(list(Outcome)), st.booleans(), HINT, st.integers(0, 6),
           st.floats(0, 100), DRAW)
    def test_same_target_wait(self, policy: RetryPolicy, outcome: Outcome, transient: bool,
                              hint: float | None, retries: int, left: float,
                              draw: float) -> None:
        wait = same_target_wait(policy, outcome, transient, hint, retries, left, draw)
        if wait is None:
            return
        self.assertLess(retries, policy.retries)
        self.assertLess(wait, left, "never past the budget")
        self.assertLessEqual(wait, policy.cap)
        self.assertGreaterEqual(wait, hint or 0.0, "never within the retry hint")
        self.assertIn(outcome, (Outcome.RATE_LIMITED, Outcome.RETRY_NEXT))
        self.assertTrue(outcome is Outcome.RATE_LIMITED or transient)
        self.assertTrue(outcome is not Outcome.RATE_LIMITED or hint is not None)
