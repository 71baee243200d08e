"""
The Redis state store against a real C{redis-server} (started by
L{llmproxy.testing.redis.RedisServer} on a free port): the bounded
connection, TLS and passwords, the contract every state store keeps, and
outages.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from llmproxy.state import Fact, StateStore, StateUnavailable
from llmproxy.state import redis as redis_state
from llmproxy.state.redis import RedisState
from llmproxy.state.redis_link import RedisLink, parse_redis_url
from llmproxy.testing.redis import RedisServer
from tests.state_contract import NOW, RESPONSES, SESSIONS, OutageContract, cooled, record


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """
    Wait (on the real reactor) until C{condition()} is true.
    """
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"still false after {timeout}s: {condition}")
        await deferLater(reactor, 0.01, lambda: None)


class ServerTests(TestCase):
    """
    The test server itself: it answers, dies when killed and comes back on
    the same port.
    """

    async def test_kill_and_restart_on_the_same_port(self) -> None:
        server = RedisServer(reactor)
        self.addCleanup(server.stop)
        await server.start()
        port = server.port
        self.assertTrue(server.running)
        await server.kill()
        self.assertFalse(server.running)
        await server.start()
        self.assertEqual((server.running, server.port), (True, port))


class LinkCase(TestCase):
    """
    A server, and links to it torn down after each test.
    """

    password: str | None = None

    async def server(self) -> RedisServer:
        server = RedisServer(reactor, password=self.password)
        self.addCleanup(server.stop)
        await server.start()
        return server

    def link(self, url: str, clock: Any = reactor, **kwargs: Any) -> tuple[RedisLink, list[Any]]:
        """
        A link on channel C{"c"}; the returned list collects messages and
        C{"back"} each time the server is (again) reachable.
        """
        seen: list[Any] = []
        link = RedisLink(parse_redis_url(url, {}), reactor, clock, ("c",),
                         on_message=lambda ch, m: seen.append((ch, m)),
                         on_back=lambda: seen.append("back"), **kwargs)
        self.addCleanup(link.disconnect)
        return link, seen


class LinkTests(LinkCase):
    async def test_commands_and_messages(self) -> None:
        server = await self.server()
        link, seen = self.link(server.url)
        await until(lambda: link.available)
        self.assertEqual(seen, ["back"])
        await link.call("set", "k", "v")
        self.assertEqual(await link.call("get", "k"), "v")
        await link.call("publish", "c", "hello")
        await until(lambda: ("c", "hello") in seen)

    async def test_known_down_fails_at_once(self) -> None:
        """
        With the server gone (the subscriber's connection lost), a command
        fails with L{StateUnavailable} at once, and the link says why.
        """
        server = await self.server()
        link, _ = self.link(server.url, Clock())
        await until(lambda: link.available)
        await server.kill()
        await until(lambda: not link.available)
        self.assertIn("lost", link.error or "")
        self.failureResultOf(Deferred.fromCoroutine(link.call("get", "k")), StateUnavailable)

    async def test_a_stalled_server_is_waited_for_a_bounded_time(self) -> None:
        """
        A server that keeps its connections but answers nothing: a command
        fails once the timeout passes on the injected clock, not later,
        not never; and works again once the server does.
        """
        server = await self.server()
        clock = Clock()
        link, _ = self.link(server.url, clock, timeout=0.5)
        await until(lambda: link.available)
        server.pause()
        d = Deferred.fromCoroutine(link.call("get", "k"))
        clock.advance(0.4)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, StateUnavailable)
        self.assertFalse(link.available)
        server.resume()
        link.timeout = 5.0
        self.assertIsNone(await link.call("get", "k"))
        self.assertTrue(link.available)

    async def test_an_error_reply_is_unavailable_not_a_crash(self) -> None:
        """
        An error reply (here: a command the server does not know; in life a
        server still loading its data, or out of memory) is a store that
        cannot serve, with the server's reason in the status.
        """
        server = await self.server()
        link, _ = self.link(server.url)
        await until(lambda: link.available)
        with self.assertRaises(StateUnavailable):
            await link.call("execute_command", "NOSUCHCOMMAND")
        self.assertFalse(link.available)
        self.assertIn("unknown command", link.error or "")
        await link.call("ping")
        self.assertTrue(link.available)

    async def test_back_after_an_outage(self) -> None:
        server = await self.server()
        link, seen = self.link(server.url, max_delay=0.2)
        await until(lambda: link.available)
        await server.kill()
        await until(lambda: not link.available)
        await server.start()
        await until(lambda: link.available)
        self.assertEqual(seen, ["back", "back"])
        self.assertIsNone(link.error)
        await link.call("publish", "c", "again")
        await until(lambda: ("c", "again") in seen)

    async def test_an_outage_is_logged_once(self) -> None:
        """
        One warning when the server goes (not one per failed reconnection
        or refused command), one line when it is back.
        """
        server = await self.server()
        link, _ = self.link(server.url, max_delay=0.05)
        logged: list[dict[str, Any]] = []
        link.log = Logger(observer=logged.append)
        await until(lambda: link.available)
        await server.kill()
        await until(lambda: "could not connect" in (link.error or ""))
        await deferLater(reactor, 0.3, lambda: None)  # several reconnections fail meanwhile
        for _ in range(3):
            with self.assertRaises(StateUnavailable):
                await link.call("get", "k")
        await server.start()
        await until(lambda: link.available)
        lines = [(e["log_level"].name, e["log_format"].split(" (")[0]) for e in logged]
        self.assertEqual(lines, [("warn", "state store {url} unavailable"),
                                 ("info", "state store {url} is back")])

    async def test_never_reachable(self) -> None:
        """
        A server that is not there: the link says so and a command fails
        in bounded time.
        """
        server = await self.server()
        await server.stop()
        clock = Clock()
        link, _ = self.link(server.url, clock, timeout=0.5)
        self.assertFalse(link.available)
        d = Deferred.fromCoroutine(link.call("get", "k"))
        clock.advance(0.5)
        self.failureResultOf(d, StateUnavailable)
        self.assertFalse(link.available)


class PasswordTests(LinkCase):
    password = "s3cret-pw"

    async def test_password_from_url(self) -> None:
        server = await self.server()
        link, _ = self.link(server.url)
        await until(lambda: link.available)
        self.assertEqual(await link.call("ping"), "PONG")

    async def test_wrong_password_is_unavailable_and_not_shown(self) -> None:
        server = await self.server()
        clock = Clock()
        link, _ = self.link(server.url.replace(self.password, "wrong"), clock)
        await until(lambda: "could not auth" in (link.error or ""))
        d = Deferred.fromCoroutine(link.call("ping"))
        clock.advance(1.0)
        self.failureResultOf(d, StateUnavailable)
        self.assertFalse(link.available)
        self.assertIn("could not auth", link.error or "")
        self.assertNotIn("wrong", link.error or "")

    async def test_password_set_later_is_picked_up(self) -> None:
        """
        A refused password is not final: the link keeps trying, and works
        once the server accepts it.
        """
        server = await self.server()
        link, _ = self.link(server.url.replace(self.password or "", "later"), max_delay=0.1)
        await until(lambda: "could not auth" in (link.error or ""))
        await self.link(server.url)[0].call(
            "execute_command", "CONFIG", "SET", "requirepass", "later")
        await until(lambda: link.available)


class TlsTests(LinkCase):
    async def test_rediss_verified_against_the_given_ca(self) -> None:
        server = RedisServer(reactor, password="pw", tls=True)
        self.addCleanup(server.stop)
        await server.start()
        self.assertTrue(server.url.startswith("rediss://"))
        link, _ = self.link(server.url)
        await until(lambda: link.available)
        self.assertEqual(await link.call("ping"), "PONG")

    async def test_rediss_refuses_an_unknown_ca(self) -> None:
        """
        Without the server's CA, the platform's trust store refuses its
        certificate: the store is unavailable, not silently unverified.
        """
        server = RedisServer(reactor, tls=True)
        self.addCleanup(server.stop)
        await server.start()
        clock = Clock()
        link, _ = self.link(server.url.split("?")[0], clock)
        d = Deferred.fromCoroutine(link.call("ping"))
        await deferLater(reactor, 0.3, lambda: None)
        clock.advance(1.0)
        self.failureResultOf(d, StateUnavailable)
        self.assertFalse(link.available)


class ConnectedStores:
    """
    A server and two stores connected to it, made before each test (as a
    process's is before it serves); a peer is another store on the same
    server, as another process's would be.
    """

    clock: Clock

    async def connected_stores(self) -> None:
        self.redis = RedisServer(reactor, persistent=True)
        self.addCleanup(self.redis.stop)
        await self.redis.start()
        self.stores: list[RedisState] = []
        for _ in range(2):
            store = RedisState(parse_redis_url(self.redis.url, {}), reactor, self.clock)
            store.startService()
            self.addCleanup(store.stopService)
            self.stores.append(store)
        for store in self.stores:
            await until(lambda: store.link.available)

    def setUp(self) -> Any:
        self.clock = Clock()
        self.clock.advance(NOW)
        return Deferred.fromCoroutine(self.connected_stores())

    def pair(self) -> tuple[StateStore, StateStore]:
        return self.stores[0], self.stores[1]

    def listen(self, store: StateStore) -> list[Fact]:
        heard: list[Fact] = []
        self.addCleanup(store.subscribe(heard.append))  # type: ignore[attr-defined]
        return heard

    def make_store(self, clock: IReactorTime) -> StateStore:
        return self.stores[0]

    def make_peer(self, store: StateStore, clock: IReactorTime) -> StateStore:
        return self.stores[1]

    async def settle(self, store: StateStore) -> None:
        if not self.redis.running:
            await until(lambda: not store.status().up)
            return
        for each in self.stores:
            await until(lambda: each.link.available)
            await each.settled()

    async def break_store(self, store: StateStore) -> None:
        await self.redis.kill()
        await until(lambda: not store.status().up and bool(store.status().last_error))

    async def mend_store(self, store: StateStore) -> None:
        await self.redis.start()
        await until(lambda: store.status().up)


class RedisContractTests(ConnectedStores, OutageContract, TestCase):
    """
    The contract every state store keeps, on a real server.
    """


class RedisStoreTests(ConnectedStores, TestCase):
    """
    What is particular to Redis, on the same two connected stores.
    """

    async def test_redis_reclaims_the_space_too(self) -> None:
        """
        The age bounds are Redis expiries as well, so nothing outlives
        them even if no process ever runs C{expire}.
        """
        store, _ = self.pair()
        await store.put_response("resp_1", record(1, NOW), RESPONSES)
        await store.update_session("c", lambda s: s, SESSIONS)
        link = self.stores[0].link
        for key, bound in (("response:resp_1", RESPONSES), ("session:c", SESSIONS)):
            ttl = await link.call("execute_command", "PTTL", "llmproxy:" + key)
            self.assertTrue(0 < ttl <= bound.max_age * 1000, (key, ttl))

    async def test_facts_waiting_beyond_the_outbox_keep_the_latest(self) -> None:
        self.patch(redis_state, "OUTBOX", 3)
        store, peer = self.pair()
        heard = self.listen(peer)
        await self.break_store(store)
        for n in range(10):
            store.publish(cooled("a" if n % 2 else "b", until=NOW + 10 + n))
        self.assertLessEqual(len(self.stores[0]._outbox), 3)
        await self.mend_store(store)
        await self.settle(store)
        self.assertEqual(sorted((f.subject, f.until) for f in heard),
                         [("a", NOW + 19), ("b", NOW + 18)])

    async def test_status_while_down_and_back(self) -> None:
        store, _ = self.pair()
        self.clock.advance(5)
        await self.break_store(store)
        down = store.status()
        self.assertEqual((down.up, down.since, down.where),
                         (False, NOW + 5, self.redis.url))
        self.clock.advance(5)
        await self.mend_store(store)
        self.assertEqual((store.status().up, store.status().since), (True, NOW + 10))

    async def test_what_is_not_a_fact_is_ignored_and_cleared(self) -> None:
        """
        Junk in the hash or on the channel (another version's, a mistake)
        is skipped, not raised, and C{expire} clears it from the hash.
        """
        store, peer = self.pair()
        heard = self.listen(peer)
        link = self.stores[0].link
        await link.call("hset", "llmproxy:facts", "junk", "{not json")
        await link.call("publish", "llmproxy:facts", "[1, 2]")
        store.publish(cooled())
        await self.settle(peer)
        self.assertEqual([f.subject for f in heard], ["openai#1"])
        self.assertEqual([f.subject for f in await peer.facts()], ["openai#1"])
        await peer.expire(RESPONSES, SESSIONS)
        self.assertNotIn("junk", await link.call("hgetall", "llmproxy:facts"))

    async def test_a_server_back_empty_gets_the_current_facts_again(self) -> None:
        """
        Redis restarted without persistence: each process writes its own
        current facts again (where missing), so one that starts later still
        learns them; a peer is not told twice.
        """
        store, peer = self.pair()
        heard = self.listen(peer)
        await store.put_response("resp_1", record(1, NOW), RESPONSES)
        store.publish(cooled("a", until=NOW + 30))
        store.publish(cooled("gone", until=NOW + 1))
        await self.settle(store)
        self.clock.advance(2)
        self.redis.persistent = False
        await self.break_store(store)
        await self.mend_store(store)
        await self.settle(store)
        self.assertIsNone(await store.get_response("resp_1", RESPONSES), "not empty")
        self.assertEqual(await self.redis_facts(), ["a"])
        self.assertEqual([f.subject for f in heard], ["a", "gone"])

    async def redis_facts(self) -> list[str]:
        link = self.stores[1].link
        await until(lambda: link.available)
        found = await link.call("hgetall", "llmproxy:facts")
        return sorted(key.split("\x1f")[-1] for key in found)
