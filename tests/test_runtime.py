"""
The swappable runtime (L{llmproxy.exchange.runtime}): a new configuration
is swapped in for the requests to come, requests in flight keep theirs, and
what was learnt about the backends that remain (key cooldowns, circuit
breakers) is carried over by name.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.exchange.runtime import Runtime, live_upstreams
from llmproxy.service import ProxyService
from llmproxy.sse import DONE
from llmproxy.testing import Stream, chat_chunks, listen_fake
from tests.memsite import USER, Answer, Conversation, Scripts, config_of, memory_app


class SuccessorTests(SynchronousTestCase):
    """
    L{Runtime.successor}: what a new runtime takes over from the old one.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.scripts = Scripts(self.clock)

    def runtime(self, **backends: dict[str, Any]) -> Runtime:
        config = config_of(backends)
        return Runtime.of(config, live_upstreams(config, self.scripts, self.clock), self.clock)

    def test_same_configuration_keeps_everything(self) -> None:
        old = self.runtime(a={"api_keys": ["k1", "k2"]})
        new = old.successor(old.config, self.scripts)
        for part in ("backends", "pools", "breakers"):
            self.assertIs(getattr(new.upstreams, part)["a"], getattr(old.upstreams, part)["a"])
        self.assertEqual(len(self.scripts.made), 1)

    def test_a_changed_backend_is_new_and_keeps_its_pool_and_breaker(self) -> None:
        old = self.runtime(a={"api_keys": ["k1"]})
        new = old.successor(config_of({"a": {"api_keys": ["k1"], "timeout": 7}}), self.scripts)
        self.assertIsNot(new.upstreams.backends["a"], old.upstreams.backends["a"])
        self.assertEqual(new.upstreams.backends["a"].config.timeout, 7)
        self.assertIs(new.upstreams.pools["a"], old.upstreams.pools["a"])
        self.assertIs(new.upstreams.breakers["a"], old.upstreams.breakers["a"])

    def test_new_keys_keep_the_state_of_the_old_ones(self) -> None:
        old = self.runtime(a={"api_keys": ["k1", "k2"]})
        pool = old.upstreams.pools["a"]
        k1, k2 = pool.keys
        pool.mark_rate_limited(k1, 30)
        pool.mark_invalid(k2)
        pool.ordered()
        new = old.successor(config_of({"a": {"api_keys": ["k1", "k2-rotated", "k3"]}}),
                            self.scripts)
        fresh = new.upstreams.pools["a"]
        self.assertIsNot(fresh, pool)
        self.assertEqual([(k["name"], k["state"]) for k in fresh.status()],
                         [("a#1", "rate_limited"), ("a#2", "ok"), ("a#3", "ok")],
                         "a key with a new value starts afresh")
        self.assertEqual(fresh.status()[0]["cooldown_left"], 30)
        self.assertEqual([k.name for k in fresh.ordered()], ["a#2", "a#3", "a#1"],
                         "the rotation goes on where it was")

    def test_new_cooldowns_make_a_new_pool_with_the_old_state(self) -> None:
        old = self.runtime(a={"api_keys": ["k1"]})
        old.upstreams.pools["a"].mark_quota(old.upstreams.pools["a"].keys[0])
        config = config_of({"a": {"api_keys": ["k1"]}},
                           failure_handling={"default_cooldown": 9})
        new = old.successor(config, self.scripts)
        self.assertIsNot(new.upstreams.pools["a"], old.upstreams.pools["a"])
        self.assertTrue(new.upstreams.pools["a"].all_quota_exhausted())
        self.assertEqual(new.config.failure.default_cooldown, 9)

    def test_the_breaker_is_carried_with_its_new_settings(self) -> None:
        old = self.runtime(a={})
        breakers = old.upstreams.breakers["a"]
        for _ in range(breakers.threshold):
            breakers.record_failure("m")
        config = config_of({"a": {}}, failure_handling={"circuit_threshold": 9,
                                                        "circuit_cooldown": 99})
        new = old.successor(config, self.scripts).upstreams.breakers["a"]
        self.assertIs(new, breakers)
        breaker = new.breaker("m")
        assert breaker is not None
        self.assertEqual((breaker.state, breaker.threshold, breaker.cooldown), ("open", 9, 99))

    def test_backends_come_and_go_by_name(self) -> None:
        old = self.runtime(a={}, b={})
        old.upstreams.breakers["a"].record_failure("m")
        new = old.successor(config_of({"b": {}, "c": {}}), self.scripts)
        self.assertEqual(set(new.upstreams.backends), {"b", "c"})
        self.assertEqual(set(new.upstreams.pools), {"b", "c"})
        self.assertIs(new.upstreams.breakers["b"], old.upstreams.breakers["b"])
        self.assertEqual(new.upstreams.breakers["c"].status(), {})
        self.assertEqual(set(old.upstreams.backends), {"a", "b"}, "the old runtime is intact")

    def test_router_and_proxy_keys_follow_the_configuration(self) -> None:
        old = self.runtime(a={}, b={})
        new = old.successor(config_of({"b": {}, "a": {}}, proxy_keys=["pk-new"]),
                            self.scripts)
        self.assertEqual(new.router.resolve({"model": "m"}).targets[0].backend, "b")
        self.assertEqual(old.router.resolve({"model": "m"}).targets[0].backend, "a")
        self.assertEqual((old.proxy_keys, new.proxy_keys), ((), (b"pk-new",)))


class SwapTests(SynchronousTestCase):
    """
    Swapping the application's runtime, in memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.scripts = Scripts(self.clock)

    def test_a_stream_survives_a_swap(self) -> None:
        pieces = [f"w{i} " for i in range(10)]
        self.scripts.scripts["a"] = [Answer(chunks=chat_chunks("m", pieces), delay=1.0)]
        app = memory_app(config_of({"a": {"api_keys": ["k1"]}}), self.clock, self.scripts)
        stream = Conversation(app, self.clock)
        stream.send("POST", "/v1/chat/completions",
                    {"model": "a:m", "messages": USER, "stream": True})
        stream.run(2.5)
        self.assertIn(b"w1 ", stream.reply().body)
        self.assertNotIn(b"w5 ", stream.reply().body)
        old = self.scripts.latest("a")

        self.scripts.scripts["a"] = [Answer(text="from the new upstream")]
        config = config_of({"a": {"api_keys": ["k1"], "base_url": "http://new.invalid/v1"}})
        app.runtime = app.runtime.successor(config, self.scripts)
        new = self.scripts.latest("a")
        self.assertIsNot(new, old)
        later = Conversation(app, self.clock)
        later.send("POST", "/v1/chat/completions", {"model": "a:m", "messages": USER})
        later.run(0.5)
        reply = later.reply()
        self.assertEqual(reply.status, 200)
        self.assertEqual(json.loads(reply.body)["choices"][0]["message"]["content"],
                         "from the new upstream")

        stream.run(10)
        body = stream.reply().body
        self.assertTrue(body.endswith(DONE))
        self.assertEqual(b"".join(p.encode() for p in pieces),
                         b"".join(json.loads(line[6:])["choices"][0]["delta"]
                                  .get("content", "").encode()
                                  for line in body.split(b"\n\n")
                                  if line.startswith(b"data: {")))
        self.assertEqual((len(old.sent), len(new.sent)), (1, 1))

    def test_a_request_in_flight_fails_over_on_its_own_runtime(self) -> None:
        self.scripts.scripts["a"] = [Answer(500, after=2.0)]
        self.scripts.scripts["b"] = [Answer(text="old b")]
        app = memory_app(config_of({"a": {}, "b": {}},
                                   failure_handling={"retries_per_target": 0}),
                         self.clock, self.scripts)
        waiting = Conversation(app, self.clock)
        waiting.send("POST", "/v1/chat/completions", {"model": "a:m|b:m", "messages": USER})
        waiting.run(1)
        self.scripts.scripts["b"] = [Answer(text="new b")]
        app.runtime = app.runtime.successor(
            config_of({"a": {}, "b": {"base_url": "http://new.invalid/v1"}}), self.scripts)
        waiting.run(2)
        reply = waiting.reply()
        self.assertEqual(json.loads(reply.body)["choices"][0]["message"]["content"], "old b")
        self.assertEqual(reply.headers["x-llmproxy-attempts"], "2")
        self.assertEqual(self.scripts.latest("b").sent, [], "the new b got nothing")

    def _chat(self, app: Any) -> Conversation:
        conversation = Conversation(app, self.clock)
        conversation.send("POST", "/v1/chat/completions", {"model": "a:m", "messages": USER})
        conversation.run(0.5)
        return conversation

    def _status(self, app: Any) -> dict[str, Any]:
        conversation = Conversation(app, self.clock)
        conversation.send("GET", "/v1/llmproxy/status")
        conversation.run()
        return json.loads(conversation.reply().body)["backends"]

    def test_cooldowns_and_breakers_carry_over(self) -> None:
        self.scripts.scripts["a"] = [
            Answer(429, [b'{"error": {"message": "slow down"}}'], headers={b"retry-after": b"60"}),
            Answer(),
        ]
        self.scripts.scripts["b"] = [Answer(500)]
        config = config_of({"a": {"api_keys": ["k1", "k2"]}, "b": {}},
                           failure_handling={"circuit_threshold": 1})
        app = memory_app(config, self.clock, self.scripts)
        self.assertEqual(self._chat(app).reply().status, 200)
        self._chat(app).reply()
        b = Conversation(app, self.clock)
        b.send("POST", "/v1/chat/completions", {"model": "b:m", "messages": USER})
        b.run(0.5)
        self.assertEqual(b.reply().status, 500)

        config = config_of({"a": {"api_keys": ["k1", "k2", "k3"], "timeout": 5}, "b": {}},
                           failure_handling={"circuit_threshold": 1})
        app.runtime = app.runtime.successor(config, self.scripts)
        status = self._status(app)
        self.assertEqual([k["state"] for k in status["a"]["keys"]],
                         ["rate_limited", "ok", "ok"])
        self.assertEqual(status["b"]["circuits"]["m"]["state"], "open")
        new = self.scripts.latest("a")
        for _ in range(4):
            self.assertEqual(self._chat(app).reply().status, 200)
        self.assertEqual({k.name for k in new.sent if k is not None}, {"a#2", "a#3"},
                         "the cooling key is not tried after the swap")


class ServiceSwapTests(TestCase):
    """
    L{ProxyService.use_config}, over real sockets.
    """

    async def test_stream_keeps_its_upstream_new_requests_use_the_new_one(self) -> None:
        first, first_port, first_url = await listen_fake(reactor)
        second, second_port, second_url = await listen_fake(reactor)
        for fake, port in ((first, first_port), (second, second_port)):
            self.addCleanup(port.stopListening)
            self.addCleanup(fake.wait_idle)

        def config(url: str) -> Any:
            return build_config({"default_backend": "openai", "backends": {"openai": {
                "type": "openai", "base_url": url, "api_key": "sk-test"}}},
                environ={}, source="test.yaml", kinds=REGISTRY.kinds)

        service = ProxyService(config(first_url), reactor)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            service.app.site())
        self.addCleanup(service.pool.closeCachedConnections)
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        url = f"http://127.0.0.1:{port.getHost().port}/v1/chat/completions"
        first.script = [Stream(chat_chunks("gpt-4o", ["a ", "b ", "c "]), delay=0.1)]

        streaming: Deferred[Any] = Deferred.fromCoroutine(self._post(http, url, True))
        for _ in range(100):
            if first.requests:
                break
            await deferLater(reactor, 0.01)
        service.use_config(config(second_url))
        self.assertEqual(service.config.backends["openai"].base_url, second_url)
        status, body = await self._post(http, url, False)
        self.assertEqual(status, 200)
        status, stream = await streaming
        self.assertEqual(status, 200)
        self.assertTrue(stream.endswith(DONE))
        self.assertIn(b'"c "', stream)
        self.assertEqual((len(first.requests), len(second.requests)), (1, 1))

    async def _post(self, http: Any, url: str, stream: bool) -> tuple[int, bytes]:
        response = await http.post(url, data=json.dumps(
            {"model": "gpt-4o", "messages": USER, "stream": stream}).encode(),
            headers={"content-type": "application/json"})
        return response.code, await treq.content(response)
