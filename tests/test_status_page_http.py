"""
The status page over HTTP: C{GET /v1/llmproxy/status} with C{Accept:
text/html}, and C{GET /status}; the JSON's auth; what the exchange did
shown on it (keys, circuits, traffic, accounts).
"""

from __future__ import annotations

import json
import re
from typing import Any

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.testing import Reply, config_data, backend_data, openai_config
from tests.harness import MemoryProxy, client
from tests.test_codex_backend import AUTH as CODEX_AUTH, _post_responses, start_codex

HTML = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
RATE_LIMITED = Reply(429, {"error": {"message": "Rate limit reached", "type":
                                     "requests", "param": None, "code": "rate_limit_exceeded"}},
                     {"retry-after": "30"})


def section(page: str, name: str) -> str:
    found = re.search(f'<section id="{name}">(.*?)</section>', page, re.S)
    assert found, f"no section {name} in {page}"
    return found.group(1)


class StatusPageTests(SynchronousTestCase):
    def proxy(self, keys: tuple[str, ...] = ("sk-secret-a", "sk-secret-b"),
              **extra: Any) -> MemoryProxy:
        return MemoryProxy(lambda upstream: openai_config(upstream, keys, **extra))

    def page(self, proxy: MemoryProxy, path: str = "/v1/llmproxy/status",
             headers: dict[str, str] | None = None) -> str:
        answer = proxy.get(path, {**HTML, **(headers or {})})
        self.assertEqual(answer.status, 200, answer)
        self.assertEqual(answer.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(answer.headers["cache-control"], "no-store")
        return answer.content.decode("utf-8")

    def test_browsers_get_the_page_others_the_json(self) -> None:
        proxy = self.proxy()
        page = self.page(proxy)
        self.assertTrue(page.startswith("<!DOCTYPE html>"), page[:50])
        self.assertIn("<td>openai#1</td>", section(page, "keys"))
        self.assertNotIn("sk-secret", page)
        for accept in (None, "*/*", "application/json"):
            answer = proxy.get("/v1/llmproxy/status", {"accept": accept} if accept else {})
            self.assertEqual(answer.headers["content-type"], "application/json")
            self.assertEqual(answer.headers["vary"], "accept")
            self.assertEqual([k["name"] for k in answer.json()["backends"]["openai"]["keys"]],
                             ["openai#1", "openai#2"])
        self.assertEqual(proxy.get("/v1/llmproxy/status", HTML).headers["vary"], "accept")

    def test_the_short_path_is_always_the_page(self) -> None:
        proxy = self.proxy()
        for accept in ({}, {"accept": "*/*"}):
            answer = proxy.get("/status", accept)
            self.assertEqual(answer.status, 200)
            self.assertEqual(answer.headers["content-type"], "text/html; charset=utf-8")

    def test_same_auth_as_the_json(self) -> None:
        proxy = self.proxy(proxy_keys=["pk"], metrics=False)
        for path in ("/status", "/v1/llmproxy/status"):
            for headers in ({}, {"authorization": "Bearer wrong"}):
                answer = proxy.get(path, {**HTML, **headers})
                self.assertEqual(answer.status, 401, (path, headers))
                self.assertEqual(answer.headers["content-type"], "application/json")
                self.assertEqual(answer.json()["error"]["code"], "invalid_api_key")
        self.assertFalse(proxy.service.app.events.observed,
                         "a refused view does not start the history")
        for path in ("/status", "/v1/llmproxy/status"):
            self.assertIn("<section", self.page(proxy, path, {"authorization": "Bearer pk"}))

    def test_a_rate_limited_key_with_its_cooldown(self) -> None:
        proxy = self.proxy()
        proxy.fake.by_key["sk-secret-a"] = [RATE_LIMITED]
        self.assertEqual(proxy.chat().status, 200)
        proxy.advance(5.0)
        rows = {re.findall("<td>(.*?)</td>", row)[1]: row for row in
                re.findall(r"<tr>(.*?)</tr>", section(self.page(proxy), "keys")) if "<td>" in row}
        self.assertIn('<span class="warn">rate_limited</span>', rows["openai#1"])
        self.assertIn("<td>25 s</td>", rows["openai#1"])
        self.assertIn("rate limited (429)", rows["openai#1"])
        self.assertIn('<span class="good">ok</span>', rows["openai#2"])

    def test_an_open_circuit(self) -> None:
        proxy = MemoryProxy(lambda upstream: config_data(
            {"a": backend_data(upstream, "k1"), "b": backend_data(upstream, "k2")},
            failure_handling={"retries_per_target": 0, "circuit_threshold": 1}))
        proxy.fake.by_key["k1"] = [Reply(503, {"error": {"message": "down"}})]
        self.assertEqual(proxy.chat(model="a:gpt-4o|b:gpt-4o").status, 200)
        backends = section(self.page(proxy), "backends")
        self.assertRegex(backends, r"<td>a</td><td>openai</td><td>gpt-4o</td><td><span "
                                   r'class="bad">open</span></td><td>1 / 1</td>')

    def test_traffic_counted_from_the_start_with_metrics_on(self) -> None:
        proxy = self.proxy()
        proxy.chat()
        self.assertIn("requests per second: latest 0.1 req/s",
                      section(self.page(proxy), "traffic"))

    def test_traffic_counted_from_the_first_view(self) -> None:
        proxy = self.proxy(failure_handling={"retries_per_target": 0}, metrics=False)
        self.assertFalse(proxy.service.app.events.observed)
        proxy.chat()  # not counted
        self.assertIn("requests per second: latest 0 req/s", self.page(proxy))
        self.assertTrue(proxy.service.app.events.observed)
        for _ in range(3):
            proxy.chat()
        proxy.fake.by_key["sk-secret-a"] = [Reply(500, {"error": {}})]
        proxy.fake.by_key["sk-secret-b"] = [Reply(500, {"error": {}})]
        self.assertEqual(proxy.chat().status, 500)
        traffic = section(self.page(proxy), "traffic")
        self.assertIn("requests per second: latest 0.4 req/s", traffic)
        self.assertIn("error rate: latest 25 %", traffic)
        self.assertIn("tokens per minute: latest", traffic)
        self.assertNotIn("tokens per minute: latest 0 ", traffic)
        self.assertIn("time to first token, p50: latest", traffic)

    def test_a_status_document_made_asynchronously(self) -> None:
        """
        The document may come from a coroutine (a shared store asked for its
        own status): both answers wait for it.
        """
        proxy = self.proxy()
        app = proxy.service.app
        plain = app.status

        async def later(request: Any) -> bytes:
            return plain(request)

        self.patch(app, "status", later)
        self.assertIn("openai#1", section(self.page(proxy), "keys"))
        self.assertEqual(proxy.get("/v1/llmproxy/status").json()["backends"]["openai"]["type"],
                         "openai")

    def test_uptime(self) -> None:
        proxy = self.proxy()
        proxy.clock.advance(3 * 3600 + 5 * 60)
        self.assertIn("up 3h 5m", self.page(proxy))

    def test_backend_names_are_escaped(self) -> None:
        proxy = MemoryProxy(lambda upstream: config_data(
            {"<b>x</b>&": backend_data(upstream, "k1")}))
        page = self.page(proxy)
        self.assertIn("&lt;b&gt;x&lt;/b&gt;&amp;", section(page, "backends"))
        self.assertNotIn("<b>", page)


class AccountsTests(TestCase):
    async def test_subscription_accounts_and_windows(self) -> None:
        clock = Clock()
        clock.advance(1000)
        codex = await start_codex(self, accounts=2, clock=clock)
        codex.fake.used["tok-1"] = 42.0
        await _post_responses(self, codex)
        response = await client(self).get(codex.url + "/status", headers=CODEX_AUTH)
        page = (await treq.content(response)).decode()
        accounts = section(page, "accounts")
        self.assertIn("<td>chatgpt#1</td><td>plus</td>", accounts)
        self.assertIn("primary: 42", accounts)
        self.assertIn("<td>chatgpt#2</td>", accounts)
        for path in codex.files:
            for token in json.loads(path.read_text())["tokens"].values():
                if isinstance(token, str) and len(token) > 8:
                    self.assertNotIn(token, page)
