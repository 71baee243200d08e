"""
Routing through HTTP (in memory): what the upstream receives for each
selector, alias, force-model, default and reasoning-model rule.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.trial.unittest import SynchronousTestCase

from llmproxy.config import ConfigError
from llmproxy.testing import backend_data, config_data, make_config
from tests.harness import MemoryProxy

USER = [{"role": "user", "content": "hi"}]


def two_backends(upstream: str, **extra: Any) -> dict[str, Any]:
    return config_data({"openai": backend_data(upstream, "sk-one"),
                        "openai-eu": backend_data(upstream + "/../v1", "sk-eu")}, **extra)


class SelectorTests(SynchronousTestCase):
    def _send(self, proxy: MemoryProxy, body: dict[str, Any]) -> tuple[int, Mapping[str, str], Any]:
        answer = proxy.post("/v1/chat/completions", {"messages": USER, **body})
        return answer.status, answer.headers, answer.json()

    def test_backend_prefix_and_uri_params(self) -> None:
        proxy = MemoryProxy(two_backends)
        status, headers, _ = self._send(
            proxy, {"model": "openai-eu:gpt-4o?temperature=0.7&top_p=0.5", "temperature": 0.1})
        self.assertEqual(status, 200)
        [seen] = proxy.fake.requests
        self.assertEqual(seen.body["model"], "gpt-4o")
        self.assertEqual((seen.body["temperature"], seen.body["top_p"]), (0.7, 0.5))
        self.assertEqual(seen.headers["authorization"], "Bearer sk-eu")
        self.assertEqual(headers["x-llmproxy-route"], "openai-eu:gpt-4o")

    def test_slash_before_colon_is_a_model(self) -> None:
        proxy = MemoryProxy(two_backends)
        status, headers, _ = self._send(proxy, {"model": "meta-llama/llama-3-8b:free"})
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].body["model"], "meta-llama/llama-3-8b:free")
        self.assertEqual(headers["x-llmproxy-route"], "openai:meta-llama/llama-3-8b:free")

    def test_bad_uri_params_are_400_naming_them(self) -> None:
        proxy = MemoryProxy(two_backends)
        for model, param in (("gpt-4o?temperature=3.5", "temperature"),
                             ("gpt-4o?foo=1", "foo"),
                             ("gpt-4o?reasoning_effort=extreme", "reasoning_effort")):
            status, _, body = self._send(proxy, {"model": model})
            self.assertEqual(status, 400, model)
            self.assertIn(param, body["error"]["message"])
        self.assertEqual(proxy.fake.requests, [])

    def test_lenient_drops_bad_params(self) -> None:
        proxy = MemoryProxy(lambda u: two_backends(u, uri_params="lenient"))
        status, _, _ = self._send(proxy, {"model": "gpt-4o?temperature=3.5&top_p=0.2"})
        self.assertEqual(status, 200)
        body = proxy.fake.requests[0].body
        self.assertNotIn("temperature", body)
        self.assertEqual(body["top_p"], 0.2)

    def test_aliases_first_match_and_backrefs(self) -> None:
        proxy = MemoryProxy(lambda u: two_backends(u, model_aliases=[
            {"pattern": "^gpt-4$", "replacement": "openai-eu:gpt-4o-mini?temperature=0.2"},
            {"pattern": "^claude-(.*)$", "replacement": "openai:gpt-\\1"},
            {"pattern": "^gpt-4", "replacement": "never-used"},
        ]))
        self._send(proxy, {"model": "gpt-4"})
        self._send(proxy, {"model": "claude-4o"})
        first, second = proxy.fake.requests
        self.assertEqual((first.body["model"], first.body["temperature"]), ("gpt-4o-mini", 0.2))
        self.assertEqual(first.headers["authorization"], "Bearer sk-eu")
        self.assertEqual(second.body["model"], "gpt-4o")

    def test_force_model_beats_client_and_aliases(self) -> None:
        proxy = MemoryProxy(lambda u: two_backends(
            u, force_model="openai-eu:gpt-4o?temperature=0.2",
            model_aliases=[{"pattern": "^gpt-4o$", "replacement": "openai:nope"}]))
        status, headers, _ = self._send(proxy, {"model": "o1-preview", "temperature": 1.5})
        self.assertEqual(status, 200)
        seen = proxy.fake.requests[0]
        self.assertEqual((seen.body["model"], seen.body["temperature"]), ("gpt-4o", 0.2))
        self.assertEqual(headers["x-llmproxy-route"], "openai-eu:gpt-4o")

    def test_model_defaults_fill_but_never_override(self) -> None:
        proxy = MemoryProxy(lambda u: two_backends(
            u, model_defaults={"gpt-4o": {"temperature": 0.2, "max_tokens": 100}}))
        self._send(proxy, {"model": "gpt-4o", "temperature": 0.9})
        self._send(proxy, {"model": "gpt-4o-mini"})
        first, second = proxy.fake.requests
        self.assertEqual((first.body["temperature"], first.body["max_tokens"]), (0.9, 100))
        self.assertNotIn("temperature", second.body)

    def test_o1_preview_adapted(self) -> None:
        proxy = MemoryProxy(two_backends)
        status, headers, _ = self._send(proxy, {
            "model": "o1-preview", "max_tokens": 500, "temperature": 0.5,
            "messages": [{"role": "system", "content": "Be terse."},
                         {"role": "user", "content": "hi"}]})
        self.assertEqual(status, 200)
        body = proxy.fake.requests[0].body
        self.assertEqual(body["max_completion_tokens"], 500)
        self.assertNotIn("max_tokens", body)
        self.assertNotIn("temperature", body)
        self.assertEqual([m["role"] for m in body["messages"]], ["user"])
        self.assertIn("Be terse.", body["messages"][0]["content"])
        self.assertIn("hi", body["messages"][0]["content"])
        self.assertEqual(headers["x-llmproxy-dropped-params"], "temperature")

    def test_o1_system_becomes_developer(self) -> None:
        proxy = MemoryProxy(two_backends)
        self._send(proxy, {"model": "o3-mini", "messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "U"}]})
        roles = [m["role"] for m in proxy.fake.requests[0].body["messages"]]
        self.assertEqual(roles, ["developer", "user"])

    def test_reasoning_models_regex_per_backend(self) -> None:
        def config(u: str) -> dict[str, Any]:
            data = two_backends(u)
            data["backends"]["openai"]["reasoning_models"] = "^my-thinker"
            return data

        proxy = MemoryProxy(config)
        self._send(proxy, {"model": "my-thinker-1", "max_tokens": 5})
        self._send(proxy, {"model": "o1", "max_tokens": 5})
        first, second = proxy.fake.requests
        self.assertIn("max_completion_tokens", first.body)
        self.assertEqual(second.body["max_tokens"], 5)

    def test_models_lists_alias_targets(self) -> None:
        proxy = MemoryProxy(lambda u: two_backends(u, model_aliases=[
            {"pattern": "^cheap$", "replacement": "openai:gpt-4o-mini"}]))
        ids = {m["id"] for m in proxy.get("/v1/models").json()["data"]}
        self.assertIn("openai:gpt-4o-mini", ids)
        self.assertIn("openai-eu:gpt-4o", ids)


class StartupTests(SynchronousTestCase):
    def test_invalid_regex_stops_startup(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            make_config({"model_aliases": [{"pattern": "gpt-(4", "replacement": "x"}]},
                        source="conf.yaml")
        self.assertIn("gpt-(4", str(caught.exception))
        self.assertIn("conf.yaml", str(caught.exception))

    def test_cli_aliases_come_first(self) -> None:
        config = make_config(
            {"model_aliases": [{"pattern": "^a$", "replacement": "file"}]},
            model_aliases=("^a$=cli",))
        self.assertEqual([r.replacement for r in config.model_aliases], ["cli", "file"])
