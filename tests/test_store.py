# -*- test-case-name: tests.test_store -*-
"""
Tests for L{llmproxy.frontends.store.ResponseStore}: what a conversation
holds, and its bounds by count and by age (on a L{Clock}).
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.frontends.store import Messages, ResponseStore
from llmproxy.state import MemoryState, StoredResponse
from llmproxy.testing import responses_object

TTL = 60.0


def _answer(ident: str, text: str = "ok") -> bytes:
    return json.dumps(responses_object("m", text, ident)).encode()


class StoreTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = ResponseStore(self.clock, max_items=3, max_age=TTL)

    def remember(self, ident: str, text: str = "hi") -> None:
        self.store.remember({"input": text}, None, _answer(ident, "re: " + text))

    def found(self, ident: str, store: ResponseStore | None = None) -> StoredResponse | None:
        return self.successResultOf(Deferred.fromCoroutine((store or self.store).find(ident)))

    def history(self, ident: str, store: ResponseStore | None = None) -> Messages | None:
        found = self.found(ident, store)
        return None if found is None else found.messages

    def size(self, store: ResponseStore | None = None) -> int:
        state = (store or self.store).state
        assert isinstance(state, MemoryState)
        return len(state.hub.responses)


class ConversationTests(StoreTestCase):
    def test_history_is_earlier_turns_then_input_then_answer(self) -> None:
        self.remember("resp_1", "my name is Ada")
        first = self.history("resp_1")
        self.assertEqual(first, (
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "re: my name is Ada"},
        ))
        assert first is not None
        self.store.remember({"input": "and yours?", "model": "ignored",
                             "previous_response_id": "resp_1"}, self.found("resp_1"),
                            _answer("resp_2", "llmproxy"))
        second = self.history("resp_2")
        assert second is not None
        self.assertEqual(second[:2], first)
        self.assertEqual(second[2:], ({"role": "user", "content": "and yours?"},
                                      {"role": "assistant", "content": "llmproxy"}))

    def test_unknown_id(self) -> None:
        self.assertIsNone(self.history("resp_nope"))

    def test_malformed_or_failed_answers_start_nothing(self) -> None:
        for answer in (b"not json", b"{}", json.dumps({"id": "resp_x", "output": 3}).encode()):
            self.store.remember({"input": "hi"}, None, answer)
        self.assertEqual(self.size(), 0)

    def test_size_zero_stores_nothing(self) -> None:
        store = ResponseStore(self.clock, max_items=0)
        store.remember({"input": "hi"}, None, _answer("resp_1"))
        self.assertEqual((self.size(store), self.history("resp_1", store)), (0, None))


class BoundsTests(StoreTestCase):
    def test_oldest_dropped_beyond_max_items(self) -> None:
        for i in range(4):
            self.remember(f"resp_{i}")
        self.assertEqual(self.size(), 3)
        self.assertIsNone(self.history("resp_0"))
        self.assertIsNotNone(self.history("resp_1"))

    def test_expires_by_age(self) -> None:
        """
        An entry is there up to and including C{max_age} seconds after it
        was stored, and gone just after; a younger entry outlives it.
        """
        self.remember("resp_old")
        self.clock.advance(10)
        self.remember("resp_young")
        self.clock.advance(TTL - 10)
        self.assertIsNotNone(self.history("resp_old"), "exactly max_age old: kept")
        self.clock.advance(0.001)
        self.assertIsNone(self.history("resp_old"))
        self.assertEqual(self.size(), 1, "expired entries are dropped, not just hidden")
        self.assertIsNotNone(self.history("resp_young"))
        self.clock.advance(10)
        self.assertIsNone(self.history("resp_young"))
        self.assertEqual(self.size(), 0)

    def test_expiry_looks_up_any_id(self) -> None:
        """
        Looking up one id expires every stale entry, whichever was asked.
        """
        self.remember("resp_1")
        self.remember("resp_2")
        self.clock.advance(TTL + 1)
        self.assertIsNone(self.history("resp_nope"))
        self.assertEqual(self.size(), 0)

    def test_remembered_again_is_young_again(self) -> None:
        self.remember("resp_1")
        self.remember("resp_2")
        self.clock.advance(TTL - 1)
        self.remember("resp_1", "again")
        self.clock.advance(2)
        self.assertIsNone(self.history("resp_2"))
        history = self.history("resp_1")
        assert history is not None
        self.assertEqual(history[0], {"role": "user", "content": "again"})
