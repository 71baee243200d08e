"""
Circuit breakers per (backend, model) with half-open probing (issue #15,
item 7): a primary that flaps is used again soon after it recovers, probed
at most once per C{circuit_probe_interval} while it is down, and no request
is lost to a probe; one model's failures never divert another model of the
same backend; the number of breakers is bounded; the status shows them;
they survive a runtime swap.

End to end in memory (L{MemoryProxy}: real HTTP through llmproxy to the
fake upstream, one L{Clock}), and the breaker's state machine under
hypothesis.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.health import (
    LONGEST_MODEL,
    MODEL_LIMIT,
    OTHER_MODELS,
    CircuitBreaker,
    ModelBreakers,
)
from llmproxy.config import ConfigError, FailureConfig
from llmproxy.testing import (
    UNAVAILABLE, Outage, Stall, backend_data, config_data, make_config,
)
from tests.harness import MemoryProxy

QUIET = Logger(observer=lambda event: None)
FLAKY = "primary:flaky|fallback:steady"


def two_backends(primary: dict[str, Any] | None = None, **failure: Any) -> Any:
    """
    A primary and a fallback backend, both at the fake (keys C{kp} and
    C{kf}; the primary with the settings C{primary}), with these
    C{failure_handling} settings (no same-target retries: each request
    counts one failure against the primary, as the scenarios assume).
    """
    failure = {"retries_per_target": 0, **failure}

    def make(upstream: str) -> dict[str, Any]:
        return config_data({"primary": backend_data(upstream, "kp", **primary or {}),
                            "fallback": backend_data(upstream, "kf")},
                           failure_handling=failure)
    return make


def circuits(proxy: MemoryProxy, backend: str = "primary") -> dict[str, Any]:
    """
    The circuits the status endpoint shows for C{backend}, by model.
    """
    answer = proxy.get("/v1/llmproxy/status")
    assert answer.status == 200, answer
    result: dict[str, Any] = answer.json()["backends"][backend]["circuits"]
    return result


class FlappingPrimaryTests(SynchronousTestCase):
    """
    The scenario of the issue: a primary down (503) for 60 s, then healthy;
    one request every 4 s; a fallback; the default settings.
    """

    def setUp(self) -> None:
        self.patch(CircuitBreaker, "log", QUIET)
        # A probe that hangs fails over after 10 s.
        self.proxy = MemoryProxy(two_backends({"timeout": 10}))
        self.outage = Outage(self.proxy.fake, "flaky", until=60.0)

    def run_for(self, seconds: float) -> list[tuple[float, str]]:
        """
        One request every 4 s for C{seconds}: each must be answered whole;
        returns when each was sent and the route that answered it.
        """
        routes = []
        while self.proxy.clock.seconds() < seconds:
            status, headers, content = self.proxy.chat(model=FLAKY, text="are you there")
            self.assertEqual(status, 200, content)
            self.assertIn(b"fake: are you there", content)
            routes.append((self.proxy.clock.seconds(), headers["x-llmproxy-route"]))
            self.proxy.advance(4)
        return routes

    def test_back_on_the_primary_within_10_s_of_its_recovery(self) -> None:
        routes = self.run_for(120)
        back = [at for at, route in routes if at >= 60 and route == "primary:flaky"]
        self.assertTrue(back, routes)
        self.assertLessEqual(back[0] - 60, 10, routes)
        self.assertTrue(all(route == "primary:flaky" for at, route in routes if at >= back[0]),
                        "once back, the primary stays in use")
        self.assertEqual(circuits(self.proxy), {}, "the circuit closed")

    def test_at_most_one_probe_per_interval_while_down(self) -> None:
        self.run_for(60)
        down = self.outage.while_down()
        threshold = 5
        opened = down[threshold - 1]
        probes = down[threshold:]
        self.assertTrue(probes, "the primary was probed while down")
        self.assertGreaterEqual(probes[0] - opened, 30, "the first probe waits the cooldown")
        gaps = [b - a for a, b in zip(probes, probes[1:])]
        self.assertTrue(all(gap >= 5 for gap in gaps), probes)

    def test_a_probe_runs_alone(self) -> None:
        """
        While a probe is in flight, the other requests skip the primary.
        """
        self.run_for(48)
        self.outage.down = Stall()
        probe = self.proxy.chat_d(model=FLAKY)
        seen = len(self.outage.seen)
        for _ in range(3):
            self.proxy.advance(1)
            status, headers, _ = self.proxy.chat(model=FLAKY)
            self.assertEqual((status, headers["x-llmproxy-route"]), (200, "fallback:steady"))
        self.assertEqual(len(self.outage.seen), seen, "no second probe")
        self.assertTrue(circuits(self.proxy)["flaky"]["probing"])
        self.proxy.advance(8)
        answer = self.successResultOf(probe)
        self.assertEqual((answer.status, answer.headers["x-llmproxy-route"]),
                         (200, "fallback:steady"), "the probe failed over")
        self.assertFalse(circuits(self.proxy)["flaky"]["probing"])


class IsolationTests(SynchronousTestCase):
    """
    One breaker per model: what one model does never opens or closes
    another's circuit on the same backend.
    """

    def setUp(self) -> None:
        self.patch(CircuitBreaker, "log", QUIET)
        self.proxy = MemoryProxy(two_backends(circuit_threshold=2, circuit_cooldown=600))
        self.proxy.fake.by_model["x"] = [UNAVAILABLE]
        for _ in range(2):
            self.proxy.chat(model="primary:x|fallback:z")

    def sent(self, model: str) -> int:
        return sum(1 for r in self.proxy.fake.requests if r.model == model)

    def test_one_models_failures_leave_the_others_circuit_closed(self) -> None:
        status, headers, _ = self.proxy.chat(model="primary:y|fallback:z")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "primary:y"))
        status, headers, _ = self.proxy.chat(model="primary:x|fallback:z")
        self.assertEqual((status, headers["x-llmproxy-route"]), (200, "fallback:z"))
        self.assertEqual(self.sent("x"), 2, "the open model is skipped")
        self.assertEqual(list(circuits(self.proxy)), ["x"])

    def test_a_success_on_one_model_leaves_anothers_circuit_open(self) -> None:
        for _ in range(3):
            self.assertEqual(self.proxy.chat(model="primary:y").status, 200)
        self.assertEqual(circuits(self.proxy)["x"]["state"], "open")
        status, headers, _ = self.proxy.chat(model="primary:x|fallback:z")
        self.assertEqual(headers["x-llmproxy-route"], "fallback:z")
        self.assertEqual(self.sent("x"), 2)


class ModelLimitTests(SynchronousTestCase):
    """
    At most C{limit} models have a breaker of their own; the rest share one.
    """

    def setUp(self) -> None:
        self.patch(CircuitBreaker, "log", QUIET)
        self.clock = Clock()
        self.breakers = ModelBreakers(self.clock, threshold=1, cooldown=30, limit=3)

    def test_failing_models_beyond_the_limit_share_one_breaker(self) -> None:
        for model in ("a", "b", "c", "d", "e"):
            self.breakers.record_failure(model)
        self.assertEqual(sorted(self.breakers.status()), [OTHER_MODELS, "a", "b", "c"])
        self.assertEqual(self.breakers.status()[OTHER_MODELS]["consecutive_failures"], 2)
        self.assertFalse(self.breakers.allow("f"), "a model without its own shares it")
        self.breakers.record_success("e")
        self.assertTrue(self.breakers.allow("f"))
        self.assertFalse(self.breakers.allow("a"), "its own circuit is still open")

    def test_a_place_is_taken_from_a_breaker_that_holds_nothing_back(self) -> None:
        breakers = ModelBreakers(self.clock, threshold=2, cooldown=30, limit=2)
        breakers.record_failure("a")
        breakers.record_failure("b")
        breakers.record_failure("b")
        breakers.record_failure("c")
        self.assertEqual(sorted(breakers.status()), ["b", "c"],
                         "a (one failure, closed) made way; b is open")

    def test_a_long_model_name_gets_no_breaker_of_its_own(self) -> None:
        self.breakers.record_failure("m" * (LONGEST_MODEL + 1))
        self.assertEqual(list(self.breakers.status()), [OTHER_MODELS])

    def test_a_client_inventing_models_cannot_grow_the_status(self) -> None:
        proxy = MemoryProxy(two_backends(circuit_threshold=1))
        proxy.fake.script.extend([UNAVAILABLE] * (MODEL_LIMIT + 20))
        for i in range(MODEL_LIMIT + 20):
            proxy.chat(model=f"primary:invented-{i}")
        shown = circuits(proxy)
        self.assertEqual(len(shown), MODEL_LIMIT + 1)
        self.assertEqual(shown[OTHER_MODELS]["consecutive_failures"], 20)


class StatusTests(SynchronousTestCase):
    def test_each_failing_model_with_its_state_and_next_probe(self) -> None:
        self.patch(CircuitBreaker, "log", QUIET)
        proxy = MemoryProxy(two_backends(circuit_threshold=1, circuit_cooldown=30,
                                         circuit_probe_interval=7))
        proxy.fake.by_model["x"] = [UNAVAILABLE]
        proxy.chat(model="primary:x|fallback:z")
        proxy.advance(10)
        self.assertEqual(circuits(proxy), {"x": {
            "state": "open", "consecutive_failures": 1, "threshold": 1, "cooldown": 30.0,
            "probe_interval": 7.0, "next_probe_in": 20.0, "probing": False}})
        proxy.advance(20)
        proxy.chat(model="primary:x|fallback:z")
        shown = circuits(proxy)["x"]
        self.assertEqual((shown["state"], shown["consecutive_failures"], shown["next_probe_in"]),
                         ("open", 2, 7.0), "the failed probe: next one in an interval")
        self.assertEqual(circuits(proxy, "fallback"), {})


class SwapTests(SynchronousTestCase):
    def test_breakers_survive_a_runtime_swap_with_the_new_settings(self) -> None:
        self.patch(CircuitBreaker, "log", QUIET)
        proxy = MemoryProxy(two_backends(circuit_threshold=1, circuit_cooldown=600))
        proxy.fake.by_model["x"] = [UNAVAILABLE]
        proxy.chat(model="primary:x|fallback:z")
        data = two_backends(circuit_threshold=1, circuit_cooldown=20,
                            circuit_probe_interval=3)("http://upstream.test/v1")
        proxy.service.use_config(make_config(data))
        self.assertEqual(circuits(proxy)["x"]["cooldown"], 20.0)
        status, headers, _ = proxy.chat(model="primary:x|fallback:z")
        self.assertEqual(headers["x-llmproxy-route"], "fallback:z", "still open")
        proxy.advance(20)
        proxy.chat(model="primary:x|fallback:z")
        self.assertEqual(circuits(proxy)["x"]["next_probe_in"], 3.0)
        self.assertEqual(sum(1 for r in proxy.fake.requests if r.model == "x"), 2)


class ConfigTests(SynchronousTestCase):
    def test_probe_interval_defaults_to_5_s_and_must_be_positive(self) -> None:
        self.assertEqual(FailureConfig().circuit_probe_interval, 5.0)
        data = two_backends(circuit_probe_interval=2.5)("http://upstream.test/v1")
        self.assertEqual(make_config(data).failure.circuit_probe_interval, 2.5)
        data = two_backends(circuit_probe_interval=0)("http://upstream.test/v1")
        with self.assertRaises(ConfigError) as caught:
            make_config(data)
        self.assertIn("circuit_probe_interval", str(caught.exception))


# The state machine under hypothesis: any sequence of outcomes, probes and
# clock advances.

_steps = st.lists(st.one_of(
    st.sampled_from(["allow", "success", "failure"]),
    st.floats(min_value=0, max_value=40, allow_nan=False),
), max_size=60)


class PropertyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(CircuitBreaker, "log", QUIET)

    @settings(max_examples=300)
    @given(st.integers(1, 4), st.sampled_from([0.0, 2.0, 30.0]), st.sampled_from([1.0, 5.0]),
           _steps)
    def test_invariants(self, threshold: int, cooldown: float, interval: float,
                        steps: list[Any]) -> None:
        """
        Whatever happens: the breaker is closed exactly when fewer than
        C{threshold} failures followed the last success, and then lets
        everything through; once open, the first probe waits the cooldown,
        probes come at least an interval apart and one interval after a
        failure reported while half-open, and a probe is let through as
        soon as all of that allows; the status agrees.
        """
        clock = Clock()
        breaker = CircuitBreaker(clock, threshold=threshold, cooldown=cooldown,
                                 probe_interval=interval)
        trailing = 0
        earliest = 0.0  # when the next probe may go, by the rules
        last_probe: float | None = None
        give_up = max(cooldown, interval)
        for step in steps:
            now = clock.seconds()
            if isinstance(step, float):
                clock.advance(step)
            elif step == "success":
                breaker.record_success()
                trailing, last_probe = 0, None
            elif step == "failure":
                breaker.record_failure()
                was_open = trailing >= threshold
                trailing += 1
                if not was_open and trailing >= threshold:
                    earliest, last_probe = now + cooldown, None
                elif was_open and now >= earliest:
                    earliest, last_probe = now + interval, None
            else:
                closed = trailing < threshold
                due = now >= earliest and (last_probe is None or now >= last_probe + give_up)
                self.assertEqual(breaker.allow(), closed or due)
                if not closed and due:
                    last_probe = now
            now = clock.seconds()
            status = breaker.status()
            self.assertEqual(breaker.consecutive_failures, trailing)
            self.assertEqual(breaker.state == "closed", trailing < threshold)
            self.assertGreaterEqual(status["next_probe_in"], 0)
            if trailing >= threshold:
                self.assertEqual(status["next_probe_in"], max(0.0, earliest - now))
                self.assertEqual(breaker.state, "open" if now < earliest else "half-open")
                self.assertEqual(status["probing"],
                                 last_probe is not None and now < last_probe + give_up)

    @given(st.lists(st.tuples(st.sampled_from("abcdef"), st.booleans(),
                              st.floats(0, 40, allow_nan=False)), max_size=60))
    def test_models_below_the_limit_are_independent(
        self, steps: list[tuple[str, bool, float]]
    ) -> None:
        """
        Below the limit, each model's breaker behaves exactly as if it were
        the only one.
        """
        clock = Clock()
        breakers = ModelBreakers(clock, threshold=2, cooldown=10, probe_interval=3, limit=6)
        alone = {m: CircuitBreaker(clock, threshold=2, cooldown=10, probe_interval=3)
                 for m in "abcdef"}
        for model, ok, wait in steps:
            self.assertEqual(breakers.allow(model), alone[model].allow())
            if ok:
                breakers.record_success(model)
                alone[model].record_success()
            else:
                breakers.record_failure(model)
                alone[model].record_failure()
            clock.advance(wait)
            for m, breaker in alone.items():
                shown = breakers.status().get(m)
                if breaker.consecutive_failures:
                    self.assertEqual(shown, breaker.status())
                else:
                    self.assertIsNone(shown)

    @given(st.lists(st.tuples(st.integers(0, 12), st.booleans(),
                              st.floats(0, 40, allow_nan=False)), max_size=80))
    def test_never_more_than_the_limit(self, steps: list[tuple[int, bool, float]]) -> None:
        """
        However many models fail, at most C{limit} breakers plus the shared
        one are held, and every model is governed by exactly one.
        """
        clock = Clock()
        breakers = ModelBreakers(clock, threshold=1, cooldown=10, limit=4)
        for number, ok, wait in steps:
            model = f"m{number}"
            if ok:
                breakers.record_success(model)
            else:
                breakers.record_failure(model)
                self.assertIsNotNone(breakers.breaker(model))
            clock.advance(wait)
            self.assertLessEqual(len(breakers.status()), 5)
            self.assertLessEqual(len([m for m in breakers.status() if m != OTHER_MODELS]), 4)
