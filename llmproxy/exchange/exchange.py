# -*- test-case-name: tests.test_failover -*-
"""
One client request's trip upstream: the attempts of its route (backend ×
key, in the failover policy's order) within the request's budget, waits
for cooling keys, and for each attempt the send, the classification of
its outcome and the relay of the answer.

What to try next and the key and breaker bookkeeping are
L{llmproxy.exchange.attempts}'s; what the client sees is
L{llmproxy.exchange.reply}'s; each attempt ends with an event
(L{llmproxy.exchange.events}).  Nothing is retried once a byte of the
answer's body reached the client; a stream broken after that may be
continued (L{llmproxy.exchange.continuation}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Union

from twisted.internet.defer import CancelledError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IResponse
from twisted.web.server import Request

from llmproxy.backends.base import Backend
from llmproxy.backends.body import collect_body, drop_body
from llmproxy.dialects import CHAT
from llmproxy.errors import InvalidRequest, ProxyError, StreamBroken, StreamTimeout
from llmproxy.exchange import prepare
from llmproxy.exchange.call import Call
from llmproxy.exchange.aggregated import (
    STREAM_FACTOR, FailedStream, aggregated_answer, streams_only,
)
from llmproxy.exchange.answers import InvalidAnswer, content_coding, head_problem, parse_answer
from llmproxy.exchange.attempts import AttemptQueue, Slot, keyed_route
from llmproxy.exchange.continuation import Cut, continue_cut, may_continue
from llmproxy.exchange import hybrid
from llmproxy.exchange.events import (
    BROKEN, CANCELLED, CLIENT_ERROR, OK, TIMEOUT, AttemptNote, ExchangeEvents, ReplyNote,
)
from llmproxy.exchange.limits import header_wait, stream_limits
from llmproxy.exchange.outcome import (
    Outcome, Verdict, classify_exception, classify_status, is_timeout,
)
from llmproxy.exchange.relay import AnswerWatch, StreamRelay
from llmproxy.exchange.retries import RetryPolicy, same_target_wait
from llmproxy.exchange.reply import (
    MAX_ERROR_BODY, ClientReply, Failed, Tried, cooling_failure, error_from_upstream,
    final_error, kept_headers, label, lower_headers, network_error, redact,
)
from llmproxy.exchange.runtime import Runtime
from llmproxy.exchange.transform import Recorder, UsageTap, choose_transform, response_id
from llmproxy.exchange.tuning import EditWatch
from llmproxy.routing.resolve import Route, Target
from llmproxy.translate.content import answer_starts
from llmproxy.translate.transforms import Transform
from llmproxy.translate.usage import usage_line

#: An attempt's result: the body to write (whole answers), L{None} (all
#: written), the failure to fail over from, or a stream to continue.
Result = Union[bytes, None, Failed, Cut]
#: Reads an answer in place of the relay (a hybrid route's reasoning phase).
Consume = Callable[[Backend, Target, IResponse], Awaitable[bytes]]


@dataclass(slots=True)
class _Outgoing:
    """
    An attempt's upstream bytes, the parameters dropped on the way, and the
    transform of its streamed answer.
    """

    payload: bytes
    dropped: tuple[str, ...]
    transform: Transform | None
    tuned: str | None = None


class Exchange:
    """
    Serve one request through its route, on the runtime it started with.

    @ivar note: what the request's reply event will say of the exchange.
    """

    log = Logger()

    def __init__(
        self, request: Request, call: Call, runtime: Runtime, events: ExchangeEvents
    ) -> None:
        self.call = call
        self.runtime = runtime
        self.events = events
        self.clock = runtime.clock
        self.started = self.clock.seconds()
        conversation = call.conversation
        self.note = ReplyNote(frontend=call.frontend,
                              session=conversation.key if conversation is not None else None)
        self.reply = ClientReply(request, call.frontend, self.clock, self.note)
        if events.observed:
            self.reply.opened = events.stream_opened
        self.tried: list[Tried] = []
        #: Edit precision tuning (L{llmproxy.exchange.tuning}), when on.
        self.edits: EditWatch | None = None
        #: What reads a successful answer instead of the relay, if anything.
        self.consume: Consume | None = None

    # the loop

    async def run(self, route: Route) -> bytes | None:
        """
        Serve the request; returns the body to write for non-streamed
        answers (L{None} when everything was written already).
        """
        if not route.hybrid:
            route = keyed_route(route, self.runtime.upstreams)
        fcfg = self.runtime.config.failure
        if self.call.stream and fcfg.keepalive_after > 0:
            self.reply.keep_alive(fcfg.keepalive_after, fcfg.keepalive_interval)
        call, edits = self.call, self.runtime.config.edit_precision
        if edits.active:
            self.edits = await EditWatch.start(call.body, call.frontend, call.conversation,
                                               self.runtime.sessions, edits, self.reply.request)
        try:
            if route.hybrid:  # its phases are routes served by serve()
                return await hybrid.serve(self, route)
            return await self._attempts(self._queue(route))
        finally:
            self.reply.stop_keepalive()

    async def serve(self, route: Route) -> bytes | None:
        """
        Serve the request through C{route}'s attempts (one phase of a
        hybrid route); L{run} does the request's own setup first.
        """
        return await self._attempts(self._queue(keyed_route(route, self.runtime.upstreams)))

    def _queue(self, route: Route) -> AttemptQueue:
        conversation = self.call.conversation
        return AttemptQueue(route, self.runtime.upstreams, self.clock,
                            self.runtime.config.failure.default_cooldown,
                            conversation.key if conversation is not None else None)

    def sibling(self, call: Call, reply: ClientReply, consume: Consume) -> Exchange:
        """
        An exchange for a phase of this request that answers it not
        itself: its own call and reply, C{consume} reading each answer;
        this one's runtime, events, budget and note.
        """
        other = Exchange(reply.request, call, self.runtime, self.events)
        other.started, other.note, other.reply, other.consume = \
            self.started, self.note, reply, consume
        return other

    async def _attempts(self, queue: AttemptQueue) -> bytes | None:
        fcfg = self.runtime.config.failure
        failure: Failed | None = None
        while not queue.empty() and len(self.tried) < fcfg.max_attempts:
            elapsed = self.clock.seconds() - self.started
            if elapsed >= fcfg.total_timeout_budget:
                break
            slot = queue.next()
            if slot is None and queue.empty():
                break  # a held retry was let go, and nothing is left
            if slot is None:
                wait = queue.wait()
                if wait is None or wait > fcfg.max_wait \
                        or elapsed + wait > fcfg.total_timeout_budget:
                    failure = cooling_failure(queue, wait, self.tried, self.runtime.upstreams)
                    break
                await deferLater(self.clock, wait)
                queue.wake()
                continue
            result = await self._attempt(queue, slot)
            if isinstance(result, Cut):
                await continue_cut(self, queue, slot, result)
                return None
            if not isinstance(result, Failed):
                return result
            failure = result
            queue.failed(slot, result.outcome, result.retry_after, self._same(slot, result))
        raise final_error(failure, self.tried, queue)

    def _same(self, slot: Slot, failed: Failed) -> float | None:
        """
        The wait before C{slot}'s target is tried again, or L{None}.
        """
        fcfg = self.runtime.config.failure
        return same_target_wait(RetryPolicy.of(fcfg), failed.outcome, failed.transient,
                                failed.retry_after, slot.retries,
                                self.deadline() - self.clock.seconds(), self.runtime.jitter())

    def deadline(self) -> float:
        """
        When the request's total budget runs out, by its clock.
        """
        return self.started + self.runtime.config.failure.total_timeout_budget

    def time_left(self, backend: Backend, model: str, elsewhere: bool = False) -> float:
        """
        The first-byte timeout of this attempt: the backend's (for a
        stream, within its first-token limit), within what is left of the
        request's total budget.  A whole answer's headers come only once it
        is done, so a silent upstream would eat the whole budget: while the
        route has C{elsewhere} to go, such an attempt gets half of what is
        left.
        """
        timeout = backend.config.timeout
        left = self.deadline() - self.clock.seconds()
        if self.call.stream:
            limits = stream_limits(self.runtime.config.failure, backend.config, model)
            timeout = header_wait(limits, timeout)
        elif elsewhere:
            left /= 2
        return max(0.001, min(timeout, left))

    # one attempt

    async def _attempt(self, queue: AttemptQueue, slot: Slot) -> Result:
        """
        One attempt, and its event.
        """
        target = slot.target
        backend = self.runtime.upstreams.backends[target.backend]
        payload, dropped = self.payload_for(target, backend)
        tuned = None if self.edits is None else self.edits.tuned_text(
            target.body, target.model, backend.config.reasoning_models)
        transform = choose_transform(self.call.frontend, backend.dialect, target.model,
                                     self.call.body, self.clock) if self.call.stream else None
        if transform is not None and self.call.tap is not None:
            transform = self.call.tap(transform)
        if transform is not None and may_continue(self, queue):
            transform = Recorder(transform)
        note = self.new_attempt(slot)
        try:
            return await self._send(queue, slot, backend,
                                    _Outgoing(payload, dropped, transform, tuned), note)
        except CancelledError:
            note.outcome = CANCELLED
            raise
        finally:
            self.events.attempt(note, self.clock.seconds())

    def new_attempt(self, slot: Slot) -> AttemptNote:
        """
        Count an attempt on C{slot}, and start the note its event will carry.
        """
        self.note.attempts += 1
        target = slot.target
        return AttemptNote(self.note.attempts, target.backend, target.model,
                           slot.key.name if slot.key is not None else None, self.clock.seconds(),
                           retry=slot.repeat, frontend=self.call.frontend)

    async def _send(
        self, queue: AttemptQueue, slot: Slot, backend: Backend, out: _Outgoing,
        note: AttemptNote,
    ) -> Result:
        """
        Send, classify, and relay a success.
        """
        target, key = slot.target, slot.key
        # A backend that only streams is asked for a stream even by a
        # client that wants a whole answer (see _collect).
        stream = self.call.stream or streams_only(backend)
        try:
            wait = self.time_left(backend, target.model, queue.elsewhere(target))
            response = await backend.send(out.payload, key, stream, wait)
        except CancelledError:
            raise
        except Exception as e:
            if self.reply.gone:
                raise CancelledError()
            return self.network_failure(queue, slot, e, note)
        note.status, note.headers_at = response.code, self.clock.seconds()
        if response.code // 100 != 2:
            return await self._upstream_failure(queue, slot, response, note)
        problem = head_problem(response, stream)
        if problem is not None:
            drop_body(response, self.clock)
            return self._broken(queue, slot, note, InvalidAnswer(
                f"Upstream {target.backend}:{target.model} {problem}"))
        self.reply.route_headers(target, key, response, out.dropped, self.note.attempts)
        if self.edits is not None and not self.reply.committed:
            self.edits.report(self.reply.request, f"{target.backend}:{target.model}", out.tuned)
        return await self._answer(queue, slot, backend, response, out.transform, note)

    async def _answer(
        self, queue: AttemptQueue, slot: Slot, backend: Backend, response: IResponse,
        transform: Transform | None, note: AttemptNote,
    ) -> Result:
        """
        Relay (streams) or collect (whole answers) a successful answer.
        """
        target = slot.target
        try:
            if self.consume is not None:
                result, ok = await self.consume(backend, target, response), True
            elif transform is not None:
                relayed = await self._relay(target, backend, response, transform, note)
                if isinstance(relayed, Cut):
                    queue.record_failure(slot)
                    note.outcome = BROKEN
                    return relayed
                result, ok = None, relayed
            else:
                result, ok = await self._collect(target, backend, response), True
                note.usage = self.note.usage
        except CancelledError:
            raise
        except ProxyError as e:
            # Nothing reached the client: the next attempt may still serve it.
            return self._broken(queue, slot, note, e)
        except FailedStream as e:
            return self._failed_stream(queue, slot, response, e, note)
        if not ok:
            queue.record_failure(slot)
            note.outcome = BROKEN
            return result
        queue.record_success(slot, self.note.usage)
        note.outcome = OK
        return result

    def _broken(
        self, queue: AttemptQueue, slot: Slot, note: AttemptNote, error: ProxyError
    ) -> Failed:
        """
        An attempt whose 2xx was no answer (or stopped before its first
        event): the backend failed it, and nothing of it stays on the reply.
        """
        queue.record_failure(slot)
        name = label(slot.target, slot.key)
        timeout = isinstance(error, StreamTimeout)
        self.tried.append(Tried(name, "timeout" if timeout else type(error).__name__))
        note.outcome, note.error = TIMEOUT if timeout else BROKEN, type(error).__name__
        self.note.route = self.note.key = None
        self.reply.forget_route()
        self.log.warn("{label}: {error}", label=name, error=error.message)
        return Failed(error, transient=isinstance(error, StreamBroken))

    def payload_for(self, target: Target, backend: Backend) -> tuple[bytes, tuple[str, ...]]:
        call = self.call
        reasoning = backend.config.reasoning_models
        edit = None if self.edits is None else self.edits.tuning
        try:
            if call.frontend == CHAT:
                return prepare.prepare_chat(target, call.raw, backend.dialect, reasoning,
                                            pipeline=self.runtime.pipeline,
                                            backend_type=backend.config.type, edit=edit)
            return prepare.prepare_responses(target, call.raw, backend.dialect, reasoning,
                                             call.history, pipeline=self.runtime.pipeline,
                                             backend_type=backend.config.type, edit=edit)
        except (TypeError, AttributeError, KeyError, ValueError) as e:
            # Translation validates what it understands; a shape it does not
            # expect is still the client's error, never a 500.
            raise InvalidRequest(
                f"The request cannot be translated for backend {target.backend!r}: a field "
                f"has an unexpected shape ({type(e).__name__}: {e})",
                code="invalid_request_shape",
            )

    def network_failure(
        self, queue: AttemptQueue, slot: Slot, e: Exception, note: AttemptNote
    ) -> Failed:
        verdict = classify_exception(e)
        note.error = type(e).__name__
        if verdict.outcome is Outcome.FATAL:
            raise e
        queue.record_failure(slot)
        name = label(slot.target, slot.key)
        note.outcome = what = "timeout" if is_timeout(e) else "unreachable"
        self.tried.append(Tried(name, what))
        self.log.warn("{label}: upstream {what}: {error}", label=name, what=what,
                      error=type(e).__name__)
        return Failed(network_error(name, what == "timeout"), transient=what != "timeout")

    async def _upstream_failure(
        self, queue: AttemptQueue, slot: Slot, response: IResponse, note: AttemptNote
    ) -> Result:
        target, key = slot.target, slot.key
        upstreams = self.runtime.upstreams
        coding = content_coding(response)
        try:
            if coding is not None:
                drop_body(response, self.clock)
                raise ProxyError(f"upstream status {response.code}, with a body in the "
                                 f"{coding} content coding (not read)")
            body = await collect_body(response, self.clock,
                                      upstreams.backends[target.backend].config.idle_timeout,
                                      MAX_ERROR_BODY, self.deadline())
        except CancelledError:
            raise
        except ProxyError as e:
            body = ProxyError(e.message).to_json()
        verdict = self._classify(response.code, body, lower_headers(response))
        # Classified as received; what may reach the client is redacted.
        body = redact(response.code, body, upstreams.pools)
        queue.record_verdict(slot, verdict)
        name = label(target, key)
        self.tried.append(Tried(name, str(response.code)))
        if verdict.outcome is Outcome.OK or self._relayed(queue, slot, verdict):
            note.outcome = CLIENT_ERROR
            return self.reply.upstream_error(target, key, response, body, self.note.attempts)
        note.outcome = verdict.outcome.value
        self.log.info("{label}: upstream {status}, trying the next attempt", label=name,
                      status=response.code)
        return Failed(error_from_upstream(response.code, body),
                      (response.code, body, kept_headers(response)),
                      verdict.outcome, verdict.retry_after, 500 <= response.code <= 599)

    def _classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Verdict:
        fcfg = self.runtime.config.failure
        return classify_status(status, body, headers, self.clock.seconds(),
                               extra_failover=fcfg.extra_failover_statuses,
                               extra_codes=fcfg.extra_failover_codes)

    @staticmethod
    def _relayed(queue: AttemptQueue, slot: Slot, verdict: Verdict) -> bool:
        """
        Whether an upstream's error answer goes to the client as it is:
        the client's fault, or a request that fits no model left.
        """
        outcome = verdict.outcome
        return outcome is Outcome.CLIENT_ERROR or (
            outcome is Outcome.NEXT_ELEMENT and not queue.elsewhere(slot.target))

    def _failed_stream(
        self, queue: AttemptQueue, slot: Slot, response: IResponse, failed: FailedStream,
        note: AttemptNote,
    ) -> Result:
        """
        A stream aggregated for a whole answer ended in no answer: the
        upstream failure of the status its error amounts to, relayed when
        it is the client's fault, else failed over from.
        """
        verdict = self._classify(failed.status, failed.body, failed.headers)
        body = redact(failed.status, failed.body, self.runtime.upstreams.pools)
        queue.record_verdict(slot, verdict)
        name = label(slot.target, slot.key)
        self.tried.append(Tried(name, str(failed.status)))
        note.error = type(failed).__name__
        if self._relayed(queue, slot, verdict):
            note.outcome = CLIENT_ERROR
            self.reply.json_headers(failed.status)
            return body
        note.outcome = verdict.outcome.value
        self.note.route = self.note.key = None
        self.reply.forget_route()
        self.log.info("{label}: upstream stream failed ({status}), trying the next attempt",
                      label=name, status=failed.status)
        headers = kept_headers(response) + [(k.encode(), v.encode())
                                            for k, v in failed.headers.items()]
        return Failed(error_from_upstream(failed.status, body), (failed.status, body, headers),
                      verdict.outcome, verdict.retry_after, 500 <= failed.status <= 599)

    # answers

    async def _collect(self, target: Target, backend: Backend, response: IResponse) -> bytes:
        """
        A whole answer, checked (see L{parse_answer}) and in the client's
        dialect; read by the request's deadline.  The stream of a backend
        that only streams is aggregated into its whole answer first.
        """
        aggregate = streams_only(backend)
        limit = self.runtime.config.max_body_bytes * 2
        body = await collect_body(response, self.clock, backend.config.idle_timeout,
                                  limit * STREAM_FACTOR if aggregate else limit, self.deadline())
        if aggregate:
            body = aggregated_answer(body, self.clock.seconds())
        name = f"{target.backend}:{target.model}"
        data, problem = parse_answer(body, backend.dialect)
        if data is None:
            # The upstream's words may reach the client: no key values.
            said = redact(200, str(problem).encode(), self.runtime.upstreams.pools)
            raise InvalidAnswer(f"Upstream {name} {said.decode()}")
        try:
            out = prepare.convert_body(self.call.frontend, backend.dialect, body,
                                       response_id=response_id(), request=self.call.body,
                                       parsed=data)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise InvalidAnswer(
                f"Upstream {name} answered with a body that is not a valid response")
        usage = data.get("usage")  # for the key's prompt-cache totals and the events
        self.note.usage = usage if isinstance(usage, dict) else None
        if self.note.usage is not None:
            self.reply.request.setHeader(b"x-llmproxy-usage",
                                         usage_line(self.note.usage).encode())
        self.reply.json_headers(response.code)
        if self.edits is not None:
            await self.edits.whole(data, backend.dialect)
        if self.call.on_response is not None:
            self.call.on_response(out)
        return out

    async def _relay(
        self, target: Target, backend: Backend, response: IResponse, transform: Transform,
        note: AttemptNote,
    ) -> bool | Cut:
        """
        Relay a streamed answer.  Returns whether it ended well; a failure
        after the first event is written in-band (and returns False), or
        returned as a L{Cut} to continue when the transform recorded; one
        before it raises so the next attempt can serve the client.
        """
        reply = self.reply
        if not reply.committed:
            reply.stream_headers()
        # The usage counts for the key's prompt-cache totals, and the events.
        tap = UsageTap(transform) if self.events.observed or note.key is not None else None

        def first_event() -> None:
            note.first_event_at = self.note.first_event_at = self.clock.seconds()
            reply.first_event()

        limits = stream_limits(self.runtime.config.failure, backend.config, target.model)
        first_at = note.started + limits.first_token if limits.first_token > 0 else None
        watch = AnswerWatch(answer_starts(backend.dialect), first_at, limits.first_token,
                            limits.stream_idle)
        relayed = tap or transform
        if self.edits is not None:
            relayed = self.edits.tap(relayed)
        relay = StreamRelay(reply.request, relayed, self.clock,
                            backend.config.idle_timeout, on_first_write=first_event,
                            deadline=self.deadline(), answer=watch)
        response.deliverBody(relay)
        try:
            await relay.finished
        except CancelledError:
            if tap is not None:  # the client left: what reached us is the reply's
                self.note.usage = tap.tell(note)
            raise
        except ProxyError as e:
            usage = None if tap is None else tap.tell(note)
            if not relay.wrote:
                raise
            self.note.usage = usage  # the client got this attempt's events
            self.log.warn("{route}: stream failed after it started: {error}",
                          route=f"{target.backend}:{target.model}", error=e.message)
            note.error = type(e).__name__
            if isinstance(transform, Recorder):
                return Cut(e, transform)
            reply.stream_error(transform, e)
            return False
        if tap is not None:
            self.note.usage = note.usage = tap.usage
            note.events = tap.count
        if self.edits is not None:
            await self.edits.streamed()
        final = transform.final()
        if self.call.on_response is not None and final is not None:
            self.call.on_response(json.dumps(final).encode())
        return True

    def write_late_error(self, error: ProxyError) -> bool:
        """
        If the stream was committed, write C{error} in-band and return
        True; the caller then just finishes the request.
        """
        return self.reply.write_late_error(error)


__all__ = ["Call", "Exchange"]
