# -*- test-case-name: tests.test_state_sqlite -*-
"""
The SQLite store: the processes of one host share a file (standard
library C{sqlite3}, WAL mode).

Every read and write runs on this store's own thread
(L{llmproxy.state.sqlite_db.Database}), never the reactor's, and a request
waits for one at most C{timeout} seconds (then L{StateUnavailable}).
Other processes' facts are read from the file's log every C{poll} seconds
(a L{TimerService}), on that same thread.

Down (the file cannot be opened, read or written): the outage is logged
once and shown in L{status}; facts published meanwhile wait (the latest
of each identity); the first poll that succeeds again writes them and
hands the subscribers every current fact (a re-sync).
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from typing import Any, Callable, TypeVar

from twisted.application.internet import TimerService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, TimeoutError
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from llmproxy.state.base import (
    SQLITE, Bounds, Change, Fact, FactCallback, SessionState, StateUnavailable, StoredResponse,
    StoreStatus, Subscribers,
)
from llmproxy.state.sqlite_db import Database

_T = TypeVar("_T")


class SQLiteState(Service):
    """
    L{llmproxy.state.base.StateStore} in a SQLite file.
    """

    kind = SQLITE
    log = Logger()

    def __init__(
        self, path: str, reactor: IReactorFromThreads, clock: IReactorTime, *,
        timeout: float = 2.0, poll: float = 0.1, timer: IReactorTime | None = None,
    ) -> None:
        """
        @param reactor: runs the thread's results in the reactor thread.
        @param clock: timestamps and the poll's timer.
        @param timer: the bounded wait's timer (C{clock} unless given: a
            test that moves a L{Clock} under calls in flight gives the
            reactor).
        """
        self.path = path
        self.reactor = reactor
        self.clock = clock
        self.timer = timer or clock
        self.timeout = timeout
        self.origin = uuid.uuid4().hex
        # SQLite gives up waiting for a lock first, so the error says why.
        self.db = Database(path, busy_timeout=timeout * 0.8)
        self.pool = ThreadPool(1, 1, name="llmproxy-state")
        self._subscribers = Subscribers()
        self._pending: dict[tuple[str, str, str], Fact] = {}
        self._status = StoreStatus(SQLITE, path, True, clock.seconds())
        self._seq = 0
        self._resync = False
        self._polling = DeferredLock()
        self._poller = TimerService(poll, self.poll)
        self._poller.clock = clock

    # the service

    def startService(self) -> None:
        super().startService()
        self.pool.start()
        self._poller.startService()

    def stopService(self) -> Deferred[None] | None:
        if not self.running:  # built, never started
            return None
        super().stopService()
        stopped = self._poller.stopService()
        self.pool.callInThread(self.db.close)
        self.pool.stop()
        return stopped

    # one operation on the thread, within the bounded wait

    async def _run(self, work: Callable[..., _T], *args: Any) -> _T:
        call = deferToThreadPool(self.reactor, self.pool, work, *args)
        call.addTimeout(self.timeout, self.timer)
        try:
            result = await call
        except CancelledError:
            raise
        except TimeoutError:
            self._down(f"no answer within {self.timeout:g}s")
            raise StateUnavailable()
        except sqlite3.Error as e:
            self._down(str(e))
            raise StateUnavailable()
        self._up()
        return result

    def _down(self, error: str) -> None:
        if self._status.up:
            self.log.warn("state store {where} unavailable ({error}): serving from this "
                          "process's state until it is back", where=self.path, error=error)
            self._status = StoreStatus(SQLITE, self.path, False, self.clock.seconds(), error)
            self._resync = True
        else:
            self._status = replace(self._status, last_error=error)

    def _up(self) -> None:
        if not self._status.up:
            self.log.info("state store {where} is back", where=self.path)
            self._status = StoreStatus(SQLITE, self.path, True, self.clock.seconds(),
                                       self._status.last_error)

    def status(self) -> StoreStatus:
        return self._status

    # responses

    async def get_response(self, response_id: str, bounds: Bounds) -> StoredResponse | None:
        body = await self._run(self.db.get_response, response_id, self.clock.seconds(),
                               bounds.max_age)
        return None if body is None else StoredResponse.from_json(body)

    async def put_response(self, response_id: str, record: StoredResponse,
                           bounds: Bounds) -> None:
        await self._run(self.db.put_response, response_id, record.created, record.to_json(),
                        bounds.max_items)

    # conversations

    async def get_session(self, key: str, bounds: Bounds) -> SessionState:
        return await self._run(self.db.get_session, key, self.clock.seconds(), bounds.max_age)

    async def update_session(self, key: str, change: Change, bounds: Bounds) -> SessionState:
        return await self._run(self.db.update_session, key, change, self.clock.seconds(),
                               bounds)

    async def expire(self, responses: Bounds, sessions: Bounds) -> None:
        try:
            await self._run(self.db.expire, self.clock.seconds(), responses, sessions)
        except StateUnavailable:
            pass  # shown in the status; the next round tries again

    # facts

    def publish(self, fact: Fact) -> None:
        Deferred.fromCoroutine(self._publish(replace(fact, origin=self.origin)))

    async def _publish(self, fact: Fact) -> None:
        try:
            await self._run(self.db.write_fact, fact, self.clock.seconds())
        except StateUnavailable:
            self._pending[fact.identity] = fact
        else:
            self._pending.pop(fact.identity, None)

    async def facts(self) -> list[Fact]:
        return await self._run(self.db.current_facts, self.clock.seconds())

    def subscribe(self, callback: FactCallback) -> Callable[[], None]:
        return self._subscribers.add(callback)

    def _tell(self, facts: list[Fact]) -> None:
        for fact in facts:
            self._subscribers.tell(fact)

    async def poll(self) -> None:
        """
        Hear the facts others logged since the last poll (the first poll
        hears the whole log, as kept (L{llmproxy.state.sqlite_db.LOG_KEPT})); after an
        outage, write the facts that waited and hand on every current fact.
        """
        await self._polling.acquire()
        try:
            last, facts = await self._run(self.db.facts_after, self._seq, self.origin)
            self._seq = last
            self._tell(facts)
            if self._resync:
                await self._catch_up()
        except CancelledError:
            raise
        except StateUnavailable:
            return
        except Exception:  # the next poll must still come
            self.log.failure("reading the facts of other processes")
        finally:
            self._polling.release()

    async def _catch_up(self) -> None:
        for identity, fact in list(self._pending.items()):
            await self._run(self.db.write_fact, fact, self.clock.seconds())
            if self._pending.get(identity) is fact:
                del self._pending[identity]
        self._resync = False
        self._tell([f for f in await self.facts() if f.origin != self.origin])


__all__ = ["SQLiteState"]
