"""
Prometheus metrics (#17, section 2): C{/metrics} behind the proxy key on
the main listener or on C{metrics.listen} without one; counters fed by the
exchange's events, bounded labels, gauges read from the live runtime, and
the Grafana dashboard naming only metrics llmproxy exports.
"""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.config.error import ConfigError
from llmproxy.metrics.collector import RuntimeCollector
from llmproxy.metrics.observer import RELOAD_NAMESPACE
from llmproxy.state.base import StoreStatus
from llmproxy.testing import chat_chunks, chat_request
from llmproxy.testing.upstream import Reply, Stream
from tests.harness import MemoryProxy, base_config, client, start
from tests.test_usage import openai_layout

KEY = "proxy-key-1"
AUTH = {"authorization": f"Bearer {KEY}"}
DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "config", "grafana-llmproxy.json")


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of an exposition, by name and sorted labels.
    """
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str | bytes, name: str, **labels: str) -> float:
    """
    The sum of C{name}'s samples whose labels include C{labels}.
    """
    return sum(v for (n, ls), v in samples(text).items()
               if n == name and labels.items() <= dict(ls).items())


def keyed(upstream: str, **extra: Any) -> dict[str, Any]:
    return {**base_config(upstream, proxy_keys=[KEY]), **extra}


def scrape(proxy: MemoryProxy) -> bytes:
    answer = proxy.get("/metrics", AUTH)
    assert answer.status == 200, answer
    return answer.content


class ConfigTests(SynchronousTestCase):
    def _config(self, **extra: Any) -> Any:
        return build_config(base_config("http://x.test/v1", **extra), environ={},
                            source="t.yaml", kinds=REGISTRY.kinds)

    def test_default_on(self) -> None:
        metrics = self._config().metrics
        self.assertEqual((metrics.enabled, metrics.listen, metrics.max_models), (True, None, 50))

    def test_section(self) -> None:
        metrics = self._config(metrics={"listen": "tcp:9464", "max_models": 3}).metrics
        self.assertEqual((metrics.listen, metrics.max_models), ("tcp:9464", 3))
        self.assertFalse(self._config(metrics=False).metrics.enabled)

    def test_unknown_key(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self._config(metrics={"listne": "tcp:1"})
        self.assertIn("metrics.listne", str(e.exception))
        self.assertIn("listen", str(e.exception))


class MainListenerTests(SynchronousTestCase):
    """
    C{/metrics} on the main listener, behind the proxy key.
    """

    def test_needs_the_key(self) -> None:
        proxy = MemoryProxy(keyed)
        self.assertEqual(proxy.get("/metrics").status, 401)
        answer = proxy.get("/metrics", AUTH)
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.headers["content-type"].startswith("text/plain; version="))
        self.assertIn(b"process_open_fds", answer.content)

    def test_refused_requests_have_their_frontend(self) -> None:
        proxy = MemoryProxy(keyed)
        proxy.post("/v1/responses", {"model": "gpt-4o", "input": "hi"})
        self.assertEqual(value(scrape(proxy), "llmproxy_requests_total", frontend="responses",
                               status_class="4xx", backend=""), 1)

    def test_off(self) -> None:
        proxy = MemoryProxy(lambda u: keyed(u, metrics=False))
        self.assertEqual(proxy.get("/metrics", AUTH).status, 404)
        self.assertFalse(proxy.service.app.events.observed)

    def test_requests_and_attempts(self) -> None:
        proxy = MemoryProxy(keyed)
        proxy.post("/v1/chat/completions", chat_request(), AUTH)
        text = scrape(proxy)
        self.assertEqual(value(text, "llmproxy_requests_total", frontend="chat",
                               backend="openai", model="gpt-4o", key="openai#1",
                               status_class="2xx", outcome="completed"), 1)
        self.assertEqual(value(text, "llmproxy_attempts_total", outcome="ok"), 1)
        self.assertEqual(value(text, "llmproxy_upstream_headers_seconds_count"), 1)
        self.assertNotIn(b"sk-test-1", text)
        self.assertNotIn(KEY.encode(), text)

    def test_failover_and_retry(self) -> None:
        def two(upstream: str) -> dict[str, Any]:
            return keyed(upstream, backends={"openai": {
                "type": "openai", "base_url": upstream, "api_keys": ["sk-a", "sk-b"]}})

        proxy = MemoryProxy(two)
        proxy.fake.by_key["sk-a"] = [Reply(429, {"error": {"message": "slow"}},
                                           {"retry-after": "30"})]
        proxy.post("/v1/chat/completions", chat_request(), AUTH)
        text = scrape(proxy)
        self.assertEqual(value(text, "llmproxy_attempts_total", outcome="rate_limited",
                               status_class="4xx"), 1)
        self.assertEqual(value(text, "llmproxy_failovers_total"), 1)
        self.assertEqual(value(text, "llmproxy_key_state", key="openai#1",
                               state="rate_limited"), 1)
        self.assertEqual(value(text, "llmproxy_key_state", key="openai#2", state="ok"), 1)
        self.assertGreater(value(text, "llmproxy_key_cooldown_seconds", key="openai#1"), 20)

    def test_breaker(self) -> None:
        proxy = MemoryProxy(lambda u: keyed(u, failure_handling={"max_attempts": 1}))
        for _ in range(8):
            proxy.fake.script.append(Reply(500, {"error": {"message": "down"}}))
            proxy.post("/v1/chat/completions", chat_request(), AUTH)
        text = scrape(proxy)
        self.assertEqual(value(text, "llmproxy_breaker_state", backend="openai",
                               model="gpt-4o", state="open"), 1)


class UsageMetricsTests(SynchronousTestCase):
    def test_streamed_usage_nobody_asked_for(self) -> None:
        """
        A streaming client that never asked for usage: its tokens, cached
        and reasoning included, are counted.
        """
        proxy = MemoryProxy(keyed)
        proxy.fake.script.append(Stream(openai_layout()))
        answer = proxy.post("/v1/chat/completions", chat_request(stream=True), AUTH)
        self.assertNotIn(b'"usage"', answer.content)
        text = scrape(proxy)
        for kind, count in (("prompt", 12), ("completion", 5), ("cached", 8), ("reasoning", 2)):
            self.assertEqual(value(text, "llmproxy_tokens_total", backend="openai",
                                   model="gpt-4o", type=kind), count, kind)
        self.assertEqual(value(text, "llmproxy_time_to_first_token_seconds_count"), 1)
        self.assertEqual(value(text, "llmproxy_stream_duration_seconds_count"), 1)
        self.assertEqual(value(text, "llmproxy_stream_event_gap_seconds_count"), 1)

    def test_broken_stream_is_estimated(self) -> None:
        proxy = MemoryProxy(keyed)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["a", "b"])[:3], end="drop"))
        proxy.post("/v1/chat/completions", chat_request(stream=True), AUTH)
        text = scrape(proxy)
        self.assertEqual(value(text, "llmproxy_estimated_tokens_total"), 3)
        self.assertEqual(value(text, "llmproxy_tokens_total"), 0)

    def test_active_streams(self) -> None:
        proxy = MemoryProxy(keyed)
        proxy.fake.script.append(Stream(chat_chunks("gpt-4o", ["a"] * 4), delay=1.0))
        d = proxy.request("POST", "/v1/chat/completions", chat_request(stream=True), AUTH)
        proxy.advance(1.5)
        self.assertEqual(value(scrape(proxy), "llmproxy_active_streams"), 1)
        for _ in range(10):
            proxy.advance(1.0)
        proxy.result(d)
        self.assertEqual(value(scrape(proxy), "llmproxy_active_streams"), 0)


class LabelTests(SynchronousTestCase):
    def test_models_bounded(self) -> None:
        """
        Past C{max_models} unnamed models, the rest are C{other}; a model
        the configuration names always has its own label.
        """
        def config(upstream: str) -> dict[str, Any]:
            return keyed(upstream, metrics={"max_models": 2}, backends={"openai": {
                "type": "openai", "base_url": upstream, "api_key": "sk-1",
                "models": ["named-model"]}})

        proxy = MemoryProxy(config)
        for model in ["m1", "m2", "m3", "m4", "named-model"]:
            proxy.post("/v1/chat/completions", chat_request(model=model), AUTH)
        text = scrape(proxy)
        models = {dict(ls).get("model") for (n, ls) in samples(text)
                  if n == "llmproxy_requests_total"}
        self.assertEqual(models, {"m1", "m2", "other", "named-model"})
        self.assertEqual(value(text, "llmproxy_requests_total", model="other"), 2)


class ReloadTests(SynchronousTestCase):
    def test_counted_from_the_application_s_events(self) -> None:
        proxy = MemoryProxy(keyed)
        app = proxy.service.app
        metrics = proxy.service.metrics
        assert metrics is not None
        Logger(namespace=RELOAD_NAMESPACE, observer=app.events).info("reloaded", ok=True,
                                                                      error=None)
        Logger(namespace=RELOAD_NAMESPACE, observer=app.events).warn("no", ok=False,
                                                                      error="bad")
        app.events.publish({"log_namespace": RELOAD_NAMESPACE, "ok": True, "error": None})
        # the main log alone is not where reloads are counted (no double count)
        Logger(namespace=RELOAD_NAMESPACE, observer=globalLogPublisher).info(
            "elsewhere", ok=True, error=None)
        text = metrics.render()
        self.assertEqual(value(text, "llmproxy_reloads_total", outcome="ok"), 2)
        self.assertEqual(value(text, "llmproxy_reloads_total", outcome="failed"), 1)

    def test_registries_are_per_service(self) -> None:
        one, two = MemoryProxy(keyed), MemoryProxy(keyed)
        one.post("/v1/chat/completions", chat_request(), AUTH)
        self.assertEqual(value(scrape(one), "llmproxy_requests_total", frontend="chat"), 1)
        self.assertEqual(value(scrape(two), "llmproxy_requests_total", frontend="chat"), 0)


class CaptureDropTests(SynchronousTestCase):
    def test_exposed(self) -> None:
        path = self.mktemp()
        proxy = MemoryProxy(lambda u: keyed(u, capture={"file": path}))
        capture = proxy.service.capture
        assert capture is not None
        capture.writer.dropped_total = 3
        self.assertEqual(value(scrape(proxy), "llmproxy_capture_dropped_total"), 3)


class SeparateListenerTests(TestCase):
    """
    C{metrics.listen}: C{/metrics} there without a key, not on the main
    listener.
    """

    async def test_separate(self) -> None:
        proxy = await start(self, lambda u: keyed(
            u, metrics={"listen": "tcp:0:interface=127.0.0.1"}))
        service = proxy.service
        service.metrics_service.startService()
        self.addCleanup(service.metrics_service.stopService)
        port = service.metrics_service.port
        assert port is not None
        http = client(self)
        response = await http.post(proxy.url + "/v1/chat/completions",
                                   data=json.dumps(chat_request()).encode(), headers=AUTH)
        await treq.content(response)
        main = await http.get(proxy.url + "/metrics", headers=AUTH)
        self.assertEqual(main.code, 404)
        await treq.content(main)
        url = f"http://127.0.0.1:{port.getHost().port}"
        scraped = await http.get(url + "/metrics")
        self.assertEqual(scraped.code, 200)
        text = await treq.content(scraped)
        self.assertEqual(value(text, "llmproxy_requests_total", frontend="chat"), 1)
        other = await http.get(url + "/v1/models")
        self.assertEqual(other.code, 404)
        await treq.content(other)

    async def test_main_listener_over_http(self) -> None:
        proxy = await start(self, keyed)
        http = client(self)
        refused = await http.get(proxy.url + "/metrics")
        self.assertEqual(refused.code, 401)
        await treq.content(refused)
        ok = await http.get(proxy.url + "/metrics", headers=AUTH)
        self.assertEqual(ok.code, 200)
        self.assertIn(b"llmproxy_active_streams", await treq.content(ok))


class StoreTests(SynchronousTestCase):
    """
    Whether the state store answers, from its status.
    """

    def _up(self, status: StoreStatus) -> dict[str, float]:
        proxy = MemoryProxy()
        collector = RuntimeCollector(lambda: proxy.service.app.runtime, lambda: 0, None,
                                     lambda: status)
        return {s.labels["kind"]: s.value for f in collector.collect() for s in f.samples
                if s.name == "llmproxy_store_up"}

    def test_up_and_down(self) -> None:
        self.assertEqual(self._up(StoreStatus("redis", "h:6379/0", False, 0.0, "refused")),
                         {"redis": 0.0})
        self.assertEqual(self._up(StoreStatus("sqlite", "s.db", True, 0.0)), {"sqlite": 1.0})

    def test_the_service_reports_its_store(self) -> None:
        proxy = MemoryProxy()
        metrics = proxy.service.metrics
        assert metrics is not None
        up = {s.labels["kind"]: s.value for f in metrics.registry.collect() for s in f.samples
              if s.name == "llmproxy_store_up"}
        self.assertEqual(up, {"memory": 1.0})

    def test_none(self) -> None:
        proxy = MemoryProxy()
        collector = RuntimeCollector(lambda: proxy.service.app.runtime, lambda: 0)
        self.assertNotIn("llmproxy_store_up", [f.name for f in collector.collect()])


class DashboardTests(SynchronousTestCase):
    """
    The Grafana dashboard in C{config/}: valid JSON with a Prometheus
    datasource variable, every expression naming metrics llmproxy exports.
    """

    def _exported(self) -> set[str]:
        proxy = MemoryProxy(keyed)
        proxy.fake.script.append(Stream(openai_layout()))
        proxy.post("/v1/chat/completions", chat_request(stream=True), AUTH)
        names = {n for (n, _) in samples(scrape(proxy))}
        metrics = proxy.service.metrics
        assert metrics is not None
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "gauge": ("",)}
        for family in metrics.registry.collect():  # those without samples yet
            names.update(family.name + s for s in suffixes[family.type])
        store = RuntimeCollector(lambda: proxy.service.app.runtime, lambda: 0, lambda: 0,
                                 lambda: StoreStatus("sqlite", "s.db", True, 0.0))
        names.update(s.name for family in store.collect() for s in family.samples)
        return names

    def test_dashboard(self) -> None:
        import re

        with open(DASHBOARD) as f:
            board = json.load(f)
        variables = board["templating"]["list"]
        self.assertIn("prometheus", [v.get("query") for v in variables if v["type"] == "datasource"])
        exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
        self.assertGreater(len(exprs), 10)
        exported = self._exported()
        for expr in exprs:
            names = set(re.findall(r"\b((?:llmproxy|process)_[a-z_]+)\b", expr))
            self.assertTrue(names, expr)
            self.assertLessEqual(names, exported, expr)

