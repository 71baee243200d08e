"""
What every shared-state store does (L{llmproxy.state.base.StateStore}),
as a mixin each implementation's tests reuse::

    class SQLiteContractTests(OutageContract, TestCase):  # StateContract if it cannot fail
        def make_store(self, clock): ...
        def make_peer(self, store, clock): ...

A I{peer} is a second store on the same backend: another process's view.
The tests drive time with a L{Clock} (C{self.clock}); an implementation
whose facts travel asynchronously says how to wait for them in L{settle}.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from llmproxy.state import (
    CIRCUIT, KEY_COOLED, Bounds, Fact, SessionState, StateStore, StateUnavailable,
    StoredResponse,
)

NOW = 1_700_000_000.0
RESPONSES = Bounds(max_items=5, max_age=60.0)
SESSIONS = Bounds(max_items=3, max_age=100.0)


def record(n: int, created: float, root: str = "") -> StoredResponse:
    return StoredResponse(
        ({"role": "user", "content": f"question {n} é"},
         {"role": "assistant", "content": None,
          "tool_calls": [{"id": f"c{n}", "type": "function",
                          "function": {"name": "f", "arguments": "{}"}}]}),
        root or f"resp_{n}", created)


def cooled(key: str = "openai#1", until: float = NOW + 30, reason: str = "rate_limited",
           backend: str = "openai") -> Fact:
    return Fact(KEY_COOLED, backend, key, until, reason, {"error": "rate limited (429)"})


class StateContract:
    """
    The contract; mix into a trial C{TestCase}.
    """

    clock: Clock

    # what an implementation's tests supply

    def make_store(self, clock: IReactorTime) -> StateStore:
        """
        A new, started store on a new, empty backend (cleaned up by the
        test case).
        """
        raise NotImplementedError

    def make_peer(self, store: StateStore, clock: IReactorTime) -> StateStore:
        """
        Another started store on C{store}'s backend (another process).
        """
        raise NotImplementedError

    async def settle(self, store: StateStore) -> None:
        """
        Return once what C{store} published is written and C{store} has
        heard the facts others' settled stores wrote (and, after
        L{mend_store}, has noticed the backend is back).  The tests settle
        the publisher before the listener.
        """

    # helpers

    def setUp(self) -> Any:
        self.clock = Clock()
        self.clock.advance(NOW)
        return super().setUp()  # type: ignore[misc]

    def pair(self) -> tuple[StateStore, StateStore]:
        store = self.make_store(self.clock)
        return store, self.make_peer(store, self.clock)

    def listen(self, store: StateStore) -> list[Fact]:
        heard: list[Fact] = []
        unsubscribe = store.subscribe(heard.append)
        self.addCleanup(unsubscribe)  # type: ignore[attr-defined]
        return heard

    # the Responses store

    async def test_a_response_is_read_by_a_peer(self) -> None:
        store, peer = self.pair()
        kept = record(1, NOW, root="resp_0")
        await store.put_response("resp_1", kept, RESPONSES)
        self.assertEqual(await peer.get_response("resp_1", RESPONSES), kept)  # type: ignore
        self.assertIsNone(await peer.get_response("resp_nope", RESPONSES))  # type: ignore

    async def test_responses_expire_by_age(self) -> None:
        store, peer = self.pair()
        await store.put_response("resp_1", record(1, NOW), RESPONSES)
        self.clock.advance(RESPONSES.max_age + 1)
        self.assertIsNone(await peer.get_response("resp_1", RESPONSES))  # type: ignore
        await store.expire(RESPONSES, SESSIONS)
        self.assertIsNone(await store.get_response("resp_1", RESPONSES))  # type: ignore

    async def test_responses_are_bounded_by_count(self) -> None:
        store, peer = self.pair()
        for n in range(RESPONSES.max_items + 2):
            self.clock.advance(1)
            writer = store if n % 2 else peer
            await writer.put_response(f"resp_{n}", record(n, self.clock.seconds()), RESPONSES)
        await store.expire(RESPONSES, SESSIONS)
        found = [await store.get_response(f"resp_{n}", RESPONSES)
                 for n in range(RESPONSES.max_items + 2)]
        self.assertEqual([f is not None for f in found],  # type: ignore[attr-defined]
                         [False, False] + [True] * RESPONSES.max_items)

    async def test_no_responses_kept_with_max_items_zero(self) -> None:
        store = self.make_store(self.clock)
        none = Bounds(0, 60.0)
        await store.put_response("resp_1", record(1, NOW), none)
        self.assertIsNone(await store.get_response("resp_1", RESPONSES))  # type: ignore

    # conversations

    async def test_an_unknown_conversation_is_fresh(self) -> None:
        store = self.make_store(self.clock)
        self.assertEqual(await store.get_session("c", SESSIONS),  # type: ignore
                         SessionState())

    async def test_a_conversation_is_shared(self) -> None:
        store, peer = self.pair()
        self.clock.advance(5)
        new = await store.update_session(
            "c", lambda s: replace(s, turns=s.turns + 1, writes=2, planning_over=True,
                                   tune_next=True, tune_reason="no match é"), SESSIONS)
        expected = SessionState(1, 2, True, True, NOW + 5, "no match é")
        self.assertEqual(new, expected)  # type: ignore[attr-defined]
        self.assertEqual(await peer.get_session("c", SESSIONS), expected)  # type: ignore

    async def test_updates_do_not_interleave(self) -> None:
        store, peer = self.pair()

        def bump(s: SessionState) -> SessionState:
            return replace(s, turns=s.turns + 1)

        await gatherResults([
            Deferred.fromCoroutine((store if n % 2 else peer).update_session("c", bump, SESSIONS))
            for n in range(20)])
        self.assertEqual((await store.get_session("c", SESSIONS)).turns, 20)  # type: ignore

    async def test_idle_conversations_are_forgotten(self) -> None:
        store, peer = self.pair()
        await store.update_session("old", lambda s: replace(s, turns=1), SESSIONS)
        self.clock.advance(60)
        await store.update_session("new", lambda s: replace(s, turns=1), SESSIONS)
        self.clock.advance(41)
        self.assertEqual(await peer.get_session("old", SESSIONS), SessionState())  # type: ignore
        await peer.expire(RESPONSES, SESSIONS)
        self.assertEqual((await store.get_session("new", SESSIONS)).turns, 1)  # type: ignore
        fresh = await store.update_session("old", lambda s: replace(s, writes=s.writes + 1),
                                           SESSIONS)
        self.assertEqual((fresh.turns, fresh.writes), (0, 1))  # type: ignore[attr-defined]

    async def test_conversations_are_bounded_by_count(self) -> None:
        store, peer = self.pair()
        for n in range(SESSIONS.max_items + 2):
            self.clock.advance(1)
            await (store if n % 2 else peer).update_session(
                f"c{n}", lambda s: replace(s, turns=1), SESSIONS)
        await store.expire(RESPONSES, SESSIONS)
        turns = [(await store.get_session(f"c{n}", SESSIONS)).turns
                 for n in range(SESSIONS.max_items + 2)]
        self.assertEqual(turns, [0, 0] + [1] * SESSIONS.max_items)  # type: ignore

    # facts

    async def test_a_peer_hears_a_fact_and_its_author_does_not(self) -> None:
        store, peer = self.pair()
        mine, theirs = self.listen(store), self.listen(peer)
        store.publish(cooled())
        await self.settle(store)
        await self.settle(peer)
        self.assertEqual(mine, [])  # type: ignore[attr-defined]
        self.assertEqual([replace(f, origin="") for f in theirs], [cooled()])  # type: ignore
        self.assertEqual(theirs[0].origin, store.origin)  # type: ignore[attr-defined]
        self.assertNotEqual(store.origin, peer.origin)  # type: ignore[attr-defined]

    async def test_facts_arrive_in_order(self) -> None:
        store, peer = self.pair()
        heard = self.listen(peer)
        opened = Fact(CIRCUIT, "openai", "gpt-x", NOW + 30, "open", {"opened_at": NOW})
        closed = replace(opened, until=0.0, reason="closed")
        for fact in (cooled("a"), opened, cooled("b", reason="quota"), closed):
            store.publish(fact)
        await self.settle(store)
        await self.settle(peer)
        self.assertEqual([(f.subject, f.reason) for f in heard],  # type: ignore[attr-defined]
                         [("a", "rate_limited"), ("gpt-x", "open"), ("b", "quota"),
                          ("gpt-x", "closed")])

    async def test_current_facts_latest_per_identity(self) -> None:
        store, peer = self.pair()
        store.publish(cooled("a", until=NOW + 10))
        store.publish(cooled("b", until=NOW + 5))
        store.publish(cooled("c", until=NOW - 1))
        await self.settle(store)
        peer.publish(cooled("a", until=NOW + 50, reason="quota"))
        await self.settle(peer)
        self.clock.advance(6)
        current = sorted(await store.facts(), key=lambda f: f.subject)
        self.assertEqual([(f.subject, f.until, f.reason, f.origin) for f in current],  # type: ignore
                         [("a", NOW + 50, "quota", peer.origin)])

    async def test_unsubscribed_hears_nothing(self) -> None:
        store, peer = self.pair()
        heard: list[Fact] = []
        peer.subscribe(heard.append)()
        store.publish(cooled())
        await self.settle(store)
        await self.settle(peer)
        self.assertEqual(heard, [])  # type: ignore[attr-defined]

    # status and outages

    async def test_status_up(self) -> None:
        store = self.make_store(self.clock)
        status = store.status()
        self.assertEqual((status.kind, status.up, status.last_error),  # type: ignore
                         (store.kind, True, None))


class OutageContract(StateContract):
    """
    The contract of a store that can be out of reach (not the in-process
    one): what its tests supply to take its backend away and bring it back.
    """

    async def break_store(self, store: StateStore) -> None:
        """
        Make the backend unavailable to C{store}.
        """
        raise NotImplementedError

    async def mend_store(self, store: StateStore) -> None:
        """
        Make it available again.
        """
        raise NotImplementedError

    async def test_an_outage_and_the_way_back(self) -> None:
        store, peer = self.pair()
        await store.put_response("resp_1", record(1, NOW), RESPONSES)
        heard = self.listen(peer)
        await self.break_store(store)
        with self.assertRaises(StateUnavailable):  # type: ignore[attr-defined]
            await store.get_response("resp_1", RESPONSES)
        with self.assertRaises(StateUnavailable):  # type: ignore[attr-defined]
            await store.update_session("c", lambda s: s, SESSIONS)
        store.publish(cooled("a", until=NOW + 30))  # does not raise; waits
        store.publish(cooled("a", until=NOW + 40))
        await self.settle(store)
        status = store.status()
        self.assertFalse(status.up)  # type: ignore[attr-defined]
        self.assertTrue(status.last_error)  # type: ignore[attr-defined]
        await self.mend_store(store)
        await self.settle(store)
        await self.settle(peer)
        self.assertTrue(store.status().up)  # type: ignore[attr-defined]
        self.assertIsNotNone(await store.get_response("resp_1", RESPONSES))  # type: ignore
        self.assertEqual([f.until for f in heard if f.subject == "a"][-1],  # type: ignore
                         NOW + 40)


__all__ = ["NOW", "OutageContract", "RESPONSES", "SESSIONS", "StateContract", "cooled", "record"]
