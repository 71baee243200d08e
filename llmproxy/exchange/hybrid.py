# -*- test-case-name: tests.test_hybrid -*-
"""
A hybrid route's trip (behaviour.md section 10): a reasoning model plans,
an execution model answers, in one client response.

 1. The reasoning phase (when L{decide} says so) is served by a sibling
    exchange on the phase's own route (failover and key rotation as for
    any route) whose answers are read by a L{_ReasoningReader} instead of
    being relayed: streamed, and cut where the reasoning ends
    (L{ReasoningCutter}); the upstream connection is then dropped, not
    read to its end.  Nothing reaches the client meanwhile but the
    request's keepalives.  The phase is bounded by its timeout; a failure
    or a timeout goes straight on to the execution phase.
 2. The execution phase is this exchange's own route, its bodies with the
    reasoning injected: a stream shows the reasoning first
    (L{with_reasoning}), a whole answer carries it (L{merge_answer}).

C{x-llmproxy-hybrid} says what the reasoning phase did, and
C{x-llmproxy-hybrid-usage} each phase's usage.  A route whose failover
list mixes hybrid and plain elements tries its parts in order.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable, Coroutine, Protocol as TypingProtocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse

from llmproxy.adapt.reasoning import is_reasoning_model
from llmproxy.backends.base import Backend
from llmproxy.backends.body import Watchdog, body_producer, stop_later
from llmproxy.config import ApiKey
from llmproxy.config.hybrid import HybridConfig
from llmproxy.errors import ProxyError, StreamBroken, StreamTimeout
from llmproxy.exchange.call import Call
from llmproxy.exchange.events import ReplyNote
from llmproxy.exchange.reply import ClientReply, error_from_upstream, rewrap_error
from llmproxy.exchange.runtime import Runtime
from llmproxy.exchange.sessions import SessionState
from llmproxy.exchange.tuning import EditWatch
from llmproxy.routing.hybrid import decide
from llmproxy.routing.resolve import HybridRoute, Route, Target
from llmproxy.sse import SSEError, SSEParser
from llmproxy.translate.hybrid import (
    chosen_effort, execution_body, merge_answer, reasoning_body,
)
from llmproxy.translate.hybrid_stream import ReasoningCutter, ReasoningFailed, with_reasoning
from llmproxy.translate.transforms import Transform
from llmproxy.translate.usage import usage_line

__all__ = ["HEADER", "USAGE_HEADER", "serve"]

#: What the reasoning phase did: C{reasoning=ok|skipped|failed|timeout|empty}.
HEADER = b"x-llmproxy-hybrid"
#: Each phase's usage.
USAGE_HEADER = b"x-llmproxy-hybrid-usage"

log = Logger()


class Host(TypingProtocol):
    """
    What a hybrid route needs of its exchange
    (L{llmproxy.exchange.exchange.Exchange}).
    """

    call: Call
    clock: IReactorTime
    edits: EditWatch | None
    note: ReplyNote
    reply: ClientReply
    runtime: Runtime

    async def serve(self, route: Route) -> bytes | None: ...

    def sibling(
        self, call: Call, reply: ClientReply,
        consume: Callable[[Backend, Target, IResponse], Any],
    ) -> Host: ...


async def serve(host: Host, route: Route) -> bytes | None:
    """
    Serve a route with hybrid elements: its parts in order (a run of plain
    elements is one part), the next part tried while nothing of the
    answer reached the client.
    """
    last: ProxyError | None = None
    for part in _parts(route):
        try:
            if isinstance(part, Target) and part.hybrid is not None:
                return await _hybrid(host, part.hybrid)
            return await host.serve(part)
        except ProxyError as e:
            if host.reply.wrote or host.reply.gone:
                raise
            last = e
    assert last is not None
    raise last


def _parts(route: Route) -> list[Any]:
    """
    The hybrid targets, and the runs of plain targets between them as
    routes of their own.
    """
    parts: list[Any] = []
    for target in route.targets:
        if target.hybrid is not None:
            parts.append(target)
        elif parts and isinstance(parts[-1], Route):
            parts[-1] = replace(parts[-1], targets=parts[-1].targets + (target,))
        else:
            parts.append(Route((target,), route.policy))
    return parts


async def _hybrid(host: Host, spec: HybridRoute) -> bytes | None:
    request = host.reply.request
    why = await _skipped(host, spec.settings)
    reasoning, usage = None, None
    if why is None:
        reasoning, usage, status = await _reason(host, spec)
    else:
        status = f"reasoning=skipped; why={why}"
    request.setHeader(HEADER, status.encode())
    shown = usage_line(usage) if usage is not None else "unknown"
    request.setHeader(USAGE_HEADER, f"reasoning: {shown}; execution: streamed".encode())
    call, tap = host.call, host.call.tap
    if reasoning and call.stream:
        said = reasoning

        def shown_first(transform: Transform) -> Transform:
            return with_reasoning(tap(transform) if tap else transform, call.frontend, said)
        call.tap = shown_first
    try:
        out = await host.serve(_execution(host, spec, reasoning))
    except ProxyError:
        call.tap = tap  # the route's next part is no hybrid's
        raise
    if out is None or request.code // 100 != 2:  # written, or an error relayed
        return out
    out, summed = merge_answer(out, call.frontend, reasoning, usage)
    execution = host.note.usage
    request.setHeader(USAGE_HEADER, (
        f"reasoning: {shown}; execution: "
        f"{usage_line(execution) if execution is not None else 'unknown'}").encode())
    if summed is not None:
        host.note.usage = summed
        request.setHeader(b"x-llmproxy-usage", usage_line(summed).encode())
    return out


async def _skipped(host: Host, settings: HybridConfig) -> str | None:
    """
    Why the request gets no reasoning phase (L{decide}), or L{None}; a
    conversation's request counts as one of its turns.
    """
    conversation, turn = host.call.conversation, None
    if conversation is not None and settings.force_turns > 0:
        state = await host.runtime.sessions.update(conversation.key, _count_turn)
        turn = state.hybrid_turns - 1
    tuned = host.edits is not None and host.edits.tuning is not None
    return decide(settings, turn, tuned, host.runtime.jitter())


def _count_turn(state: SessionState) -> SessionState:
    return replace(state, hybrid_turns=state.hybrid_turns + 1)


def _execution(host: Host, spec: HybridRoute, reasoning: str | None) -> Route:
    frontend, mode = host.call.frontend, spec.settings.injection
    backends = host.runtime.upstreams.backends

    def body(target: Target) -> Target:
        backend = backends[target.backend]
        thinking = is_reasoning_model(target.model, backend.config.reasoning_models)
        return replace(target, changed=True, body=execution_body(
            target.body, frontend, reasoning, mode, thinking))
    return replace(spec.execution, targets=tuple(body(t) for t in spec.execution.targets))


async def _reason(host: Host, spec: HybridRoute) -> tuple[str | None, Any, str]:
    """
    The reasoning phase: the reasoning (L{None} when there is none), its
    usage and what C{x-llmproxy-hybrid} says of it.
    """
    call, frontend = host.call, host.call.frontend
    body = reasoning_body(call.body, frontend)
    route = replace(spec.reasoning, targets=tuple(
        replace(t, changed=True, body=reasoning_body(t.body, frontend, chosen_effort(
            t.body, call.body, frontend))) for t in spec.reasoning.targets))
    phase = _Phase(host.clock, _QuietReply(host.reply.request, frontend, host.clock, host.note))
    reasoner = host.sibling(Call(frontend, body, json.dumps(body).encode(), call.history,
                                 conversation=call.conversation), phase.reply, phase.consume)
    timeout = spec.settings.timeout
    try:
        await phase.run(reasoner.serve(route), timeout)
    except CancelledError:
        if not phase.expired:
            raise
        log.warn("hybrid reasoning phase timed out after {timeout:g} s", timeout=timeout)
        return None, None, "reasoning=timeout"
    except ProxyError as e:
        if host.reply.gone:
            raise CancelledError()
        if phase.expired:
            return None, None, "reasoning=timeout"
        log.warn("hybrid reasoning phase failed: {error}", error=e.message)
        return None, None, f"reasoning=failed; code={e.code or e.status}"
    cutter = phase.cutter
    assert cutter is not None
    text = cutter.text
    by = f"by={host.note.route}; " if host.note.route else ""
    if not text:
        return None, cutter.usage, f"reasoning=empty; {by}end={cutter.ended}"
    return text, cutter.usage, f"reasoning=ok; {by}end={cutter.ended}; chars={len(text)}"


class _Phase:
    """
    The reasoning phase's attempts within its timeout, and their answers,
    each read by a L{_ReasoningReader}.

    @ivar expired: whether the timeout stopped the phase.
    """

    def __init__(self, clock: IReactorTime, reply: _QuietReply) -> None:
        self.clock = clock
        self.reply = reply
        self.cutter: ReasoningCutter | None = None
        self.expired = False

    async def run(self, attempts: Coroutine[Any, Any, bytes | None], timeout: float) -> None:
        """
        Run the phase's C{attempts}, cancelled after C{timeout} seconds.
        """
        running = Deferred.fromCoroutine(attempts)

        def expire() -> None:
            # Gone, to the phase's attempts: an interrupted send stops them.
            self.expired = self.reply.gone = True
            running.cancel()
        timer = self.clock.callLater(timeout, expire)
        try:
            await running
        finally:
            if timer.active():
                timer.cancel()

    async def consume(self, backend: Backend, target: Target, response: IResponse) -> bytes:
        reader = _ReasoningReader(self.clock, backend.config.idle_timeout)
        response.deliverBody(reader)
        self.cutter = await reader.finished
        return b""


class _ReasoningReader(Protocol):
    """
    Reads a reasoning stream until its reasoning ended, then drops the
    upstream connection (L{stop_later}: never read to its end).
    """

    def __init__(self, clock: IReactorTime, idle: float) -> None:
        self.clock = clock
        self.cutter = ReasoningCutter()
        self.parser = SSEParser()
        self.finished: Deferred[ReasoningCutter] = Deferred(self._cancel)
        self.watchdog = Watchdog(clock, idle, None, self._expired)
        self._cancelled = False

    def connectionMade(self) -> None:
        self.watchdog.start()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called or self._cancelled:
            return
        self.watchdog.progress()
        try:
            ended = self.cutter.feed(self.parser.feed(data))
        except (ReasoningFailed, SSEError) as e:
            self._fail(StreamBroken(f"the reasoning stream failed: {e}",
                                    code="reasoning_failed"))
            return
        if ended:
            self.watchdog.stop()
            self.finished.callback(self.cutter)
            stop_later(self, self.clock)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self.watchdog.stop()
        if self.finished.called or self._cancelled:
            return
        try:
            self.cutter.feed(self.parser.close())
        except (ReasoningFailed, SSEError) as e:
            self.finished.errback(StreamBroken(f"the reasoning stream failed: {e}"))
            return
        if self.cutter.text:
            self.cutter.ended = self.cutter.ended or "done"
            self.finished.callback(self.cutter)
        else:
            self.finished.errback(StreamBroken("the reasoning stream ended without reasoning"))

    def _fail(self, error: ProxyError) -> None:
        self.watchdog.stop()
        self.finished.errback(error)
        stop_later(self, self.clock)

    def _expired(self, why: str) -> None:
        self._fail(StreamTimeout(f"the reasoning stream was {why}", code="upstream_timeout"))

    def _cancel(self, d: Deferred[ReasoningCutter]) -> None:
        self._cancelled = True
        self.watchdog.stop()
        producer = body_producer(self)
        if producer is not None:
            producer.stopProducing()


class _QuietReply(ClientReply):
    """
    The reasoning phase's reply: it says nothing to the client (the
    execution phase answers), and an upstream's error answer fails the
    phase instead of reaching the client.
    """

    def route_headers(
        self, target: Target, key: ApiKey | None, response: IResponse,
        dropped: tuple[str, ...], attempts: int,
    ) -> None:
        self.note.route = f"{target.backend}:{target.model}"

    def forget_route(self) -> None:
        pass

    def stream_headers(self) -> None:
        pass

    def json_headers(self, status: int) -> None:
        pass

    def upstream_error(
        self, target: Target, key: ApiKey | None, response: IResponse, body: bytes,
        attempts: int,
    ) -> bytes | None:
        raise error_from_upstream(response.code, rewrap_error(response.code, body))
