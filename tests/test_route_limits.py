"""
The bounds on what one model string may cost: its length and its number of
failover elements are capped (refused before any per-element work), repeats
are planned once, targets share the bodies they have in common, and the
router's cache of plans stays small whatever clients send.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends import REGISTRY
from llmproxy.config import build_config
from llmproxy.errors import InvalidRequest
from llmproxy.routing import resolve as resolve_module, selector
from llmproxy.routing.resolve import (
    MAX_CACHED_MODEL_LENGTH, MAX_MODEL_LENGTH, Router, resolve,
)
from llmproxy.routing.selector import MAX_ROUTE_ELEMENTS
from tests.harness import post, start

CONFIG = build_config({
    "default_backend": "a",
    "backends": {"a": {"type": "mock"}, "b": {"type": "mock"}},
    "model_aliases": [{"pattern": "^cheap$", "replacement": "b:small"}],
}, environ={}, kinds=REGISTRY.kinds)
USER = [{"role": "user", "content": "hi"}]


def failover(count: int, names: str = "ab") -> str:
    """
    A failover list of C{count} one-letter elements, cycling over C{names}.
    """
    return "|".join(names[i % len(names)] for i in range(count))


class Counting:
    """
    Count the calls of a function (patched in by the test).
    """

    def __init__(self, wrapped: Callable[..., Any]) -> None:
        self.wrapped = wrapped
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.wrapped(*args)


class Limits(SynchronousTestCase):
    """
    The caps, and that they are checked before any per-element work.
    """

    def setUp(self) -> None:
        self.parsed = Counting(selector.parse_selector)
        self.patch(selector, "parse_selector", self.parsed)
        self.aliased = Counting(resolve_module.apply_aliases)
        self.patch(resolve_module, "apply_aliases", self.aliased)

    def refusal(self, model: str) -> InvalidRequest:
        router = Router(CONFIG)
        with self.assertRaises(InvalidRequest) as caught:
            router.resolve({"model": model, "messages": USER})
        self.assertEqual((len(router), router.weight), (0, 0))
        self.assertEqual((caught.exception.status, caught.exception.param), (400, "model"))
        return caught.exception

    def test_elements_capped(self) -> None:
        """
        One element more than L{MAX_ROUTE_ELEMENTS} is refused with a
        message naming the limit, and no element was parsed.
        """
        error = self.refusal(failover(MAX_ROUTE_ELEMENTS + 1))
        self.assertEqual(error.code, "invalid_model_selector")
        self.assertIn(f"at most {MAX_ROUTE_ELEMENTS} elements", error.message)
        self.assertIn(str(MAX_ROUTE_ELEMENTS + 1), error.message)
        self.assertEqual(self.parsed.calls, 0)

    def test_elements_at_the_cap(self) -> None:
        route = resolve(CONFIG, {"model": failover(MAX_ROUTE_ELEMENTS, "abcdefgh"),
                                 "messages": USER})
        self.assertEqual(len(route.targets), MAX_ROUTE_ELEMENTS)

    def test_huge_failover_list(self) -> None:
        """
        The request of issue #10 item 10: 150,000 elements.  It is refused
        for its length, before the aliases or the parser read it, and the
        message does not echo it.
        """
        model = failover(150_000)
        error = self.refusal(model)
        self.assertEqual(error.code, "string_above_max_length")
        self.assertIn(str(MAX_MODEL_LENGTH), error.message)
        self.assertLess(len(error.message), 200)
        self.assertEqual((self.aliased.calls, self.parsed.calls), (0, 0))

    def test_length_capped(self) -> None:
        self.refusal("m" * (MAX_MODEL_LENGTH + 1))
        self.assertEqual((self.aliased.calls, self.parsed.calls), (0, 0))
        [target] = resolve(CONFIG, {"model": "m" * MAX_MODEL_LENGTH, "messages": USER}).targets
        self.assertEqual(len(target.model), MAX_MODEL_LENGTH)

    def test_limit_errors_are_not_type_errors(self) -> None:
        """
        Wrong types still get their own answer.
        """
        missing = "missing_required_parameter"
        for model, code in [(None, missing), ("  ", missing), (5, "invalid_type"),
                            (["a"], "invalid_type")]:
            with self.assertRaises(InvalidRequest) as caught:
                resolve(CONFIG, {"model": model, "messages": USER})
            self.assertEqual(caught.exception.code, code)


class Sharing(SynchronousTestCase):
    """
    Repeated elements cost one parse and one plan; targets that get the same
    body share one.
    """

    def test_repeats_parsed_once(self) -> None:
        parsed = Counting(selector.parse_selector)
        self.patch(selector, "parse_selector", parsed)
        route = resolve(CONFIG, {"model": failover(MAX_ROUTE_ELEMENTS), "messages": USER})
        self.assertEqual(parsed.calls, 2)
        self.assertEqual([t.model for t in route.targets[:3]], ["a", "b", "a"])

    def test_one_body_per_model(self) -> None:
        """
        Elements for the same model on different backends share the body
        built for it; the client's body is not copied once per element.
        """
        body = {"model": "x", "messages": USER}
        route = resolve(CONFIG, {**body, "model": "a:m|b:m|a:n|b:n|a:m"})
        ids = [id(t.body) for t in route.targets]
        self.assertEqual(len(set(ids)), 2)
        self.assertEqual([t.body["model"] for t in route.targets], ["m", "m", "n", "n", "m"])
        self.assertTrue(all(t.changed for t in route.targets))

    def test_untouched_body_shared(self) -> None:
        body = {"model": "m", "messages": USER}
        route = resolve(CONFIG, {**body, "model": "m|b:m"})
        self.assertEqual([t.body for t in route.targets], [{**body}, {**body}])
        self.assertIs(route.targets[0].body, route.targets[1].body)

    def test_elements_with_parameters(self) -> None:
        body = {"model": "x", "messages": USER}
        route = resolve(CONFIG, {**body, "model": "a:m?temperature=0.5|b:m?temperature=0.5|a:m"})
        self.assertEqual([t.body.get("temperature") for t in route.targets], [0.5, 0.5, None])
        self.assertEqual(len({id(t.body) for t in route.targets}), 3)


class Cache(SynchronousTestCase):
    """
    The router's memory of plans is bounded in strings and in elements.
    """

    def test_long_models_not_remembered(self) -> None:
        router = Router(CONFIG)
        router.resolve({"model": "m" * MAX_CACHED_MODEL_LENGTH, "messages": USER})
        router.resolve({"model": "m" * (MAX_CACHED_MODEL_LENGTH + 1), "messages": USER})
        self.assertEqual(len(router), 1)

    def test_elements_bounded(self) -> None:
        """
        Many different failover lists keep at most C{elements} elements
        remembered; each is still routed right.
        """
        router = Router(CONFIG, size=100, elements=40)
        for i in range(200):
            model = "|".join(f"m{i}-{j}" for j in range(1 + i % 20))
            route = router.resolve({"model": model, "messages": USER})
            self.assertEqual(len(route.targets), 1 + i % 20)
            self.assertLessEqual(router.weight, 40)
            self.assertLessEqual(len(router), 100)
        self.assertGreater(len(router), 0)

    def test_plan_bigger_than_the_cache(self) -> None:
        router = Router(CONFIG, size=10, elements=8)
        router.resolve({"model": failover(9, "abcdefghi"), "messages": USER})
        self.assertEqual((len(router), router.weight), (0, 0))

    def test_strings_bounded(self) -> None:
        router = Router(CONFIG, size=3)
        for i in range(10):
            router.resolve({"model": f"m{i}", "messages": USER})
        self.assertEqual((len(router), router.weight), (3, 3))

    def test_remembered_plan_reused(self) -> None:
        router = Router(CONFIG)
        body = {"model": "cheap", "messages": USER}
        router.resolve(body)
        aliased = Counting(resolve_module.apply_aliases)
        self.patch(resolve_module, "apply_aliases", aliased)
        [target] = router.resolve(body).targets
        self.assertEqual((target.backend, target.model, aliased.calls), ("b", "small", 0))


class OverHttp(TestCase):
    """
    Through the proxy: a clear 400, nothing sent upstream, nothing
    remembered.
    """

    async def test_huge_failover_lists(self) -> None:
        proxy = await start(self)
        router = proxy.service.app.runtime.router
        for model, code in [(failover(150_000), "string_above_max_length"),
                            (failover(20_000), "string_above_max_length"),
                            (failover(MAX_ROUTE_ELEMENTS + 1), "invalid_model_selector")]:
            status, _, content = await post(self, proxy.url + "/v1/chat/completions",
                                            {"model": model, "messages": USER})
            error = json.loads(content)["error"]
            self.assertEqual((status, error["param"], error["code"]), (400, "model", code))
        self.assertEqual((len(router), router.weight, proxy.fake.requests), (0, 0, []))

    async def test_long_route_served(self) -> None:
        proxy = await start(self)
        model = "|".join(["openai:gpt-4o"] * MAX_ROUTE_ELEMENTS)
        status, _, content = await post(self, proxy.url + "/v1/chat/completions",
                                        {"model": model, "messages": USER})
        self.assertEqual(status, 200, content)
        self.assertEqual([r.model for r in proxy.fake.requests], ["gpt-4o"])
