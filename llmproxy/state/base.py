# -*- test-case-name: tests.test_state_contract -*-
"""
The shared-state interface: what one llmproxy process keeps that the
others serving the same clients must see.

Three kinds of state, three ways of sharing:

  - B{records read when a request needs them}: the Responses store
    (L{StateStore.get_response}, L{StateStore.put_response}) and
    per-conversation state (L{StateStore.get_session},
    L{StateStore.update_session}); a request awaits them, within the
    store's bounded wait, else L{StateUnavailable} (a 503);
  - B{facts} (L{Fact}) a process learns about the upstreams (a key cooled
    until T, a circuit opened, an account's quota windows): the hot path
    keeps reading its own memory; a process I{publishes} what it learns and
    I{subscribes} to what the others learn, and applies it locally;
  - B{status} (L{StoreStatus}): which store, whether it answers, since
    when, the last error.

A store is a Twisted service (started and stopped with the proxy).  Its
methods are called in the reactor thread only; an implementation does its
I/O off that thread (SQLite) or asynchronously (Redis).

Keys and tokens never reach a store: key state is keyed by key I{name}.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger

from llmproxy.errors import ProxyError

#: The store kinds (L{StoreStatus.kind}, C{state:}'s URL scheme).
MEMORY, SQLITE, REDIS = "memory", "sqlite", "redis"

#: Fact kinds (L{Fact.kind}).
#: A key cooled: C{subject} is the key's name, C{until} its deadline,
#: C{reason} C{rate_limited}, C{invalid} or C{quota}; C{detail["error"]}
#: the safe description the status shows.
KEY_COOLED = "key"
#: A circuit of (backend, model) opened or closed: C{subject} is the
#: model, C{until} when its first probe may go (0: closed), C{reason}
#: C{open} or C{closed}; C{detail["opened_at"]} when it opened.
CIRCUIT = "circuit"
#: A subscription account's usage windows: C{subject} is the key's name,
#: C{until} the latest reset; C{detail["windows"]} maps C{primary} /
#: C{secondary} to C{used_percent}, C{window_minutes}, C{resets_at}.
ACCOUNT = "account"


@dataclass(frozen=True)
class Bounds:
    """
    How much of one kind of record a store keeps: at most C{max_items},
    each for C{max_age} seconds (since written for responses, since last
    updated for conversations).  Passed with each call, so a new
    configuration applies at once.
    """

    max_items: int
    max_age: float


@dataclass(frozen=True)
class SessionState:
    """
    What llmproxy remembers of one conversation.

    @ivar turns: answered requests so far.
    @ivar writes: file-writing tool calls in those answers.
    @ivar planning_over: the planning phase ended (a limit was reached).
    @ivar tune_next: the next request gets edit-precision tuning (a
        response or tool result showed an edit failure).
    @ivar tune_reason: the failure pattern that set C{tune_next}.
    @ivar last_seen: when it was last updated (POSIX seconds).
    @ivar hybrid_turns: requests it sent through a hybrid route (their
        first turns always get the reasoning phase).
    """

    turns: int = 0
    writes: int = 0
    planning_over: bool = False
    tune_next: bool = False
    last_seen: float = 0.0
    tune_reason: str = ""
    hybrid_turns: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionState:
        """
        The state written by L{to_json}; fields this version does not know
        (a newer process wrote them) are ignored.
        """
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: A change to a conversation's state (a pure function of the old state;
#: a store may call it more than once, on a fresher state each time).
Change = Callable[[SessionState], SessionState]


@dataclass(frozen=True)
class StoredResponse:
    """
    One Responses-API response as C{previous_response_id} needs it.

    @ivar messages: the whole conversation up to and including the
        response, as Chat Completions messages (JSON values).
    @ivar root: the id of the first response of its chain.
    @ivar created: when it was stored (POSIX seconds).
    """

    messages: tuple[Mapping[str, Any], ...]
    root: str
    created: float

    def to_json(self) -> str:
        return json.dumps({"messages": list(self.messages), "root": self.root,
                           "created": self.created}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredResponse:
        data = json.loads(text)
        return cls(tuple(data["messages"]), data["root"], float(data["created"]))


@dataclass(frozen=True)
class Fact:
    """
    Something one process learnt about an upstream that every process
    should apply.  Its identity is (C{kind}, C{backend}, C{subject}): a
    later fact of the same identity replaces the earlier one.  It holds
    until C{until} (POSIX seconds); a fact whose C{until} has passed is no
    longer current (a closed circuit's is 0).

    @ivar detail: JSON values, per kind (see the kind constants).
    @ivar origin: the publishing store's L{StateStore.origin}; set by
        L{StateStore.publish}.
    """

    kind: str
    backend: str
    subject: str
    until: float
    reason: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    origin: str = ""

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.kind, self.backend, self.subject)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "backend": self.backend,
                           "subject": self.subject, "until": self.until,
                           "reason": self.reason, "detail": dict(self.detail),
                           "origin": self.origin}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Fact:
        data = json.loads(text)
        return cls(data["kind"], data["backend"], data["subject"], float(data["until"]),
                   data.get("reason", ""), data.get("detail") or {}, data.get("origin", ""))


@dataclass(frozen=True)
class StoreStatus:
    """
    A store's health, for C{/v1/llmproxy/status}.

    @ivar kind: C{memory}, C{sqlite} or C{redis}.
    @ivar where: the file or C{host:port/db} (never a password).
    @ivar up: whether its last operation succeeded.
    @ivar since: when C{up} last changed (POSIX seconds).
    @ivar last_error: the last failure, safe to show; L{None} if none.
    """

    kind: str
    where: str
    up: bool
    since: float
    last_error: str | None = None

    def shown(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "up": self.up,
                "since": self.since, "last_error": self.last_error}


class StateUnavailable(ProxyError):
    """
    A request needs stored state the store cannot give within its bounded
    wait (HTTP 503, C{state_store_unavailable}).
    """

    status = 503
    type = "server_error"

    def __init__(self, message: str = "The shared state store is unavailable; try again "
                 "shortly.") -> None:
        super().__init__(message, code="state_store_unavailable",
                         headers={"retry-after": "1"})


#: Receives another process's fact, in the reactor thread.
FactCallback = Callable[[Fact], None]


class Subscribers:
    """
    The callbacks a store hands the other processes' facts to.  One that
    fails is logged and never keeps the fact from the others.
    """

    log = Logger()

    def __init__(self) -> None:
        self._callbacks: list[FactCallback] = []

    def add(self, callback: FactCallback) -> Callable[[], None]:
        """
        Hand facts to C{callback} from now on, until the returned function
        is called.
        """
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return unsubscribe

    def tell(self, fact: Fact) -> None:
        for callback in list(self._callbacks):
            try:
                callback(fact)
            except CancelledError:
                raise
            except Exception:
                self.log.failure("applying a fact of another process")


class StateStore(Protocol):
    """
    Where shared state lives.  Every method is called in the reactor
    thread.  C{get_*}, C{put_response}, C{update_session} raise
    L{StateUnavailable} when the store does not answer within its bounded
    wait; L{publish} never raises (see there).

    @ivar kind: C{memory}, C{sqlite} or C{redis}.
    @ivar origin: this instance's id, unique across processes; facts it
        publishes carry it, and it is never handed its own facts.
    """

    kind: str
    origin: str

    # Responses-API records (immutable once written)

    async def get_response(self, response_id: str, bounds: Bounds) -> StoredResponse | None:
        """
        The response stored as C{response_id}; L{None} when unknown, or
        older than C{bounds.max_age}.
        """

    async def put_response(self, response_id: str, record: StoredResponse,
                           bounds: Bounds) -> None:
        """
        Store C{record}; beyond C{bounds.max_items} responses the oldest
        go (C{max_items} 0: nothing is stored).
        """

    # conversation state

    async def get_session(self, key: str, bounds: Bounds) -> SessionState:
        """
        The state of conversation C{key}; a fresh L{SessionState} when
        unknown, or idle longer than C{bounds.max_age}.
        """

    async def update_session(self, key: str, change: Change, bounds: Bounds) -> SessionState:
        """
        Apply C{change} to C{key}'s state atomically across every process
        sharing the store (no other update of C{key} interleaves; C{change}
        may run more than once), stamp C{last_seen} with the store's clock,
        and return the new state.  Beyond C{bounds.max_items}
        conversations the least recently updated go.
        """

    async def expire(self, responses: Bounds, sessions: Bounds) -> None:
        """
        Forget the responses and conversations beyond their bounds (called
        periodically; failures are the store's to log, not raised).
        """

    # facts

    def publish(self, fact: Fact) -> None:
        """
        Tell the other processes C{fact} (stamped with L{origin}), without
        waiting.  Never raises: while the store is down, the latest fact
        of each identity waits, and goes when the store is back.
        """

    async def facts(self) -> list[Fact]:
        """
        The current facts (C{until} not passed), every origin's, latest per
        identity.

        @raise StateUnavailable: the store does not answer.
        """

    def subscribe(self, callback: FactCallback) -> Callable[[], None]:
        """
        Call C{callback} (in the reactor thread) with every fact another
        instance publishes, within about a quarter of a second; and, when
        the store comes back after an outage, with every current fact
        (appliers must be idempotent).

        @return: a call that unsubscribes.
        """

    def status(self) -> StoreStatus:
        """
        The store's health now.
        """

    # a service: started and stopped with the proxy

    def startService(self) -> None: ...

    def stopService(self) -> Deferred[None] | None: ...


__all__ = ["ACCOUNT", "Bounds", "CIRCUIT", "Change", "Fact", "FactCallback", "KEY_COOLED",
           "MEMORY", "REDIS", "SQLITE", "SessionState", "StateStore", "StateUnavailable",
           "StoreStatus", "Subscribers", "StoredResponse"]
