"""
AttemptQueue planning: the single-element fast path plans exactly what the
general planner does.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.health import CircuitBreaker
from llmproxy.backends.keypool import KeyPool
from llmproxy.config import ApiKey
from llmproxy.exchange.attempts import AttemptQueue
from llmproxy.exchange.runtime import Upstreams
from llmproxy.routing.plan import plan_attempts
from llmproxy.routing.resolve import Route, Target


def _queue(keys: int, policy: str) -> AttemptQueue:
    clock = Clock()
    pool = KeyPool("b", [ApiKey(f"b#{i}", f"v{i}") for i in range(keys)], clock)
    upstreams = Upstreams(backends={}, pools={"b": pool},
                          breakers={"b": CircuitBreaker(clock)})
    route = Route((Target("b", "m", {}, False),), policy)
    return AttemptQueue(route, upstreams, clock, 5.0)


class PlanTests(SynchronousTestCase):
    @given(st.integers(0, 6), st.sampled_from(["k", "m", "km", "mk", "ordered"]))
    def test_single_element_fast_path(self, keys: int, policy: str) -> None:
        queue = _queue(keys, policy)
        expected = [
            None if a.key_index is None else queue.keys[0][a.key_index].name
            for a in plan_attempts([("b", "0", keys)], policy)
        ]
        self.assertEqual([s.key.name if s.key else None for s in queue.queue], expected)

    def test_next_takes_in_order_and_records(self) -> None:
        queue = _queue(3, "km")
        first = queue.next()
        assert first is not None and first.key is not None
        self.assertEqual(len(queue.queue), 2)
        self.assertIn((0, first.key.name), queue.tried)
