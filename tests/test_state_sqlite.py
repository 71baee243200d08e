"""
The SQLite store (L{llmproxy.state.sqlite.SQLiteState}): the shared-state
contract on a real file, two stores standing for two processes; its
outage is the file replaced by something SQLite cannot open.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import closing
from dataclasses import replace
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from llmproxy.state import Fact, SessionState, StateStore, StateUnavailable
from llmproxy.state.sqlite import SQLiteState
from tests.state_contract import RESPONSES, SESSIONS, OutageContract, cooled


class SQLiteContractTests(OutageContract, TestCase):
    def make_store(self, clock: IReactorTime) -> StateStore:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        return self._started(os.path.join(self.folder, "state.db"), clock)

    def make_peer(self, store: StateStore, clock: IReactorTime) -> StateStore:
        assert isinstance(store, SQLiteState)
        return self._started(store.path, clock)

    def _started(self, path: str, clock: IReactorTime) -> SQLiteState:
        store = SQLiteState(path, IReactorFromThreads(reactor), clock, timeout=0.5,
                            timer=cast(IReactorTime, reactor))
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def settle(self, store: StateStore) -> None:
        assert isinstance(store, SQLiteState)
        await store.poll()

    async def break_store(self, store: StateStore) -> None:
        # This store's file becomes one SQLite cannot open (a folder); the
        # peer keeps the real one.
        assert isinstance(store, SQLiteState)
        broken = os.path.join(self.folder, "broken", "state.db")
        os.makedirs(broken)
        self.real, store.db.path = store.db.path, broken

    async def mend_store(self, store: StateStore) -> None:
        assert isinstance(store, SQLiteState)
        store.db.path = self.real


class SQLiteStoreTests(TestCase):
    def store(self, timeout: float = 0.3) -> SQLiteState:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        store = SQLiteState(os.path.join(folder, "state.db"), IReactorFromThreads(reactor),
                            cast(IReactorTime, reactor), timeout=timeout)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    async def test_wal_mode_on_its_own_thread(self) -> None:
        store = self.store()
        where: list[threading.Thread] = []
        get = store.db.get_session

        def spy(*args: Any) -> SessionState:
            where.append(threading.current_thread())
            return get(*args)

        store.db.get_session = spy  # type: ignore[method-assign]
        await store.get_session("c", SESSIONS)
        self.assertEqual(len(where), 1)
        self.assertIsNot(where[0], threading.main_thread())
        with closing(sqlite3.connect(store.path)) as db:
            self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    async def test_a_locked_file_is_a_quick_503(self) -> None:
        store = self.store(timeout=0.3)
        await store.get_session("c", SESSIONS)
        holder = sqlite3.connect(store.path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with self.assertRaises(StateUnavailable) as e:
            await store.update_session("c", lambda s: s, SESSIONS)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual((e.exception.status, e.exception.code), (503, "state_store_unavailable"))
        self.assertFalse(store.status().up)
        self.assertEqual(store.status().last_error, "database is locked")
        self.assertEqual((await store.get_session("c", SESSIONS)).turns, 0)  # reads go on
        holder.execute("ROLLBACK")
        await store.update_session("c", lambda s: replace(s, turns=1), SESSIONS)
        self.assertTrue(store.status().up)

    async def test_the_outage_is_logged_once(self) -> None:
        store = self.store()
        logged: list[dict[str, Any]] = []
        store.log = Logger(observer=logged.append)  # type: ignore[misc]
        broken = os.path.join(os.path.dirname(store.path), "broken")
        os.makedirs(broken)
        real, store.db.path = store.db.path, broken
        for _ in range(3):
            with self.assertRaises(StateUnavailable):
                await store.get_response("r", RESPONSES)
        self.assertEqual([e["log_format"][:20] for e in logged], ["state store {where} "])
        store.db.path = real
        await store.poll()
        self.assertEqual(len(logged), 2)
        self.assertTrue(store.status().up)

    async def test_an_unreadable_fact_is_passed_over(self) -> None:
        store = self.store()
        heard: list[Fact] = []
        store.subscribe(heard.append)
        await store.poll()
        with closing(sqlite3.connect(store.path)) as db:
            db.execute("INSERT INTO fact_log (at, origin, body) VALUES (0, 'x', ?)",
                       ('{"new": 1}',))
            db.execute("INSERT INTO fact_log (at, origin, body) VALUES (0, 'x', ?)",
                       (cooled().to_json(),))
            db.commit()
        await store.poll()
        self.assertEqual([f.subject for f in heard], ["openai#1"])
