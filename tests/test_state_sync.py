"""
Key pools and circuit breakers across processes (L{llmproxy.state.sync}):
two "processes" (each its pools, breakers and L{FactSync}) on one
L{MemoryHub}, on a L{Clock}.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.codex import Window
from llmproxy.backends.health import ModelBreakers
from llmproxy.backends.keypool import KeyPool
from llmproxy.config import ApiKey
from llmproxy.state import CIRCUIT, KEY_COOLED, Fact, MemoryHub, MemoryState
from llmproxy.state.sync import FactSync

SECRET = "sk-do-not-share"
KEYS = [ApiKey("openai#1", SECRET + "1"), ApiKey("openai#2", SECRET + "2")]


class Process:
    def __init__(self, clock: Clock, hub: MemoryHub) -> None:
        self.state = MemoryState(clock, hub)
        self.pools = {"openai": KeyPool("openai", KEYS, clock)}
        self.breakers = {"openai": ModelBreakers(clock, threshold=2, cooldown=30.0,
                                                 name="openai")}
        self.sync = FactSync(self.state, clock, lambda: self.pools, lambda: self.breakers)
        self.sync.start()

    @property
    def pool(self) -> KeyPool:
        return self.pools["openai"]

    @property
    def circuits(self) -> ModelBreakers:
        return self.breakers["openai"]


class FactSyncTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.hub = MemoryHub()
        self.a, self.b = Process(self.clock, self.hub), Process(self.clock, self.hub)

    def test_a_cooldown_learnt_by_one_holds_on_the_other(self) -> None:
        self.a.pool.mark_rate_limited(KEYS[0], 20.0)
        self.assertFalse(self.b.pool.available(KEYS[0]))
        self.assertEqual(self.b.pool.ordered(), [KEYS[1], KEYS[0]])
        status = self.b.pool.status()[0]
        self.assertEqual((status["state"], status["cooldown_left"]), ("rate_limited", 20.0))
        self.clock.advance(20)
        self.assertTrue(self.b.pool.available(KEYS[0]))

    def test_quota_is_shared_with_its_reason(self) -> None:
        self.a.pool.mark_quota(KEYS[0])
        self.a.pool.mark_quota(KEYS[1])
        self.assertTrue(self.b.pool.all_quota_exhausted())

    def test_no_key_value_reaches_the_store(self) -> None:
        self.a.pool.mark_invalid(KEYS[0])
        written = json.dumps([f.to_json() for f in self.hub.facts.values()])
        self.assertIn("openai#1", written)
        self.assertNotIn(SECRET, written)

    def test_an_applied_fact_is_not_published_again(self) -> None:
        published: list[Fact] = []
        self.b.state.publish = published.append  # type: ignore[method-assign]
        self.a.pool.mark_rate_limited(KEYS[0], 20.0)
        self.assertEqual(published, [])

    def test_a_later_deadline_is_kept(self) -> None:
        self.b.pool.mark_rate_limited(KEYS[0], 50.0)
        self.a.pool.mark_rate_limited(KEYS[0], 10.0)
        self.assertEqual(self.b.pool.status()[0]["cooldown_left"], 50.0)

    def test_a_circuit_opened_by_one_is_open_on_the_other(self) -> None:
        for _ in range(2):
            self.a.circuits.record_failure("gpt-x")
        self.assertFalse(self.b.circuits.allow("gpt-x"))
        self.assertEqual(self.b.circuits.status()["gpt-x"]["state"], "open")
        self.assertTrue(self.b.circuits.allow("gpt-y"))
        self.a.circuits.record_success("gpt-x")
        self.assertTrue(self.b.circuits.allow("gpt-x"))
        self.assertEqual(self.b.circuits.status(), {})

    def test_an_open_circuit_half_opens_on_time_everywhere(self) -> None:
        for _ in range(2):
            self.a.circuits.record_failure("gpt-x")
        self.clock.advance(30)
        self.assertEqual(self.b.circuits.status()["gpt-x"]["state"], "half-open")

    def test_a_process_that_starts_later_applies_the_current_facts(self) -> None:
        self.a.pool.mark_rate_limited(KEYS[1], 20.0)
        for _ in range(2):
            self.a.circuits.record_failure("gpt-x")
        late = Process(self.clock, self.hub)
        self.assertFalse(late.pool.available(KEYS[1]))
        self.assertFalse(late.circuits.allow("gpt-x"))

    def test_over_or_unknown_facts_are_ignored(self) -> None:
        now = self.clock.seconds()
        for fact in (Fact(KEY_COOLED, "openai", "openai#1", now - 1, "rate_limited"),
                     Fact(KEY_COOLED, "elsewhere", "openai#1", now + 9, "rate_limited"),
                     Fact(KEY_COOLED, "openai", "openai#9", now + 9, "rate_limited"),
                     Fact(CIRCUIT, "openai", "gpt-x", now - 1, "open", {"opened_at": now - 31}),
                     Fact(CIRCUIT, "nowhere", "gpt-x", now + 9, "open", {"opened_at": now})):
            self.a.state.publish(fact)
        self.assertEqual([k["state"] for k in self.b.pool.status()], ["ok", "ok"])
        self.assertEqual(self.b.circuits.status(), {})

    def test_a_reload_hooks_the_new_pools(self) -> None:
        self.a.pools = {"openai": KeyPool("openai", KEYS, self.clock)}
        self.a.sync.attach()
        self.a.pool.mark_rate_limited(KEYS[0], 20.0)
        self.assertFalse(self.b.pool.available(KEYS[0]))

    def test_stopped_hears_nothing(self) -> None:
        self.b.sync.stop()
        self.a.pool.mark_rate_limited(KEYS[0], 20.0)
        self.assertTrue(self.b.pool.available(KEYS[0]))


class WindowNewsTests(SynchronousTestCase):
    def test_what_counts_as_news(self) -> None:
        seen = Window(40.0, 300, 1_000.0)
        self.assertTrue(seen.news(None))
        self.assertFalse(Window(40.0, 300, 1_002.0).news(seen))  # a drifting reset
        self.assertTrue(Window(41.0, 300, 1_000.0).news(seen))
        self.assertTrue(Window(40.0, 300, 1_300.0).news(seen))
        self.assertTrue(Window(40.0, 300, None).news(seen))
