# -*- test-case-name: tests.test_keypool -*-
"""
Tests for L{llmproxy.backends.keypool}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.backends.keypool import KeyPool
from llmproxy.config import ApiKey

SECRET = "sk-very-secret-value"


def _keys(count: int) -> list[ApiKey]:
    """
    C{count} keys named C{openai#1...}, each with a distinct secret value.
    """
    return [ApiKey(f"openai#{i}", f"{SECRET}-{i}") for i in range(1, count + 1)]


def _pool(count: int = 3, **kwargs: float) -> tuple[KeyPool, Clock]:
    """
    A pool of C{count} keys on a fresh clock.
    """
    clock = Clock()
    return KeyPool("openai", _keys(count), clock, **kwargs), clock


def _names(keys: list[ApiKey]) -> list[str]:
    """
    The names of C{keys}.
    """
    return [key.name for key in keys]


class ApiKeyTests(SynchronousTestCase):
    """
    Tests for L{ApiKey}.
    """

    def test_value_hidden(self) -> None:
        """
        Neither C{repr} nor C{str} shows the value, only the name.
        """
        key = ApiKey("OPENAI_API_KEY_3", SECRET)
        for text in (repr(key), str(key), f"{key}", repr([key])):
            self.assertNotIn(SECRET, text)
            self.assertIn("OPENAI_API_KEY_3", text)


class RotationTests(SynchronousTestCase):
    """
    Tests for L{KeyPool.ordered}.
    """

    def test_round_robin(self) -> None:
        """
        Successive calls start on successive keys and wrap around.
        """
        pool, _ = _pool(3)
        self.assertEqual(_names(pool.ordered()), ["openai#1", "openai#2", "openai#3"])
        self.assertEqual(_names(pool.ordered()), ["openai#2", "openai#3", "openai#1"])
        self.assertEqual(_names(pool.ordered()), ["openai#3", "openai#1", "openai#2"])
        self.assertEqual(_names(pool.ordered()), ["openai#1", "openai#2", "openai#3"])

    def test_cooling_keys_last(self) -> None:
        """
        Available keys come first, cooling keys after them, soonest first.
        """
        pool, _ = _pool(3)
        k1, k2, k3 = pool.keys
        pool.mark_rate_limited(k1, 30)
        pool.mark_rate_limited(k2, 10)
        self.assertEqual(pool.ordered(), [k3, k2, k1])

    def test_empty(self) -> None:
        """
        A keyless pool orders to nothing and has no free time.
        """
        pool = KeyPool("mock", [], Clock())
        self.assertEqual(len(pool), 0)
        self.assertEqual(pool.ordered(), [])
        self.assertIsNone(pool.next_free_in())
        self.assertFalse(pool.all_quota_exhausted())
        self.assertEqual(pool.status(), [])

    def test_duplicate_names(self) -> None:
        """
        Two keys with the same name are a configuration error.
        """
        keys = [ApiKey("a", "1"), ApiKey("a", "2")]
        self.assertRaises(ValueError, KeyPool, "openai", keys, Clock())

    def test_foreign_key(self) -> None:
        """
        A key from another pool is rejected.
        """
        pool, _ = _pool(1)
        self.assertRaises(KeyError, pool.available, ApiKey("openai#1", "other"))
        self.assertRaises(KeyError, pool.mark_ok, ApiKey("x", "y"))

    @given(st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=30))
    def test_rotation_is_permutation(self, count: int, calls: int) -> None:
        """
        Every call returns each key exactly once, starting at call number
        modulo the pool size.
        """
        pool, _ = _pool(count)
        for _ in range(calls):
            pool.ordered()
        order = pool.ordered()
        self.assertEqual(sorted(_names(order)), sorted(_names(list(pool.keys))))
        self.assertEqual(order[0], pool.keys[calls % count])


class CooldownTests(SynchronousTestCase):
    """
    Tests for cooldown marking and availability.
    """

    def test_rate_limited_retry_after(self) -> None:
        """
        A 429 cools the key for its retry hint, then frees it.
        """
        pool, clock = _pool(2)
        key = pool.keys[0]
        pool.mark_rate_limited(key, 3.0)
        self.assertFalse(pool.available(key))
        self.assertTrue(pool.available(pool.keys[1]))
        clock.advance(2.9)
        self.assertFalse(pool.available(key))
        clock.advance(0.1)
        self.assertTrue(pool.available(key))

    def test_rate_limited_default(self) -> None:
        """
        Without a hint (or with a negative one) the default cooldown applies.
        """
        pool, clock = _pool(2, default_cooldown=5.0)
        pool.mark_rate_limited(pool.keys[0], None)
        pool.mark_rate_limited(pool.keys[1], -1)
        self.assertEqual(pool.next_free_in(), 5.0)

    def test_rate_limited_zero(self) -> None:
        """
        A hint of 0 means the key may be used again at once.
        """
        pool, _ = _pool(1)
        pool.mark_rate_limited(pool.keys[0], 0.0)
        self.assertTrue(pool.available(pool.keys[0]))

    def test_rate_limited_capped(self) -> None:
        """
        A huge retry hint is capped by C{max_cooldown}.
        """
        pool, _ = _pool(1, max_cooldown=60.0)
        pool.mark_rate_limited(pool.keys[0], 86400.0)
        self.assertEqual(pool.next_free_in(), 60.0)

    def test_later_deadline_kept(self) -> None:
        """
        A second, shorter cooldown does not shorten the first one; a longer
        one extends it.
        """
        pool, clock = _pool(1)
        key = pool.keys[0]
        pool.mark_rate_limited(key, 20.0)
        clock.advance(5)
        pool.mark_rate_limited(key, 1.0)
        self.assertEqual(pool.next_free_in(), 15.0)
        pool.mark_rate_limited(key, 30.0)
        self.assertEqual(pool.next_free_in(), 30.0)

    def test_rate_limit_does_not_shorten_invalid(self) -> None:
        """
        A rate limit on an invalid key keeps the long cooldown and reason.
        """
        pool, _ = _pool(1, auth_cooldown=3600.0)
        key = pool.keys[0]
        pool.mark_invalid(key)
        pool.mark_rate_limited(key, 2.0)
        self.assertEqual(pool.next_free_in(), 3600.0)
        self.assertEqual(pool.status()[0]["state"], "invalid")

    def test_invalid(self) -> None:
        """
        401/403 keys rest for C{auth_cooldown}.
        """
        pool, clock = _pool(2, auth_cooldown=100.0)
        key = pool.keys[1]
        pool.mark_invalid(key)
        clock.advance(99)
        self.assertFalse(pool.available(key))
        clock.advance(1)
        self.assertTrue(pool.available(key))

    def test_quota(self) -> None:
        """
        Quota-exhausted keys rest for C{quota_cooldown}.
        """
        pool, clock = _pool(1, quota_cooldown=200.0)
        pool.mark_quota(pool.keys[0])
        self.assertEqual(pool.next_free_in(), 200.0)
        clock.advance(200)
        self.assertTrue(pool.available(pool.keys[0]))

    def test_mark_ok_lifts_cooldown(self) -> None:
        """
        A success clears the failure count and any cooldown.
        """
        pool, _ = _pool(1)
        key = pool.keys[0]
        pool.mark_rate_limited(key, 10)
        pool.mark_rate_limited(key, 10)
        self.assertEqual(pool.state(key).failures, 2)
        pool.mark_ok(key)
        self.assertTrue(pool.available(key))
        self.assertEqual(pool.state(key).failures, 0)
        self.assertEqual(pool.status()[0]["state"], "ok")

    def test_next_free_in(self) -> None:
        """
        C{next_free_in} is 0 with a free key, else the soonest deadline.
        """
        pool, clock = _pool(2)
        self.assertEqual(pool.next_free_in(), 0.0)
        pool.mark_rate_limited(pool.keys[0], 8)
        self.assertEqual(pool.next_free_in(), 0.0)
        pool.mark_rate_limited(pool.keys[1], 3)
        self.assertEqual(pool.next_free_in(), 3.0)
        clock.advance(1)
        self.assertEqual(pool.next_free_in(), 2.0)
        clock.advance(5)
        self.assertEqual(pool.next_free_in(), 0.0)

    def test_state_is_a_copy(self) -> None:
        """
        Mutating a state snapshot does not affect the pool.
        """
        pool, _ = _pool(1)
        pool.state(pool.keys[0]).cooldown_until = 1e9
        self.assertTrue(pool.available(pool.keys[0]))

    @given(
        st.lists(
            st.one_of(st.none(), st.floats(min_value=-10, max_value=1e6)),
            min_size=1,
            max_size=10,
        )
    )
    def test_cooldown_bounds(self, hints: list[float | None]) -> None:
        """
        Whatever the hints, a rate-limit cooldown never exceeds
        C{max_cooldown} and is at least as long as the longest capped hint.
        """
        pool, _ = _pool(1, default_cooldown=5.0, max_cooldown=60.0)
        for hint in hints:
            pool.mark_rate_limited(pool.keys[0], hint)
        effective = [5.0 if h is None or h < 0 else min(h, 60.0) for h in hints]
        self.assertEqual(pool.next_free_in(), max(effective))


class QuotaExhaustionTests(SynchronousTestCase):
    """
    Tests for L{KeyPool.all_quota_exhausted}.
    """

    def test_all_quota(self) -> None:
        """
        True only once every key is out of quota.
        """
        pool, _ = _pool(2)
        pool.mark_quota(pool.keys[0])
        self.assertFalse(pool.all_quota_exhausted())
        pool.mark_quota(pool.keys[1])
        self.assertTrue(pool.all_quota_exhausted())

    def test_rate_limited_key_left(self) -> None:
        """
        A merely rate-limited key will come back soon: not exhausted.
        """
        pool, _ = _pool(2)
        pool.mark_quota(pool.keys[0])
        pool.mark_rate_limited(pool.keys[1], 5)
        self.assertFalse(pool.all_quota_exhausted())

    def test_quota_and_invalid(self) -> None:
        """
        Quota keys plus invalid keys leave nothing usable: exhausted.
        """
        pool, _ = _pool(2)
        pool.mark_quota(pool.keys[0])
        pool.mark_invalid(pool.keys[1])
        self.assertTrue(pool.all_quota_exhausted())

    def test_only_invalid(self) -> None:
        """
        All keys invalid is an authentication problem, not quota.
        """
        pool, _ = _pool(1)
        pool.mark_invalid(pool.keys[0])
        self.assertFalse(pool.all_quota_exhausted())

    def test_quota_expires(self) -> None:
        """
        After the quota cooldown the pool is usable again.
        """
        pool, clock = _pool(1, quota_cooldown=50.0)
        pool.mark_quota(pool.keys[0])
        clock.advance(50)
        self.assertFalse(pool.all_quota_exhausted())


class StatusTests(SynchronousTestCase):
    """
    Tests for L{KeyPool.status} and logging.
    """

    def test_status(self) -> None:
        """
        Status lists every key by name with its state and cooldown.
        """
        pool, clock = _pool(3)
        k1, k2, k3 = pool.keys
        pool.mark_rate_limited(k1, 10, error="429 from upstream")
        pool.mark_invalid(k2)
        clock.advance(4)
        status = pool.status()
        self.assertEqual([s["name"] for s in status], ["openai#1", "openai#2", "openai#3"])
        self.assertEqual(
            status[0],
            {
                "name": "openai#1",
                "state": "rate_limited",
                "cooldown_left": 6.0,
                "recent_failures": 1,
                "last_error": "429 from upstream",
            },
        )
        self.assertEqual(status[1]["state"], "invalid")
        self.assertEqual(status[2]["state"], "ok")
        self.assertEqual(status[2]["cooldown_left"], 0.0)

    def test_expired_cooldown_is_ok(self) -> None:
        """
        Once a cooldown has passed the key reports C{ok}, keeping its
        failure history.
        """
        pool, clock = _pool(1)
        pool.mark_rate_limited(pool.keys[0], 1)
        clock.advance(1)
        [entry] = pool.status()
        self.assertEqual(entry["state"], "ok")
        self.assertEqual(entry["recent_failures"], 1)

    def test_no_value_anywhere(self) -> None:
        """
        Key values appear neither in status, repr nor log events.
        """
        events: list[LogEvent] = []
        pool, _ = _pool(2)
        pool.log = Logger(observer=events.append)
        pool.mark_rate_limited(pool.keys[0], 1)
        pool.mark_invalid(pool.keys[1])
        pool.mark_quota(pool.keys[1])
        self.assertEqual(len(events), 3)
        texts = [formatEvent(e) for e in events] + [repr(e) for e in events]
        texts += [repr(pool.status()), repr(pool), repr(pool.ordered())]
        for text in texts:
            self.assertNotIn(SECRET, text)
        self.assertIn("openai#1", formatEvent(events[0]))
