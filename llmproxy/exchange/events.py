# -*- test-case-name: tests.test_events -*-
"""
The exchange's events: one per upstream attempt and one per reply, as
structured L{twisted.logger} events on an L{ExchangeEvents} publisher.

They are an API: the access log is an observer of the reply events, and
metrics and wire capture will be others.  The event keys below are stable;
observers read them, never the text the formats produce.  Nothing is
computed for an event while nobody observes (L{ExchangeEvents.observed}),
and nothing is formatted unless an observer formats.  The events do not go
to the process's main log; to see them there, add C{globalLogPublisher} as
an observer.

Attempt events, namespace L{ATTEMPT_NAMESPACE}, format L{ATTEMPT_FORMAT},
level info, one when each attempt is over:

  - C{attempt}: the attempt's number within its request, from 1.
  - C{backend}, C{model}: the route element tried (bare upstream model).
  - C{key}: the name of the key used (C{openai#2}); L{None} for a keyless
    backend.  Never a key's value.
  - C{outcome}: one of L{OUTCOMES}: C{ok} (answered and relayed);
    C{client_error} (the upstream's non-2xx answer went to the client as
    is); C{retry_next}, C{next_element}, C{next_key}, C{rate_limited},
    C{quota} (the upstream's status made the request fail over, see
    L{llmproxy.exchange.outcome.Outcome}); C{timeout}, C{unreachable} (no
    answer); C{broken} (the answer's body failed: before its first event
    the request fails over, after it the client gets an in-band error);
    C{cancelled} (the client left); C{fatal} (an internal error).
  - C{status}: the upstream's HTTP status; L{None} without an answer.
  - C{time_to_headers}: seconds from sending to the answer's headers;
    L{None} without an answer.
  - C{time_to_first_event}: seconds from sending to the first event written
    to the client; L{None} for whole (non-streamed) answers and streams that
    wrote none.
  - C{duration}: seconds from sending to the attempt's end.
  - C{error}: the failure's exception name (C{StreamTimeout},
    C{ConnectionRefusedError}, ...), L{None} when there is none.
  - C{retry}: whether the request had already tried this backend, model
    and key (a same-target retry, or a rate-limited key tried again once
    it cooled down).
  - C{usage}: what this attempt consumed, as far as llmproxy knows: the
    upstream's own C{usage} object (either dialect) when its answer carried
    one, whatever the outcome; else, for a stream that relayed events
    before it broke or its client left, an estimate clearly marked
    C{{"output_tokens": N, "estimated": True}} where N is the number of the
    upstream's events relayed (streams carry about one token per event);
    else L{None} (nothing known: no answer, a refused one, or a whole
    answer without usage).  Observers bill from the unmarked ones only.
  - C{events}: the number of upstream events relayed for a stream; L{None}
    for whole answers and attempts that relayed nothing.
  - C{frontend}: the client's dialect (C{chat} or C{responses}).

Reply events, namespace L{REPLY_NAMESPACE}, format L{REPLY_FORMAT}, level
info, one for each request the site processed, when its reply ended:

  - C{method}, C{path}: of the request, as text (the path without query).
  - C{protocol}: C{HTTP/1.1} or C{HTTP/1.0}.
  - C{client}: the client's IP address, C{-} when it has none.
  - C{user_agent}: the client's C{User-Agent}; L{None} without.
  - C{status}: the HTTP status sent.
  - C{bytes}: the body bytes written.
  - C{duration}: seconds from the whole request's arrival to the reply's
    end.
  - C{completed}: L{False} when the client left before the reply ended.
  - C{route}: C{backend:model} of the upstream that answered; L{None} when
    none did (errors llmproxy made itself, requests needing no upstream).
  - C{key}: the name of that answer's key; L{None} when keyless or none.
  - C{attempts}: the upstream attempts made; 0 for requests needing none.
  - C{streamed}: whether the reply was an event stream.
  - C{usage}: the upstream's C{usage} object (in the backend's dialect:
    C{prompt_tokens}/C{completion_tokens} for Chat Completions,
    C{input_tokens}/C{output_tokens} for Responses), when its answer
    carried one; else L{None}.
  - C{continued}: C{backend:model} of the target that continued a stream
    broken mid-answer (L{llmproxy.exchange.continuation}); else L{None}.
  - C{frontend}: C{chat} or C{responses} for the two proxied endpoints;
    L{None} for every other request.
  - C{backend}, C{model}: C{route} split (L{None} with it); the model is
    the bare upstream model.
  - C{session}: the conversation's state key (a digest scoped to the
    client, L{llmproxy.routing.conversation.Conversation.key}); L{None}
    when the request names none.  Never the client's own id.
  - C{time_to_first_event}: seconds from the request's arrival to the
    first event of the answer written to the client; L{None} when none
    was (whole answers included).
  - C{request_id}: an identifier of this reply event, C{req_} and 24 hex
    digits (a random prefix per process, then a count), made when the
    event is.
  - C{usage} on a client that left mid-stream: what reached llmproxy until
    then (the upstream's object if it came, else the marked estimate of
    the attempt event); on a stream broken after it started, the same.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import ILogObserver, Logger, LogLevel
from zope.interface import implementer

#: The namespace of attempt events.
ATTEMPT_NAMESPACE = "llmproxy.exchange.attempt"
#: The namespace of reply events.
REPLY_NAMESPACE = "llmproxy.exchange.reply"

ATTEMPT_FORMAT = ("attempt {attempt} to {backend}:{model} (key {key}): {outcome}, "
                  "status {status}")
REPLY_FORMAT = ("{method} {path} {status}: route {route}, {attempts} attempt(s), "
                "{bytes} bytes in {duration:.3f} s")

OK = "ok"
CLIENT_ERROR = "client_error"
TIMEOUT = "timeout"
UNREACHABLE = "unreachable"
BROKEN = "broken"
CANCELLED = "cancelled"
FATAL = "fatal"
#: Every outcome an attempt event may carry.
OUTCOMES = frozenset({OK, CLIENT_ERROR, "retry_next", "next_element", "next_key",
                      "rate_limited", "quota", TIMEOUT, UNREACHABLE, BROKEN, CANCELLED, FATAL})

_log = Logger()

#: How a usage object's key looks in JSON text.
USAGE_KEY = b'"usage"'
#: How far after its key a usage object must end (a usage object is small).
_USAGE_SPAN = 4096


@dataclass(slots=True)
class AttemptNote:
    """
    What one attempt event will say, filled in as the attempt goes.

    @ivar started: when the attempt was sent, by the exchange's clock.
    """

    attempt: int
    backend: str
    model: str
    key: str | None
    started: float
    outcome: str = FATAL
    status: int | None = None
    headers_at: float | None = None
    first_event_at: float | None = None
    error: str | None = None
    retry: bool = False
    usage: dict[str, Any] | None = None
    events: int | None = None
    frontend: str | None = None


@dataclass(slots=True)
class ReplyNote:
    """
    What the exchange tells its request's reply event.
    """

    route: str | None = None
    key: str | None = None
    attempts: int = 0
    streamed: bool = False
    usage: dict[str, Any] | None = None
    continued: str | None = None
    frontend: str | None = None
    session: str | None = None
    first_event_at: float | None = None


@implementer(ILogObserver)
class ExchangeEvents:
    """
    The publisher of the exchange's events.  Observers are
    L{ILogObserver}s; each sees every attempt and reply event, and tells
    them apart by C{log_namespace}.

    @ivar observed: whether anyone observes; emitters check it first, so
        unobserved events cost nothing.
    """

    def __init__(self) -> None:
        #: Dispatched to directly (a L{LogPublisher} costs microseconds more
        #: per event); one that fails is logged on the main log.
        self._observers: tuple[ILogObserver, ...] = ()
        self.observed = False
        #: Streamed replies started and not yet reported (L{stream_opened}).
        self.open_streams = 0
        #: Request ids: this publisher's random prefix, then a count.
        self._ids = secrets.token_hex(6)
        self._replied = 0
        self._attempts = Logger(namespace=ATTEMPT_NAMESPACE, observer=self)
        self._replies = Logger(namespace=REPLY_NAMESPACE, observer=self)

    def addObserver(self, observer: ILogObserver) -> None:
        """
        Send every later event to C{observer} too.
        """
        if observer not in self._observers:
            self._observers += (observer,)
        self.observed = True

    def removeObserver(self, observer: ILogObserver) -> None:
        """
        Stop sending events to C{observer}.
        """
        self._observers = tuple(o for o in self._observers if o != observer)
        self.observed = bool(self._observers)

    def publish(self, event: dict[str, Any]) -> None:
        """
        Send an event another part of llmproxy made (a config reload's, in
        namespace C{llmproxy.reload}) to the observers, if there are any.
        """
        if self.observed:
            self(event)

    def __call__(self, event: dict[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except CancelledError:
                raise
            except Exception:
                _log.failure("an observer of the exchange's events failed",
                             observer=observer)

    def attempt(self, note: AttemptNote, now: float) -> None:
        """
        Emit the event of a finished attempt.
        """
        if not self.observed:
            return
        started = note.started
        self._emit(self._attempts, ATTEMPT_FORMAT, {
            "attempt": note.attempt, "backend": note.backend, "model": note.model,
            "key": note.key, "outcome": note.outcome, "status": note.status,
            "time_to_headers": None if note.headers_at is None else note.headers_at - started,
            "time_to_first_event": (None if note.first_event_at is None
                                    else note.first_event_at - started),
            "duration": now - started, "error": note.error, "retry": note.retry,
            "usage": note.usage, "events": note.events, "frontend": note.frontend,
        })

    def stream_opened(self) -> None:
        """
        A reply started its event stream; its reply event closes it.
        """
        if self.observed:
            self.open_streams += 1

    def reply(self, fields: dict[str, Any], note: ReplyNote | None) -> None:
        """
        Emit the event of a reply: C{fields} holds its HTTP keys (method,
        path, protocol, client, user_agent, status, bytes, duration,
        completed, and C{arrived}, when the request arrived: read for
        C{time_to_first_event}, not passed on); C{note} what the exchange
        said, if one ran.
        """
        self._replied += 1
        fields["request_id"] = f"req_{self._ids}{self._replied:012x}"
        if note is None:
            fields.update(route=None, key=None, attempts=0, streamed=False, usage=None,
                          continued=None, frontend=None, backend=None, model=None,
                          session=None, time_to_first_event=None)
        else:
            if note.streamed and self.open_streams > 0:
                self.open_streams -= 1
            first, route = note.first_event_at, note.route
            backend, _, model = route.partition(":") if route is not None else (None, "", None)
            fields.update(route=note.route, key=note.key, attempts=note.attempts,
                          streamed=note.streamed, usage=note.usage, continued=note.continued,
                          frontend=note.frontend, backend=backend, model=model,
                          session=note.session,
                          time_to_first_event=None if first is None
                          else first - fields["arrived"])
        fields.pop("arrived", None)
        self._emit(self._replies, REPLY_FORMAT, fields)

    def _emit(self, logger: Logger, form: str, event: dict[str, Any]) -> None:
        """
        What C{logger.info(form, **event)} does, without checking the level
        (Twisted sorts every level to check one: microseconds per event).
        """
        event.update(log_logger=logger, log_level=LogLevel.info,
                     log_namespace=logger.namespace, log_source=None, log_format=form,
                     log_time=time.time())
        self(event)


def find_usage(data: bytes) -> dict[str, Any] | None:
    """
    The last C{"usage"} object in a JSON text or SSE event, without parsing
    the whole: L{None} when its last C{"usage"} key is absent, is not an
    object (C{null} while a stream runs) or is not whole.
    """
    at = data.rfind(USAGE_KEY)
    if at < 0:
        return None
    rest = data[at + len(USAGE_KEY):at + len(USAGE_KEY) + _USAGE_SPAN].lstrip()
    if not rest.startswith(b":"):
        return None
    rest = rest[1:].lstrip()
    if not rest.startswith(b"{"):
        return None
    try:
        usage, _ = json.JSONDecoder().raw_decode(rest.decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


__all__ = [
    "ATTEMPT_FORMAT", "ATTEMPT_NAMESPACE", "OUTCOMES", "REPLY_FORMAT", "REPLY_NAMESPACE",
    "USAGE_KEY", "AttemptNote", "ExchangeEvents", "ReplyNote", "find_usage",
]
