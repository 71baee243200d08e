# -*- test-case-name: tests.test_attempts -*-
"""
Tests for L{llmproxy.exchange.attempts.AttemptQueue}, the failover brain:
what to try next, which key to swap in, what to park and how long to wait.
Everything runs on a L{Clock}; the tests play the exchange's part (marking
keys in their pools, tripping breakers) between calls.
"""

from __future__ import annotations

from typing import Sequence

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.health import ModelBreakers
from llmproxy.backends.keypool import KeyPool
from llmproxy.config import ApiKey
from llmproxy.exchange.attempts import AttemptQueue, Slot
from llmproxy.exchange.outcome import Outcome
from llmproxy.exchange.runtime import Upstreams
from llmproxy.routing.plan import plan_attempts
from llmproxy.routing.resolve import Route, Target

DEFAULT_COOLDOWN = 5.0
POLICIES = ["k", "m", "km", "mk", "ordered"]


class World:
    """
    Backends with C{n} keys each (named C{backend#1..n}), their pools and
    breakers (threshold 1, so one failure of a model opens its circuit for
    30 s).
    """

    def __init__(self, **keys: int) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.pools = {
            name: KeyPool(name, [ApiKey(f"{name}#{i}", f"v-{name}-{i}") for i in range(1, n + 1)],
                          self.clock)
            for name, n in keys.items()
        }
        self.breakers = {name: ModelBreakers(self.clock, threshold=1, cooldown=30.0)
                         for name in keys}
        self.upstreams = Upstreams(backends={}, pools=self.pools, breakers=self.breakers)

    def key(self, name: str) -> ApiKey:
        """
        The key called C{name} (C{backend#i}).
        """
        backend = name.partition("#")[0]
        [key] = [k for k in self.pools[backend].keys if k.name == name]
        return key

    def queue(self, *elements: str, policy: str = "km") -> AttemptQueue:
        """
        The attempts of a route of C{backend:model} elements (C{backend.i:model}
        pins key C{i}).
        """
        return AttemptQueue(Route(tuple(_target(e) for e in elements), policy),
                            self.upstreams, self.clock, DEFAULT_COOLDOWN)


def _target(element: str, body: dict[str, object] | None = None) -> Target:
    backend, _, model = element.partition(":")
    backend, _, pin = backend.partition(".")
    return Target(backend, model, body or {}, False, key=f"{backend}#{pin}" if pin else None)


def _pair(slot: Slot | None) -> tuple[str, str | None] | None:
    """
    A slot as C{(model, key name)}.
    """
    if slot is None:
        return None
    return slot.target.model, slot.key.name if slot.key is not None else None


def _planned(queue: AttemptQueue) -> list[tuple[str, str | None]]:
    return [(s.target.model, s.key.name if s.key else None) for s in queue.queue]


def _drain(queue: AttemptQueue) -> list[tuple[str, str | None]]:
    """
    Take every attempt that is ready now, in order.
    """
    taken = []
    while (slot := queue.next()) is not None:
        taken.append((slot.target.model, slot.key.name if slot.key else None))
    return taken


class PlanTests(SynchronousTestCase):
    """
    The order of attempts for each policy.
    """

    def test_policies_over_two_elements(self) -> None:
        """
        C{k}: the first element's keys; C{m}: each element with its first
        key; C{km}: element by element, every key; C{mk}: key by key,
        every element.
        """
        expected = {
            "k": [("m1", "a#1"), ("m1", "a#2")],
            "m": [("m1", "a#1"), ("m2", "b#1")],
            "ordered": [("m1", "a#1"), ("m2", "b#1")],
            "km": [("m1", "a#1"), ("m1", "a#2"), ("m2", "b#1"), ("m2", "b#2")],
            "mk": [("m1", "a#1"), ("m2", "b#1"), ("m1", "a#2"), ("m2", "b#2")],
        }
        for policy, order in expected.items():
            world = World(a=2, b=2)
            queue = world.queue("a:m1", "b:m2", policy=policy)
            self.assertEqual(_planned(queue), order, policy)
            self.assertEqual(_drain(queue), order, policy)
            self.assertTrue(queue.empty())

    def test_uneven_keys_and_a_keyless_element(self) -> None:
        """
        Elements run out of keys at their size; a keyless element is one
        attempt without a key.
        """
        world = World(a=3, b=1, c=0)
        self.assertEqual(_planned(world.queue("a:x", "b:y", "c:z", policy="mk")), [
            ("x", "a#1"), ("y", "b#1"), ("z", None), ("x", "a#2"), ("x", "a#3")])
        world = World(a=3, b=1, c=0)
        self.assertEqual(_planned(world.queue("a:x", "b:y", "c:z", policy="km")), [
            ("x", "a#1"), ("x", "a#2"), ("x", "a#3"), ("y", "b#1"), ("z", None)])
        world = World(c=0)
        for policy in POLICIES:
            self.assertEqual(_planned(world.queue("c:z", policy=policy)), [("z", None)])

    def test_single_element(self) -> None:
        """
        One element: every key, except for C{m} (and C{ordered}), which
        plans the first only (spares come from L{AttemptQueue.failed}).
        """
        for policy, count in (("k", 3), ("km", 3), ("mk", 3), ("m", 1), ("ordered", 1)):
            world = World(a=3)
            self.assertEqual(_planned(world.queue("a:x", policy=policy)),
                             [("x", f"a#{i}") for i in range(1, count + 1)], policy)

    @given(st.integers(0, 6), st.sampled_from(POLICIES))
    def test_single_element_fast_path(self, keys: int, policy: str) -> None:
        """
        The single-element fast path plans exactly what the general planner
        does.
        """
        queue = World(b=keys).queue("b:m", policy=policy)
        expected = [
            None if a.key_index is None else queue.keys[0][a.key_index].name
            for a in plan_attempts([("b", "0", keys)], policy)
        ]
        self.assertEqual([s.key.name if s.key else None for s in queue.queue], expected)

    def test_rotation_advances_once_per_request(self) -> None:
        """
        Each queue starts one key further round the backend's keys, even
        when the backend appears twice in the route; both of its elements
        share that request's order.
        """
        world = World(a=3)
        orders = [_planned(world.queue("a:x", "a:y", policy="mk")) for _ in range(4)]
        self.assertEqual([o[0][1] for o in orders], ["a#1", "a#2", "a#3", "a#1"])
        self.assertEqual(orders[1], [("x", "a#2"), ("y", "a#2"), ("x", "a#3"), ("y", "a#3"),
                                     ("x", "a#1"), ("y", "a#1")])

    def test_cooling_keys_are_planned_last(self) -> None:
        world = World(a=3)
        world.pools["a"].mark_rate_limited(world.key("a#1"), 10)
        self.assertEqual(_planned(world.queue("a:x", policy="km")),
                         [("x", "a#2"), ("x", "a#3"), ("x", "a#1")])

    def test_pinned_key(self) -> None:
        """
        A pinned element only ever has its one key, whatever the policy.
        """
        for policy in POLICIES:
            world = World(a=3)
            queue = world.queue("a.2:x", "a:y", policy="km")
            self.assertEqual(_planned(queue)[0], ("x", "a#2"), policy)
            self.assertNotIn(("x", "a#1"), _planned(queue))
            self.assertNotIn(("x", "a#3"), _planned(queue))

    def test_repeated_targets_are_planned_once(self) -> None:
        """
        A target repeated in the route is tried once per key; the same
        model with another pin or another body is a different target.
        """
        world = World(a=2)
        queue = world.queue("a:x", "a:x", policy="km")
        self.assertEqual(_planned(queue), [("x", "a#1"), ("x", "a#2")])
        queue = world.queue("a.1:x", "a.2:x", "a.1:x", policy="m")
        self.assertEqual(_planned(queue), [("x", "a#1"), ("x", "a#2")])
        route = Route((_target("a:x", {"temperature": 0.1}), _target("a:x", {"temperature": 0.9}),
                       _target("a:x", {"temperature": 0.1})), "m")
        queue = AttemptQueue(route, world.upstreams, world.clock, DEFAULT_COOLDOWN)
        self.assertEqual([s.target.body for s in queue.queue],
                         [{"temperature": 0.1}, {"temperature": 0.9}])

    def test_backends(self) -> None:
        world = World(a=1, b=1, c=1)
        self.assertEqual(world.queue("a:x", "c:y", policy="k").backends, {"a", "c"})


class NextTests(SynchronousTestCase):
    """
    L{AttemptQueue.next}: the first ready attempt, with spare keys swapped
    in and open circuits passed over.
    """

    def test_next_takes_in_order_and_records(self) -> None:
        queue = World(b=3).queue("b:m", policy="km")
        first = queue.next()
        assert first is not None and first.key is not None
        self.assertEqual(len(queue.queue), 2)
        self.assertEqual(queue.tried, {(0, first.key.name)})
        self.assertNotIn(first, queue.queue)

    def test_key_cooling_since_planning_is_swapped_for_a_free_one(self) -> None:
        """
        A planned key that started cooling (another request got a 429 on
        it) is replaced by a free key of the same element.
        """
        world = World(a=3, b=1)
        queue = world.queue("a:x", "b:y", policy="m")
        world.pools["a"].mark_rate_limited(world.key("a#1"), 10)
        self.assertEqual(_pair(queue.next()), ("x", "a#2"))
        self.assertEqual(queue.tried, {(0, "a#2")})
        self.assertEqual(_pair(queue.next()), ("y", "b#1"))

    def test_swap_never_takes_a_key_queued_or_tried_for_the_element(self) -> None:
        """
        The spare must be neither planned for the same element (it will be
        tried in its turn) nor already tried; without one, the attempt waits
        and the next ready one goes first.
        """
        world = World(a=2, b=1)
        queue = world.queue("a:x", "b:y", policy="km")  # a#1, a#2, b#1
        world.pools["a"].mark_rate_limited(world.key("a#1"), 10)
        self.assertEqual(_pair(queue.next()), ("x", "a#2"), "a#2 is queued: no swap")
        self.assertEqual(_pair(queue.next()), ("y", "b#1"), "a#2 was tried: no swap")
        self.assertIsNone(queue.next())
        self.assertEqual(_planned(queue), [("x", "a#1")])
        self.assertEqual(queue.wait(), 10)

    def test_swap_is_per_element(self) -> None:
        """
        A key tried for one element is still a spare for another element of
        the same backend.
        """
        world = World(a=2)
        queue = world.queue("a:x", "a:y", policy="m")  # x a#1, y a#1
        self.assertEqual(_pair(queue.next()), ("x", "a#1"))
        world.pools["a"].mark_rate_limited(world.key("a#1"), 10)
        self.assertEqual(_pair(queue.next()), ("y", "a#2"))

    def test_everything_cooling_is_none(self) -> None:
        world = World(a=2)
        queue = world.queue("a:x", policy="km")
        for key in ("a#1", "a#2"):
            world.pools["a"].mark_rate_limited(world.key(key), 4)
        self.assertIsNone(queue.next())
        self.assertFalse(queue.empty())
        self.assertEqual(queue.tried, set())
        world.clock.advance(4)
        self.assertEqual(_drain(queue), [("x", "a#1"), ("x", "a#2")])

    def test_open_circuit_is_passed_over(self) -> None:
        """
        An element whose backend's circuit is open goes after those whose
        circuit is closed; when only open ones are left, the first is taken
        anyway (skipping must not leave nothing).
        """
        world = World(a=1, b=1, c=1)
        queue = world.queue("a:x", "b:y", "c:z", policy="m")
        world.breakers["a"].record_failure("x")
        world.breakers["b"].record_failure("y")
        self.assertEqual(_drain(queue), [("z", "c#1"), ("x", "a#1"), ("y", "b#1")])

    def test_open_circuit_fallback_needs_a_free_key(self) -> None:
        world = World(a=1, b=1)
        queue = world.queue("a:x", "b:y", policy="m")
        world.breakers["a"].record_failure("x")
        world.breakers["b"].record_failure("y")
        world.pools["a"].mark_rate_limited(world.key("a#1"), 10)
        self.assertEqual(_drain(queue), [("y", "b#1")])
        self.assertEqual(_planned(queue), [("x", "a#1")])

    def test_half_open_circuit_lets_one_probe_through(self) -> None:
        """
        Once the open period is over the breaker allows one probe: that
        attempt is taken in its turn.
        """
        world = World(a=1, b=1)
        world.breakers["a"].record_failure("x")
        world.clock.advance(30)
        queue = world.queue("a:x", "b:y", policy="m")
        self.assertEqual(_pair(queue.next()), ("x", "a#1"))
        other = world.queue("a:x", "b:y", policy="m")
        self.assertEqual(_pair(other.next()), ("y", "b#1"), "the probe is in flight")

    def test_keyless_element_waits_for_its_ready_time(self) -> None:
        world = World(c=0, b=1)
        queue = world.queue("c:z", "b:y", policy="m")
        slot = queue.next()
        assert slot is not None
        queue.failed(slot, Outcome.RATE_LIMITED, 3)
        queue.wake()
        self.assertEqual(_pair(queue.next()), ("y", "b#1"))
        self.assertIsNone(queue.next())
        world.clock.advance(2.9)
        self.assertIsNone(queue.next())
        world.clock.advance(0.1)
        self.assertEqual(_pair(queue.next()), ("z", None))
        self.assertTrue(queue.empty())

    def test_empty(self) -> None:
        """
        A queue is empty once everything was taken and nothing is parked;
        then L{AttemptQueue.next} and L{AttemptQueue.wait} are L{None}.
        """
        queue = World(a=1).queue("a:x")
        self.assertFalse(queue.empty())
        self.assertIsNotNone(queue.next())
        self.assertTrue(queue.empty())
        self.assertIsNone(queue.next())
        self.assertIsNone(queue.wait())
        queue.wake()
        self.assertTrue(queue.empty())


class FailedTests(SynchronousTestCase):
    """
    L{AttemptQueue.failed}: a key-level failure gives the element its next
    free key at once; a rate limit parks the attempt.
    """

    def _first_failed(self, outcome: Outcome, policy: str = "m",
                      retry_after: float | None = None) -> tuple[World, AttemptQueue]:
        world = World(a=3, b=1)
        queue = world.queue("a:x", "b:y", policy=policy)
        slot = queue.next()
        assert slot is not None and slot.key is not None
        if outcome is Outcome.RATE_LIMITED:
            world.pools["a"].mark_rate_limited(slot.key, retry_after)
        elif outcome is Outcome.QUOTA:
            world.pools["a"].mark_quota(slot.key)
        elif outcome is Outcome.NEXT_KEY:
            world.pools["a"].mark_invalid(slot.key)
        queue.failed(slot, outcome, retry_after)
        return world, queue

    def test_key_level_failures_give_the_next_key_first(self) -> None:
        """
        A rejected, rate-limited or out-of-quota key is followed by the same
        element's next free key, ahead of the other elements, even under
        C{m}.
        """
        for outcome in (Outcome.NEXT_KEY, Outcome.RATE_LIMITED, Outcome.QUOTA):
            _, queue = self._first_failed(outcome)
            self.assertEqual(_drain(queue), [("x", "a#2"), ("y", "b#1")], outcome)

    def test_other_failures_move_on(self) -> None:
        """
        A server error, a client error or a fatal failure condemns the
        element, not the key: no spare, nothing parked.
        """
        for outcome in (Outcome.RETRY_NEXT, Outcome.CLIENT_ERROR, Outcome.FATAL):
            _, queue = self._first_failed(outcome)
            self.assertEqual(_drain(queue), [("y", "b#1")], outcome)
            self.assertEqual(queue.parked, [])
            self.assertTrue(queue.empty())

    def test_no_spare_when_the_element_has_more_planned(self) -> None:
        """
        Under C{km} the element's next key is already planned: nothing is
        added (it is not tried twice).
        """
        _, queue = self._first_failed(Outcome.NEXT_KEY, policy="km")
        self.assertEqual(_drain(queue), [("x", "a#2"), ("x", "a#3"), ("y", "b#1")])

    def test_spare_skips_cooling_and_tried_keys(self) -> None:
        world = World(a=3)
        queue = world.queue("a:x", policy="m")
        world.pools["a"].mark_invalid(world.key("a#2"))
        slot = queue.next()
        assert slot is not None
        world.pools["a"].mark_invalid(world.key("a#1"))
        queue.failed(slot, Outcome.NEXT_KEY, None)
        spare = queue.next()
        self.assertEqual(_pair(spare), ("x", "a#3"))
        assert spare is not None
        world.pools["a"].mark_invalid(world.key("a#3"))
        queue.failed(spare, Outcome.NEXT_KEY, None)
        self.assertTrue(queue.empty(), "every key was tried or is out")

    def test_pinned_element_has_no_spare(self) -> None:
        world = World(a=2)
        queue = world.queue("a.1:x", policy="m")
        slot = queue.next()
        assert slot is not None
        world.pools["a"].mark_invalid(world.key("a#1"))
        queue.failed(slot, Outcome.NEXT_KEY, None)
        self.assertTrue(queue.empty())

    def test_keyless_failure_has_no_spare(self) -> None:
        world = World(c=0)
        queue = world.queue("c:z")
        slot = queue.next()
        assert slot is not None
        queue.failed(slot, Outcome.NEXT_KEY, None)
        self.assertTrue(queue.empty())


class ParkTests(SynchronousTestCase):
    """
    Rate-limited attempts wait for their key (or, keyless, for the
    upstream's hint) and come back with L{AttemptQueue.wake}.
    """

    def test_rate_limited_key_is_parked_until_it_cools(self) -> None:
        world = World(a=1)
        queue = world.queue("a:x")
        slot = queue.next()
        assert slot is not None and slot.key is not None
        world.pools["a"].mark_rate_limited(slot.key, 8)
        queue.failed(slot, Outcome.RATE_LIMITED, 8)
        self.assertEqual(queue.parked, [slot])
        self.assertFalse(queue.empty())
        self.assertIsNone(queue.next(), "parked attempts wait for wake()")
        self.assertEqual(queue.wait(), 8)
        world.clock.advance(5)
        self.assertEqual(queue.wait(), 3)
        world.clock.advance(3)
        self.assertEqual(queue.wait(), 0)
        self.assertIsNone(queue.next())
        queue.wake()
        self.assertEqual(queue.parked, [])
        self.assertIs(queue.next(), slot, "the same attempt, with the same key")
        self.assertTrue(queue.empty())

    def test_woken_too_early_it_still_waits(self) -> None:
        world = World(a=1)
        queue = world.queue("a:x")
        slot = queue.next()
        assert slot is not None and slot.key is not None
        world.pools["a"].mark_rate_limited(slot.key, 8)
        queue.failed(slot, Outcome.RATE_LIMITED, 8)
        world.clock.advance(1)
        queue.wake()
        self.assertIsNone(queue.next())
        self.assertEqual(queue.wait(), 7)
        world.clock.advance(7)
        self.assertIs(queue.next(), slot)

    def test_keyless_waits_for_retry_after_or_the_default(self) -> None:
        for retry_after, expected in ((3.0, 3.0), (None, DEFAULT_COOLDOWN), (0.0, 0.0)):
            world = World(c=0)
            queue = world.queue("c:z")
            slot = queue.next()
            assert slot is not None
            queue.failed(slot, Outcome.RATE_LIMITED, retry_after)
            self.assertEqual(slot.ready_at, world.clock.seconds() + expected)
            self.assertEqual(queue.wait(), expected, retry_after)
            queue.wake()
            world.clock.advance(expected + 1)
            self.assertEqual(queue.wait(), 0, "a wait is never negative")
            self.assertIs(queue.next(), slot, retry_after)

    def test_wait_is_the_soonest_of_queued_and_parked(self) -> None:
        """
        Queued attempts whose key cools count too, and the soonest wins.
        """
        world = World(a=1, b=1)
        queue = world.queue("a:x", "b:y", policy="m")
        slot = queue.next()
        assert slot is not None and slot.key is not None
        world.pools["a"].mark_rate_limited(slot.key, 9)
        queue.failed(slot, Outcome.RATE_LIMITED, 9)
        world.pools["b"].mark_rate_limited(world.key("b#1"), 4)
        self.assertEqual(queue.wait(), 4)
        world.pools["b"].mark_rate_limited(world.key("b#1"), 20)
        self.assertEqual(queue.wait(), 9)

    def test_a_free_queued_attempt_means_no_wait(self) -> None:
        world = World(a=2)
        queue = world.queue("a:x", policy="km")
        self.assertEqual(queue.wait(), 0)

    def test_the_spare_goes_first_and_the_parked_key_comes_back(self) -> None:
        """
        A 429 on a key: the element's spare is tried at once; if that fails
        too, the parked attempt is retried once its key has cooled.
        """
        world = World(a=2)
        queue = world.queue("a:x", policy="m")
        first = queue.next()
        assert first is not None and first.key is not None
        world.pools["a"].mark_rate_limited(first.key, 6)
        queue.failed(first, Outcome.RATE_LIMITED, 6)
        second = queue.next()
        self.assertEqual(_pair(second), ("x", "a#2"))
        assert second is not None
        queue.failed(second, Outcome.RETRY_NEXT, None)
        self.assertIsNone(queue.next())
        self.assertEqual(queue.wait(), 6)
        world.clock.advance(6)
        queue.wake()
        self.assertIs(queue.next(), first)


class VerdictTests(SynchronousTestCase):
    """
    Why everything has to wait: L{AttemptQueue.all_invalid},
    L{AttemptQueue.quota_exhausted} and L{AttemptQueue.soonest_key}.
    """

    def test_all_invalid(self) -> None:
        world = World(a=2)
        queue = world.queue("a:x", policy="km")
        self.assertFalse(queue.all_invalid(), "nothing rejected yet")
        world.pools["a"].mark_invalid(world.key("a#1"))
        self.assertFalse(queue.all_invalid())
        world.pools["a"].mark_invalid(world.key("a#2"))
        self.assertTrue(queue.all_invalid())
        world.pools["a"].mark_ok(world.key("a#2"))
        world.pools["a"].mark_rate_limited(world.key("a#2"), 10)
        self.assertFalse(queue.all_invalid(), "one is only rate limited")

    def test_all_invalid_counts_parked_attempts(self) -> None:
        world = World(a=1, b=1)
        queue = world.queue("a:x", "b:y", policy="m")
        slot = queue.next()
        assert slot is not None and slot.key is not None
        world.pools["a"].mark_rate_limited(slot.key, 5)
        queue.failed(slot, Outcome.RATE_LIMITED, 5)
        world.pools["b"].mark_invalid(world.key("b#1"))
        self.assertFalse(queue.all_invalid())
        world.pools["a"].mark_invalid(slot.key)
        self.assertTrue(queue.all_invalid())

    def test_all_invalid_is_false_with_a_keyless_attempt_or_none(self) -> None:
        world = World(a=1, c=0)
        queue = world.queue("a:x", "c:z", policy="m")
        world.pools["a"].mark_invalid(world.key("a#1"))
        self.assertFalse(queue.all_invalid())
        self.assertEqual(_drain(queue), [("z", None)])
        self.assertTrue(queue.all_invalid(), "only the rejected key is left")
        queue = world.queue("a:x")
        world.pools["a"].mark_ok(world.key("a#1"))
        _drain(queue)
        world.pools["a"].mark_invalid(world.key("a#1"))
        self.assertTrue(queue.empty())
        self.assertFalse(queue.all_invalid(), "nothing left is not all invalid")

    def test_quota_exhausted(self) -> None:
        """
        Every key of every backend of the route is out of quota (keys that
        are invalid do not spoil it; backends outside the route do not
        count).
        """
        world = World(a=2, b=1, z=1)
        queue = world.queue("a:x", "b:y", policy="m")
        world.pools["a"].mark_quota(world.key("a#1"))
        world.pools["a"].mark_invalid(world.key("a#2"))
        self.assertFalse(queue.quota_exhausted())
        world.pools["b"].mark_quota(world.key("b#1"))
        self.assertTrue(queue.quota_exhausted())
        world.pools["b"].mark_ok(world.key("b#1"))
        world.pools["b"].mark_rate_limited(world.key("b#1"), 10)
        self.assertFalse(queue.quota_exhausted(), "b's key is only rate limited now")

    def test_quota_never_exhausted_with_a_keyless_backend(self) -> None:
        world = World(a=1, c=0)
        queue = world.queue("a:x", "c:z", policy="m")
        world.pools["a"].mark_quota(world.key("a#1"))
        self.assertFalse(queue.quota_exhausted())

    def test_soonest_key(self) -> None:
        """
        Seconds until the first key of the route's backends is free,
        counting keys the route does not plan (a pinned element's
        siblings) and ignoring other backends.
        """
        world = World(a=2, b=1, z=1)
        queue = world.queue("a.1:x", "b:y", policy="m")
        self.assertEqual(queue.soonest_key(), 0)
        world.pools["a"].mark_quota(world.key("a#1"))
        world.pools["b"].mark_rate_limited(world.key("b#1"), 30)
        self.assertEqual(queue.soonest_key(), 0, "a#2 is free")
        world.pools["a"].mark_rate_limited(world.key("a#2"), 20)
        world.pools["z"].mark_rate_limited(world.key("z#1"), 1)
        self.assertEqual(queue.soonest_key(), 20)
        world.clock.advance(25)
        self.assertEqual(queue.soonest_key(), 0)

    def test_soonest_key_keyless(self) -> None:
        self.assertIsNone(World(c=0).queue("c:z").soonest_key())


# The property: a random route on random backends, driven through random
# outcomes, open circuits and waits.

_BACKENDS = {"a": 3, "b": 1, "c": 0, "d": 2}
_elements = st.lists(
    st.tuples(st.sampled_from(sorted(_BACKENDS)), st.sampled_from(["x", "y"]),
              st.one_of(st.none(), st.integers(1, 3))),
    min_size=1, max_size=5,
)
_steps = st.lists(
    st.tuples(st.sampled_from(list(Outcome)), st.one_of(st.none(), st.floats(0, 20)),
              st.sampled_from(["", "a", "b", "c", "d"])),
    max_size=25,
)


def _element(backend: str, model: str, pin: int | None) -> str:
    return f"{backend}.{pin}:{model}" if pin is not None and pin <= _BACKENDS[backend] \
        else f"{backend}:{model}"


class PropertyTests(SynchronousTestCase):
    @given(_elements, st.sampled_from(POLICIES), _steps)
    def test_offers_only_planned_elements_with_their_keys_each_once(
        self, elements: Sequence[tuple[str, str, int | None]], policy: str,
        steps: Sequence[tuple[Outcome, float | None, str]],
    ) -> None:
        """
        Whatever happens: only elements the plan holds are offered, each with
        one of its own keys that is free at that moment; an (element, key)
        pair comes again only after it was parked by a rate limit; and the
        request ends.
        """
        world = World(**_BACKENDS)
        queue = world.queue(*(_element(*e) for e in elements), policy=policy)
        planned = {s.index for s in queue.queue}
        offered: dict[tuple[int, str | None], int] = {}
        parked: dict[tuple[int, str | None], int] = {}
        steps = list(steps)
        for _ in range(200):
            if queue.empty():
                break
            slot = queue.next()
            if slot is None:
                wait = queue.wait()
                assert wait is not None
                world.clock.advance(wait)
                queue.wake()
                continue
            pair = (slot.index, slot.key.name if slot.key else None)
            self.assertIn(slot.index, planned)
            self.assertIs(slot.target, queue.targets[slot.index])
            if slot.key is None:
                self.assertEqual(queue.keys[slot.index], [])
                self.assertLessEqual(slot.ready_at, world.clock.seconds())
            else:
                self.assertIn(slot.key, queue.keys[slot.index])
                self.assertTrue(world.pools[slot.target.backend].available(slot.key))
            offered[pair] = offered.get(pair, 0) + 1
            self.assertLessEqual(offered[pair], 1 + parked.get(pair, 0), pair)
            outcome, retry_after, trip = steps.pop(0) if steps else (Outcome.RETRY_NEXT, None, "")
            if trip:
                world.breakers[trip].record_failure("x")
            pool = world.pools[slot.target.backend]
            if slot.key is not None and outcome is Outcome.RATE_LIMITED:
                pool.mark_rate_limited(slot.key, retry_after)
            elif slot.key is not None and outcome is Outcome.NEXT_KEY:
                pool.mark_invalid(slot.key)
            elif slot.key is not None and outcome is Outcome.QUOTA:
                pool.mark_quota(slot.key)
            if outcome is Outcome.RATE_LIMITED:
                parked[pair] = parked.get(pair, 0) + 1
            queue.failed(slot, outcome, retry_after)
        else:
            self.fail("the attempts never ended")
