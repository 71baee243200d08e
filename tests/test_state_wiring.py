"""
Shared state wired into the proxy: the status section, the 503 of a
request whose stored state cannot be read, and two proxies in this process
sharing one SQLite file (the Responses store, planning counters, a key's
cooldown).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.backends.codex import CodexBackend
from llmproxy.exchange.sessions import StoreSessions
from llmproxy.state import Bounds, MemoryState, SessionState, StateUnavailable, StoredResponse
from llmproxy.testing import (
    Reply, backend_data, chat_completion, config_data, listen_chatgpt, openai_config,
)
from llmproxy.testing.codex import auth_data, write_auth_file
from tests.harness import MemoryProxy, Proxy, client, post, start
from tests.test_planning import planning

CHAT = "/v1/chat/completions"


class Unavailable(MemoryState):
    async def get_response(self, response_id: str, bounds: Bounds) -> StoredResponse | None:
        raise StateUnavailable()

    async def get_session(self, key: str, bounds: Bounds) -> Any:
        raise StateUnavailable()


class InThisProcessTests(SynchronousTestCase):
    def test_status_names_the_store(self) -> None:
        p = MemoryProxy()
        answer = p.request("GET", "/v1/llmproxy/status")
        state = json.loads(self.successResultOf(answer).content)["state"]
        self.assertEqual((state["kind"], state["up"], state["last_error"]),
                         ("memory", True, None))

    def test_an_unreadable_previous_response_is_a_503(self) -> None:
        p = MemoryProxy()
        p.service.app.store.state = Unavailable(p.clock)
        answer = p.post("/v1/responses", {"model": "gpt-4o", "input": "and?",
                                          "previous_response_id": "resp_1"})
        self.assertEqual(answer.status, 503)
        self.assertEqual(json.loads(answer.content)["error"]["code"], "state_store_unavailable")
        self.assertEqual(p.fake.requests, [])

    def test_an_unreadable_conversation_is_a_503(self) -> None:
        p = MemoryProxy(lambda u: openai_config(u, session=planning()))
        app = p.service.app
        app.runtime = replace(app.runtime, sessions=StoreSessions(
            Unavailable(p.clock), Bounds(10, 60)))
        answer = p.post(CHAT, {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "hi"}]}, {"session_id": "conv-1"})
        self.assertEqual(answer.status, 503)
        self.assertEqual(p.fake.requests, [])

    def test_without_a_conversation_no_store_is_asked(self) -> None:
        p = MemoryProxy(lambda u: openai_config(u, session=planning()))
        app = p.service.app
        app.runtime = replace(app.runtime, sessions=StoreSessions(
            Unavailable(p.clock), Bounds(10, 60)))
        answer = p.post(CHAT, {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "hi"}]})
        self.assertEqual(answer.status, 200)


class TwoProxiesOneFileTests(TestCase):
    """
    Two proxies in this process on one SQLite file, as two processes would
    share it.
    """

    async def proxies(self, clock: Any = None, **extra: Any) -> tuple[Proxy, Proxy]:
        self.path = path = os.path.abspath(self.mktemp())
        url = f"sqlite://{path}"

        def config(upstream: str) -> dict[str, Any]:
            return config_data({"openai": backend_data(upstream, "sk-a", "sk-b")},
                               state={"url": url, "poll": 0.05}, **extra)

        first = await start(self, config, clock)
        second = await start(self, config, clock)
        for proxy in (first, second):
            proxy.service.state.startService()
            self.addCleanup(proxy.service.state.stopService)
            assert proxy.service.sync is not None
            proxy.service.sync.start()
            self.addCleanup(proxy.service.sync.stop)
        return first, second

    async def test_a_response_made_by_one_continues_on_the_other(self) -> None:
        a, b = await self.proxies()
        status, _, content = await post(self, a.url + "/v1/responses",
                                        {"model": "gpt-4o", "input": "my name is Ada"})
        self.assertEqual(status, 200)
        first = json.loads(content)["id"]
        status, _, content = await post(self, b.url + "/v1/responses", {
            "model": "gpt-4o", "input": "who am I?", "previous_response_id": first})
        self.assertEqual(status, 200, content)
        sent = b.fake.requests[-1].body["messages"]
        self.assertEqual(sent[0], {"role": "user", "content": "my name is Ada"})

    async def test_planning_counts_across(self) -> None:
        a, b = await self.proxies(session=planning())
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        phases = []
        for proxy in (a, b, a):
            status, headers, _ = await post(self, proxy.url + CHAT, body,
                                            {"session_id": "conv-9"})
            self.assertEqual(status, 200)
            phases.append(headers["x-llmproxy-phase"])
        self.assertEqual([p.split(",")[0] for p in phases],
                         ["planning (turn 1/3", "planning (turn 2/3", "planning (turn 3/3"])

    async def test_a_429_learnt_by_one_cools_the_key_on_the_other(self) -> None:
        a, b = await self.proxies()
        a.fake.by_key["sk-a"] = [Reply(429, {"error": {"message": "slow down",
                                                       "type": "rate_limit_error"}},
                                       {"retry-after": "30"})]
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        status, _, _ = await post(self, a.url + CHAT, body)
        self.assertEqual(status, 200)
        learnt = time.monotonic()
        pool = b.service.app.runtime.upstreams.pools["openai"]
        key = pool.keys[0]
        while pool.available(key) and time.monotonic() - learnt < 2:
            await deferLater(reactor, 0.01)
        self.assertLess(time.monotonic() - learnt, 0.3)
        for _ in range(4):
            status, _, _ = await post(self, b.url + CHAT, body)
            self.assertEqual(status, 200)
        self.assertEqual({r.headers["authorization"] for r in b.fake.requests},
                         {"Bearer sk-b"})

    async def test_the_service_expires_the_shared_store(self) -> None:
        clock = Clock()
        clock.advance(1_700_000_000)
        a, _ = await self.proxies(clock, responses_store={"max_age": 60})
        status, _, content = await post(self, a.url + "/v1/responses",
                                        {"model": "gpt-4o", "input": "hi"})
        self.assertEqual(status, 200)
        with closing(sqlite3.connect(self.path)) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0], 1)
        clock.advance(61)
        await a.service._expire()
        with closing(sqlite3.connect(self.path)) as db:
            self.assertEqual(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0], 0)

    async def test_status_shows_the_file(self) -> None:
        a, _ = await self.proxies()
        response = await client(self).get(a.url + "/v1/llmproxy/status")
        state = json.loads(await response.content())["state"]
        self.assertEqual((state["kind"], state["up"]), ("sqlite", True))


class SharedAccountWindowsTests(TestCase):
    async def test_an_accounts_windows_reach_the_other_process(self) -> None:
        fake, port, base_url = await listen_chatgpt(reactor)
        self.addCleanup(port.stopListening)
        home = Path(self.mktemp())
        files = []
        for n in (1, 2):
            fake.accept(f"tok-{n}", f"acct-{n}")
            files.append(write_auth_file(home / f"acct{n}" / "auth.json",
                                         auth_data(f"tok-{n}", exp=4_000_000_000,
                                                   account_id=f"acct-{n}")))
        fake.used.update({"tok-1": 90.0, "tok-2": 20.0})
        url = f"sqlite://{os.path.abspath(self.mktemp())}"
        backend = {"type": "openai-codex", "base_url": base_url,
                   "accounts": [str(f) for f in files]}

        def config(upstream: str) -> dict[str, Any]:
            return config_data({"chatgpt": backend}, state={"url": url, "poll": 0.05})

        a, b = await start(self, config), await start(self, config)
        for proxy in (a, b):
            proxy.service.state.startService()
            self.addCleanup(proxy.service.state.stopService)
            assert proxy.service.sync is not None
            proxy.service.sync.start()
            self.addCleanup(proxy.service.sync.stop)
        status, _, _ = await post(self, a.url + "/v1/responses",
                                  {"model": "gpt-5", "input": "hi"})
        self.assertEqual(status, 200)
        there = b.service.app.runtime.upstreams.backends["chatgpt"]
        assert isinstance(there, CodexBackend)
        learnt = time.monotonic()
        while not there.states["chatgpt#1"].windows and time.monotonic() - learnt < 2:
            await deferLater(reactor, 0.01)
        self.assertLess(time.monotonic() - learnt, 0.3)
        self.assertEqual(there.states["chatgpt#1"].windows["primary"].used_percent, 90.0)
        self.assertEqual(there.key_preference(there.config.keys[0]), 10.0)


class WriteLocked(MemoryState):
    """
    Reads answer; writes do not (another process holds the write lock).
    """

    async def update_session(self, key: str, change: Any, bounds: Bounds) -> Any:
        raise StateUnavailable()


class AnswersOutlastTheStoreTests(SynchronousTestCase):
    """
    An answer that came never fails for a conversation state that could
    not be written after it.
    """

    def proxy(self, **session: Any) -> MemoryProxy:
        p = MemoryProxy(lambda u: openai_config(u, **session))
        app = p.service.app
        app.runtime = replace(app.runtime, sessions=StoreSessions(
            WriteLocked(p.clock), Bounds(10, 60)))
        return p

    def test_an_edit_failure_answer(self) -> None:
        p = self.proxy()
        text = "The SEARCH block does not match; I will re-read the file."
        p.fake.script.append(Reply(200, chat_completion("gpt-4o", text)))
        answer = p.post(CHAT, {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "edit app.py"}]}, {"session_id": "s-1"})
        self.assertEqual(answer.status, 200)
        self.assertIn(text, json.loads(answer.content)["choices"][0]["message"]["content"])

    def test_a_planning_turn(self) -> None:
        p = self.proxy(session=planning())
        answer = p.post(CHAT, {"model": "gpt-4o", "messages": [
            {"role": "user", "content": "plan"}]}, {"session_id": "s-2"})
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.flushLoggedErrors(), [])


class Retrying(MemoryState):
    """
    A store whose update runs the change twice, as an optimistic one does
    when another process wrote meanwhile: here, another process took the
    conversation's one-shot flag between the two runs.
    """

    async def get_session(self, key: str, bounds: Bounds) -> Any:
        return SessionState(tune_next=True, tune_reason="cline search-block")

    async def update_session(self, key: str, change: Any, bounds: Bounds) -> Any:
        change(SessionState(tune_next=True, tune_reason="cline search-block"))
        return change(SessionState())


class RetriedChangesTests(SynchronousTestCase):
    def test_a_flag_taken_elsewhere_meanwhile_is_not_taken_twice(self) -> None:
        p = MemoryProxy()
        app = p.service.app
        app.runtime = replace(app.runtime, sessions=StoreSessions(
            Retrying(p.clock), Bounds(10, 60)))
        answer = p.post(CHAT, {"model": "gpt-4o", "temperature": 0.9, "messages": [
            {"role": "user", "content": "go on"}]}, {"session_id": "s-1"})
        self.assertEqual(answer.status, 200)
        self.assertNotIn("x-llmproxy-tuned", answer.headers)
        self.assertEqual(p.fake.requests[-1].body["temperature"], 0.9)
