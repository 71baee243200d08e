# -*- test-case-name: tests.test_continuation -*-
"""
Mid-stream continuation, the I/O half: a stream that broke after content
reached the client is continued on the route's next attempts, inside the
same client response (the joining itself is L{llmproxy.translate.splice}'s).

Only a request that may continue pays anything: its transform is wrapped
in a L{Recorder} (one list append per relayed batch), and only when the
stream breaks is what it wrote parsed.  Each continuation attempt is an
attempt like any (its event, the breaker, the key), tried in the queue's
order within C{max_attempts} and the request's budget: C{prefill} first
when the target's backend declares it, then (or else) C{restart}.  A
prefill refused with a 4xx is never the client's error; when nothing
continues the answer, the client is told the original failure, in-band.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Protocol

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from llmproxy.backends.base import Backend
from llmproxy.backends.body import collect_body, drop_body
from llmproxy.errors import ProxyError, UpstreamError
from llmproxy.exchange.answers import head_problem
from llmproxy.exchange.attempts import AttemptQueue, Slot
from llmproxy.exchange.call import Call
from llmproxy.exchange.events import (
    BROKEN, CANCELLED, CLIENT_ERROR, OK, AttemptNote, ExchangeEvents, ReplyNote,
)
from llmproxy.exchange.outcome import Outcome, classify_status
from llmproxy.exchange.relay import StreamRelay
from llmproxy.exchange.reply import (
    MAX_ERROR_BODY, ClientReply, Failed, Tried, label, lower_headers,
)
from llmproxy.exchange.runtime import Runtime
from llmproxy.exchange.transform import Recorder, UsageTap, choose_transform
from llmproxy.routing.resolve import Target, named_route
from llmproxy.translate.splice import (
    PREFILL, RESTART, Partial, Splicer, partial_from, prefill_body, seam_comment, splicer,
    with_prefill_fields,
)
from llmproxy.translate.transforms import Transform

log = Logger()


class Exchange(Protocol):
    """
    What a continuation needs of the exchange whose stream it continues
    (L{llmproxy.exchange.exchange.Exchange}).
    """

    call: Call
    clock: IReactorTime
    events: ExchangeEvents
    note: ReplyNote
    reply: ClientReply
    runtime: Runtime
    tried: list[Tried]

    def deadline(self) -> float: ...

    def new_attempt(self, slot: Slot) -> AttemptNote: ...

    def time_left(self, backend: Backend, model: str, elsewhere: bool = False) -> float: ...

    def payload_for(self, target: Target, backend: Backend) -> tuple[bytes, tuple[str, ...]]: ...

    def network_failure(
        self, queue: AttemptQueue, slot: Slot, e: Exception, note: AttemptNote
    ) -> Failed: ...


@dataclass
class Cut:
    """
    A stream that broke after content reached the client.
    """

    error: ProxyError
    recorder: Recorder


def may_continue(exchange: Exchange, queue: AttemptQueue) -> bool:
    """
    Whether the attempt about to run should record what it relays: a
    streamed request, continuation on, and something left to try.
    """
    return (exchange.call.stream and exchange.runtime.config.failure.continuation
            and not queue.empty())


class _Ended(Enum):
    DONE = "done"          # the answer is whole
    OVER = "over"          # an in-band error ended the stream
    REFUSED = "refused"    # the prefill was refused: restart on the same slot
    FAILED = "failed"      # nothing reached the client: the next slot
    BROKE = "broke"        # the continuation broke in turn: continue it on the next slot


@dataclass
class _Break:
    """
    The latest break: what the client has, what renders an error after
    it, the failure and its short name for the seam.
    """

    partial: Partial
    writer: Transform
    error: ProxyError
    reason: str


async def continue_cut(exchange: Exchange, queue: AttemptQueue, slot: Slot, cut: Cut) -> None:
    """
    Continue the broken stream on the queue's next attempts, or end it with
    the original failure.
    """
    exchange.tried.append(Tried(label(slot.target, slot.key), "cut"))
    if exchange.reply.gone:
        return
    partial = partial_from(exchange.call.frontend, b"".join(cut.recorder.sent))
    state = _Break(partial, cut.recorder, cut.error, _reason(cut.error))
    route = named_route(exchange.runtime.config, str(exchange.call.body.get("model")))
    if route is None or route.continuation:
        try:
            if await _continue(exchange, queue, state):
                return
        except CancelledError:
            raise
        except Exception:
            # The stream has started: whatever went wrong ends it in-band.
            log.failure("continuing a broken stream failed")
    exchange.reply.stream_error(state.writer, state.error)


def _with_fields(payload: bytes, backend: Backend) -> bytes:
    """
    A prefill request with the fields its server wants added.
    """
    body = with_prefill_fields(json.loads(payload), backend.config.prefill_params,
                               backend.config.prefill_message)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _reason(error: ProxyError) -> str:
    if error.code:
        return error.code
    return "upstream_timeout" if error.status == 504 else "stream_cut"


async def _continue(exchange: Exchange, queue: AttemptQueue, state: _Break) -> bool:
    """
    Try the queue's attempts; whether the stream was ended (whole, or by an
    in-band error written here).  A continuation that breaks in turn is
    continued from where it got to.
    """
    failure = exchange.runtime.config.failure
    while not queue.empty() and len(exchange.tried) < failure.max_attempts \
            and exchange.clock.seconds() < exchange.deadline():
        if state.partial.blocker is not None:
            log.info("not continuing a broken stream: {why}", why=state.partial.blocker)
            return False
        slot = queue.next()
        if slot is None:
            return False
        backend = exchange.runtime.upstreams.backends[slot.target.backend]
        prefill = backend.config.continuation == PREFILL and state.partial.text
        for mode in (PREFILL, RESTART) if prefill else (RESTART,):
            log.info("continuing a broken stream on {label} ({mode})", mode=mode,
                     label=label(slot.target, slot.key))
            ended = await _attempt(exchange, queue, slot, backend, state, mode)
            if ended in (_Ended.DONE, _Ended.OVER):
                return True
            if ended is not _Ended.REFUSED or len(exchange.tried) >= failure.max_attempts:
                break
    return False


async def _attempt(
    exchange: Exchange, queue: AttemptQueue, slot: Slot, backend: Backend, state: _Break,
    mode: str,
) -> _Ended:
    """
    One continuation attempt, and its event.
    """
    target = slot.target
    if mode == PREFILL:
        body = prefill_body(exchange.call.frontend, target.body, state.partial.text)
        target = replace(target, body=body, changed=True)
    try:
        payload, _ = exchange.payload_for(target, backend)
        if mode == PREFILL and (backend.config.prefill_params or backend.config.prefill_message):
            payload = _with_fields(payload, backend)
    except ProxyError as e:
        log.info("{name}: cannot continue there: {error}", name=label(slot.target, slot.key),
                 error=e.message)
        return _Ended.FAILED
    inner = choose_transform(exchange.call.frontend, backend.dialect, target.model,
                             exchange.call.body, exchange.clock)
    if exchange.call.tap is not None:
        inner = exchange.call.tap(inner)
    if exchange.events.observed:
        # The usage a chat client did not ask for never reaches the splice.
        inner = UsageTap(inner)
    name = f"{target.backend}:{target.model}"
    splice = splicer(inner, state.partial, mode, seam_comment(name, state.reason))
    note = exchange.new_attempt(slot)
    try:
        return await _send(exchange, queue, slot, backend, payload, splice, note, state)
    except CancelledError:
        note.outcome = CANCELLED
        raise
    finally:
        exchange.events.attempt(note, exchange.clock.seconds())


async def _send(
    exchange: Exchange, queue: AttemptQueue, slot: Slot, backend: Backend, payload: bytes,
    splice: Splicer, note: AttemptNote, state: _Break,
) -> _Ended:
    clock = exchange.clock
    try:
        response = await backend.send(payload, slot.key, True,
                                      exchange.time_left(backend, slot.target.model))
    except CancelledError:
        raise
    except Exception as e:
        if exchange.reply.gone:
            raise CancelledError()
        failed = exchange.network_failure(queue, slot, e, note)
        queue.failed(slot, failed.outcome, None)
        return _Ended.FAILED
    note.status, note.headers_at = response.code, clock.seconds()
    if response.code // 100 != 2:
        return await _refused(exchange, queue, slot, backend, response, note, splice.mode)
    if head_problem(response, True) is not None:
        drop_body(response, clock)
        return _failed(exchange, queue, slot, note, "invalid answer")
    relay = StreamRelay(exchange.reply.request, splice, clock, backend.config.idle_timeout,
                        deadline=exchange.deadline())
    response.deliverBody(relay)
    try:
        await relay.finished
    except (CancelledError, ProxyError) as e:
        if isinstance(splice.inner, UsageTap):  # what reached us, on the attempt
            splice.inner.tell(note)
        if isinstance(e, CancelledError):
            raise
        return _broken(exchange, queue, slot, note, splice, e, state)
    queue.record_success(slot)
    note.outcome = OK
    exchange.note.continued = f"{slot.target.backend}:{slot.target.model}"
    if exchange.events.observed:
        tapped = splice.inner.usage if isinstance(splice.inner, UsageTap) else None
        exchange.note.usage = note.usage = splice.usage or tapped
    final = splice.final()
    if exchange.call.on_response is not None and final is not None:
        exchange.call.on_response(json.dumps(final).encode())
    return _Ended.DONE


async def _refused(
    exchange: Exchange, queue: AttemptQueue, slot: Slot, backend: Backend, response: Any,
    note: AttemptNote, mode: str,
) -> _Ended:
    """
    A continuation answered with an error status: never the client's
    error; a refused prefill is restarted on the same slot.
    """
    try:
        body = await collect_body(response, exchange.clock, backend.config.idle_timeout,
                                  MAX_ERROR_BODY, exchange.deadline())
    except CancelledError:
        raise
    except ProxyError as e:
        body = ProxyError(e.message).to_json()
    verdict = classify_status(response.code, body, lower_headers(response),
                              exchange.clock.seconds())
    queue.record_verdict(slot, verdict)
    exchange.tried.append(Tried(label(slot.target, slot.key), str(response.code)))
    client = verdict.outcome in (Outcome.CLIENT_ERROR, Outcome.OK)
    note.outcome = CLIENT_ERROR if client else verdict.outcome.value
    if mode == PREFILL and 400 <= response.code < 500:
        log.info("{label}: prefill refused ({status}); restarting", status=response.code,
                 label=label(slot.target, slot.key))
        return _Ended.REFUSED
    if not client:
        queue.failed(slot, verdict.outcome, verdict.retry_after)
    return _Ended.FAILED


def _failed(
    exchange: Exchange, queue: AttemptQueue, slot: Slot, note: AttemptNote, what: str
) -> _Ended:
    queue.record_failure(slot)
    queue.failed(slot, Outcome.RETRY_NEXT, None)
    exchange.tried.append(Tried(label(slot.target, slot.key), what))
    note.outcome = BROKEN
    return _Ended.FAILED


def _broken(
    exchange: Exchange, queue: AttemptQueue, slot: Slot, note: AttemptNote, splice: Splicer,
    error: ProxyError, state: _Break,
) -> _Ended:
    """
    The continuation's stream failed: a splice that cannot be verbatim ends
    the stream in-band; one that wrote and broke is the latest break, to
    continue in turn; else the next slot.
    """
    note.error = type(error).__name__
    name = f"{slot.target.backend}:{slot.target.model}"
    if splice.mismatch is not None:
        note.outcome = BROKEN
        exchange.reply.stream_error(splice, UpstreamError(
            "The answer was cut and could not be continued verbatim: "
            f"{name} ({splice.mismatch})", code="continuation_mismatch"))
        return _Ended.OVER
    if splice.wrote:
        queue.record_failure(slot)
        queue.failed(slot, Outcome.RETRY_NEXT, None)
        exchange.tried.append(Tried(label(slot.target, slot.key), "cut"))
        note.outcome = BROKEN
        state.partial, state.writer = splice.partial_now(), splice
        state.error, state.reason = error, _reason(error)
        return _Ended.BROKE
    return _failed(exchange, queue, slot, note, type(error).__name__)


__all__ = ["Cut", "continue_cut", "may_continue"]
