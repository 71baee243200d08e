"""
resolve() and its caching Router: force_model, aliases, failover routes and
the body each target gets.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.errors import InvalidRequest
from llmproxy.routing.resolve import DEFAULT_POLICY, Router, resolve
from llmproxy.testing import config_data, make_config

CONFIG = make_config(config_data(
    {"a": {"type": "mock"}, "b": {"type": "mock"}},
    model_aliases=[{"pattern": "^cheap$", "replacement": "b:small?temperature=0.1"}],
    model_defaults={"big": {"top_p": 0.5}},
    failover_routes={"safe": {"policy": "mk", "elements": ["a:one", "b:two"]}},
))

models = st.sampled_from(["big", "small", "cheap", "safe", "a:big", "b:x?top_p=0.3",
                          "a:m|b:m", "zz:m", "m?temperature=9", "m?nope=1"])
bodies = st.fixed_dictionaries(
    {"model": models, "messages": st.just([{"role": "user", "content": "hi"}])},
    optional={"temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "stream": st.booleans()},
)


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except InvalidRequest as e:
        return ("error", e.message, e.param, e.code)


class ResolveTests(SynchronousTestCase):
    def test_untouched_body_is_forwarded_as_is(self) -> None:
        body = {"model": "small", "messages": []}
        [target] = resolve(CONFIG, body).targets
        self.assertIs(target.body, body)
        self.assertFalse(target.changed)

    def test_prefix_changes_only_the_model(self) -> None:
        body = {"model": "b:small", "messages": [], "temperature": 0.3}
        [target] = resolve(CONFIG, body).targets
        self.assertTrue(target.changed)
        self.assertEqual(target.body, {**body, "model": "small"})
        self.assertEqual(body["model"], "b:small", "the client's body is never mutated")

    def test_alias_then_params_and_defaults(self) -> None:
        [target] = resolve(CONFIG, {"model": "cheap", "messages": []}).targets
        self.assertEqual((target.backend, target.body["temperature"]), ("b", 0.1))
        [target] = resolve(CONFIG, {"model": "big", "messages": [], "top_p": 0.9}).targets
        self.assertEqual(target.body["top_p"], 0.9)
        [target] = resolve(CONFIG, {"model": "big", "messages": []}).targets
        self.assertEqual(target.body["top_p"], 0.5)

    def test_failover_route_and_policy(self) -> None:
        route = resolve(CONFIG, {"model": "safe", "messages": []})
        self.assertEqual([(t.backend, t.model) for t in route.targets], [("a", "one"), ("b", "two")])
        self.assertEqual(route.policy, "mk")
        self.assertEqual(resolve(CONFIG, {"model": "a:x|b:y", "messages": []}).policy,
                         DEFAULT_POLICY)

    def test_responses_dialect_places_params(self) -> None:
        body = {"model": "m?max_tokens=5&reasoning_effort=high&verbosity=low",
                "input": "x", "reasoning": {"summary": "auto"}}
        [target] = resolve(CONFIG, body, "responses").targets
        self.assertEqual(target.body["max_output_tokens"], 5)
        self.assertEqual(target.body["reasoning"], {"summary": "auto", "effort": "high"})
        self.assertEqual(target.body["text"], {"verbosity": "low"})

    @settings(max_examples=300)
    @given(st.lists(bodies, min_size=1, max_size=20))
    def test_router_answers_like_resolve(self, sequence: list[dict[str, Any]]) -> None:
        router = Router(CONFIG, size=3)
        for body in sequence:
            self.assertEqual(outcome(router.resolve, body), outcome(resolve, CONFIG, body))
            self.assertLessEqual(len(router), 3)
