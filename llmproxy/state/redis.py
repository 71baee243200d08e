# -*- test-case-name: tests.test_state_redis,tests.test_state_redis_e2e -*-
"""
Shared state in Redis (C{state: redis://host:port/db}), for llmproxy
processes on several hosts.

Layout (every name under C{llmproxy:}):

  - C{response:<id>}: a L{StoredResponse} as JSON, expiring after the age
    bound; C{responses}, a sorted set of the ids by write time, keeps the
    count bound (the oldest go, in the same script that writes);
  - C{session:<key>}: a L{SessionState} as JSON, expiring after the idle
    bound, and C{sessions} likewise; an update is a compare-and-set script
    (the new state is written only if the stored one is still the one the
    change was computed from), retried on a conflict;
  - C{facts}: a hash of the current L{Fact}s, one per identity, so a
    process catches up on start and after an outage, and the C{facts}
    channel on which each one is published as it is written.

Ages are judged by the store's clock against the timestamps in the
records; Redis's own expiry only reclaims the space.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime

from llmproxy.config.error import ConfigError
from llmproxy.config.state import StateConfig
from llmproxy.state.base import (
    REDIS, Bounds, Change, Fact, FactCallback, SessionState, StateUnavailable, StoredResponse,
    StoreStatus, Subscribers,
)
from llmproxy.state.redis_link import RedisAddress, RedisLink, parse_redis_url

PREFIX = "llmproxy:"
RESPONSES, SESSIONS = PREFIX + "responses", PREFIX + "sessions"
FACTS = CHANNEL = PREFIX + "facts"
#: How many times a conversation update is tried against concurrent ones.
UPDATE_TRIES = 100
#: Facts waiting for the server beyond this many keep only the latest of
#: each identity (in order otherwise: a circuit opened then closed is heard
#: as both).
OUTBOX = 1000

#: KEYS: record, index; ARGV: id, JSON, score, ttl (ms), max_items, the
#: records' key prefix.  Writes the record and drops the oldest beyond
#: max_items.
_PUT = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('DEL', ARGV[6] .. old)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return 1
"""

#: L{_PUT}, only if the record is still ARGV[7] ('' for none): 1 when
#: written, 0 when another process changed it meanwhile.
_SWAP = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[7] then return 0 end
""" + _PUT

#: KEYS: facts hash, channel; ARGV: identity, JSON, identity, JSON, ...
_PUBLISH = """
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('PUBLISH', KEYS[2], ARGV[i + 1])
end
return 1
"""

#: L{_PUBLISH} for facts the server may have lost (restarted without
#: persistence): each written and published only where its identity is
#: missing, so nothing newer is overwritten.
_RESTORE = """
for i = 1, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('PUBLISH', KEYS[2], ARGV[i + 1])
  end
end
return 1
"""

#: KEYS: index; ARGV: key prefix, oldest score kept, max_items.  Drops the
#: records older than that or beyond the count.
_TRIM = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local extra = redis.call('ZCARD', KEYS[1]) - #gone - tonumber(ARGV[3])
if extra > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #gone, #gone + extra - 1)) do
    table.insert(gone, id)
  end
end
for _, id in ipairs(gone) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #gone
"""


def _identity(fact: Fact) -> str:
    return "\x1f".join(fact.identity)


def _ttl(bounds: Bounds) -> int:
    return max(1, int(bounds.max_age * 1000))


class RedisState(Service):
    """
    L{llmproxy.state.base.StateStore} on a Redis server.

    Facts published while the server is away wait (in order; only the
    latest of each identity beyond L{OUTBOX}) and go when it is back; then
    the current facts are read again and handed to the subscribers, who may
    have missed some, and this process's current facts are written again
    where the server lacks them (it may have restarted empty).  Until the
    first connection is made or fails, the status says up.
    """

    kind = REDIS

    def __init__(
        self, address: RedisAddress, reactor: Any, clock: IReactorTime, timeout: float = 2.0,
        max_delay: float = 2.0,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.clock = clock
        self.timeout = timeout
        self.max_delay = max_delay
        self.origin = uuid.uuid4().hex
        self._link: RedisLink | None = None
        self._subscribers = Subscribers()
        self._outbox: list[Fact] = []
        self._sending: Deferred[None] | None = None
        self._catching: Deferred[None] | None = None
        self._heard: dict[tuple[str, str, str], Fact] = {}
        self._mine: dict[tuple[str, str, str], Fact] = {}
        self._restoring = False

    @property
    def link(self) -> RedisLink:
        if self._link is None:
            raise StateUnavailable()
        return self._link

    def startService(self) -> None:
        super().startService()
        self._link = RedisLink(
            self.address, self.reactor, self.clock, (CHANNEL,), self._message, self._back,
            timeout=self.timeout, max_delay=self.max_delay)

    async def _stop(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.disconnect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    # responses

    async def get_response(self, response_id: str, bounds: Bounds) -> StoredResponse | None:
        text = await self.link.call("get", f"{PREFIX}response:{response_id}")
        if text is None:
            return None
        record = StoredResponse.from_json(text)
        if self.clock.seconds() - record.created > bounds.max_age:
            return None
        return record

    async def put_response(self, response_id: str, record: StoredResponse,
                           bounds: Bounds) -> None:
        if bounds.max_items <= 0:
            return
        await self.link.call(
            "eval", _PUT, keys=[f"{PREFIX}response:{response_id}", RESPONSES],
            args=[response_id, record.to_json(), repr(record.created), _ttl(bounds),
                  bounds.max_items, f"{PREFIX}response:"])

    # conversations

    async def get_session(self, key: str, bounds: Bounds) -> SessionState:
        return self._fresh(await self.link.call("get", f"{PREFIX}session:{key}"), bounds)

    def _fresh(self, text: str | None, bounds: Bounds) -> SessionState:
        state = SessionState() if text is None else SessionState.from_json(text)
        if self.clock.seconds() - state.last_seen > bounds.max_age:
            return SessionState()
        return state

    async def update_session(self, key: str, change: Change, bounds: Bounds) -> SessionState:
        record = f"{PREFIX}session:{key}"
        for _ in range(UPDATE_TRIES):
            text = await self.link.call("get", record)
            now = self.clock.seconds()
            new = replace(change(self._fresh(text, bounds)), last_seen=now)
            written = await self.link.call(
                "eval", _SWAP, keys=[record, SESSIONS],
                args=[key, new.to_json(), repr(now), _ttl(bounds), max(bounds.max_items, 0),
                      f"{PREFIX}session:", text or ""])
            if written == 1:
                return new
        raise StateUnavailable("The conversation's state is too busy to update; try again.")

    async def expire(self, responses: Bounds, sessions: Bounds) -> None:
        now = self.clock.seconds()
        try:
            for index, kind, bounds in ((RESPONSES, "response", responses),
                                        (SESSIONS, "session", sessions)):
                await self.link.call("eval", _TRIM, keys=[index], args=[
                    f"{PREFIX}{kind}:", repr(now - bounds.max_age), max(bounds.max_items, 0)])
            stale = [field for field, text in (await self.link.call("hgetall", FACTS)).items()
                     if getattr(_parse(text), "until", 0.0) <= now]
            if stale:
                await self.link.call("hdel", FACTS, stale)
        except CancelledError:
            raise
        except StateUnavailable:
            pass  # the link has said so
        for known in (self._heard, self._mine):
            for identity, fact in list(known.items()):
                if fact.until <= now:
                    del known[identity]

    # facts

    def publish(self, fact: Fact) -> None:
        fact = replace(fact, origin=self.origin)
        self._mine[fact.identity] = fact
        self._outbox.append(fact)
        if self._link is None or not self._link.available:
            if len(self._outbox) > OUTBOX:
                self._outbox = _latest(self._outbox)
        elif not _busy(self._sending):
            self._sending = Deferred.fromCoroutine(self._send())

    async def _send(self) -> None:
        """
        Write and publish the waiting facts, in order, one batch at a time;
        on a failure keep the latest of each identity for later.  Then
        write again this process's current facts the server lacks.
        """
        while self._outbox and self._link is not None:
            batch, self._outbox = self._outbox, []
            try:
                await self._link.call("eval", _PUBLISH, keys=[FACTS, CHANNEL], args=_args(batch))
            except CancelledError:
                raise
            except StateUnavailable:
                self._outbox = _latest(batch + self._outbox)
                return
        now = self.clock.seconds()
        current = [fact for fact in self._mine.values() if fact.until > now]
        if self._restoring and current and self._link is not None:
            self._restoring = False
            try:
                await self._link.call("eval", _RESTORE, keys=[FACTS, CHANNEL],
                                      args=_args(current))
            except CancelledError:
                raise
            except StateUnavailable:
                self._restoring = True

    async def facts(self) -> list[Fact]:
        now = self.clock.seconds()
        found = map(_parse, (await self.link.call("hgetall", FACTS)).values())
        return [fact for fact in found if fact is not None and fact.until > now]

    def subscribe(self, callback: FactCallback) -> Callable[[], None]:
        return self._subscribers.add(callback)

    def _message(self, channel: str, text: str) -> None:
        fact = _parse(text)
        if fact is not None:
            self._deliver([fact])

    def _deliver(self, facts: Iterable[Fact]) -> None:
        """
        Hand the others' facts to the subscribers, each once (a fact heard
        both live and in a catch-up read is the same fact).
        """
        for fact in facts:
            if fact.origin == self.origin or self._heard.get(fact.identity) == fact:
                continue
            self._heard[fact.identity] = fact
            self._subscribers.tell(fact)

    def _back(self) -> None:
        """
        The server is (again) reachable: send what waited, read what was
        missed.
        """
        self._restoring = True
        if not _busy(self._sending):
            self._sending = Deferred.fromCoroutine(self._send())
        if not _busy(self._catching):
            self._catching = Deferred.fromCoroutine(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            facts = await self.facts()
        except CancelledError:
            raise
        except StateUnavailable:
            return  # gone again; the next return catches up
        self._deliver(facts)

    async def settled(self) -> None:
        """
        Return once the facts published here have been sent and every fact
        published on the server before now has been heard here (a marker
        sent round the channel).  For tests.
        """
        for busy in (self._sending, self._catching):
            if busy is not None:
                await busy
        marker = "marker:" + uuid.uuid4().hex
        heard: Deferred[None] = Deferred()
        link = self.link
        previous = link.on_message

        def watch(channel: str, text: str) -> None:
            previous(channel, text)
            if text == marker and not heard.called:
                heard.callback(None)

        link.on_message = watch
        try:
            await link.call("publish", CHANNEL, marker)
            await heard.addTimeout(self.timeout, self.clock)
        finally:
            link.on_message = previous

    def status(self) -> StoreStatus:
        link = self._link
        if link is None:
            return StoreStatus(REDIS, self.address.display, False, self.clock.seconds(),
                               "not started")
        if link.error == "connecting":
            return StoreStatus(REDIS, self.address.display, True, link.since)
        return StoreStatus(REDIS, self.address.display, link.available, link.since, link.error)


def open_redis(config: StateConfig, reactor: Any, clock: IReactorTime) -> RedisState:
    """
    The store C{state: redis://...} names (its password already read, from
    the URL or C{REDIS_PASSWORD}).

    @raise ConfigError: the URL says more than this store understands.
    """
    try:
        address = parse_redis_url(config.url, {})
    except ValueError as e:
        raise ConfigError(f"state: {e}") from None
    address = replace(address, password=config.password)
    return RedisState(address, reactor, clock, timeout=config.timeout)


def _parse(text: str) -> Fact | None:
    """
    The fact C{text} holds; L{None} for anything else (a marker, or what a
    later version wrote that this one cannot read).
    """
    try:
        return Fact.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _args(facts: Iterable[Fact]) -> list[str]:
    return [part for fact in facts for part in (_identity(fact), fact.to_json())]


def _busy(work: Deferred[None] | None) -> bool:
    return work is not None and not work.called


def _latest(facts: list[Fact]) -> list[Fact]:
    """
    The last fact of each identity, in the order they were last published.
    """
    latest = {fact.identity: fact for fact in facts}
    return [fact for fact in facts if latest[fact.identity] is fact]


__all__ = ["RedisState", "open_redis"]
