# -*- test-case-name: tests.test_testing -*-
"""
L{FakeOpenAI}, an in-process fake OpenAI upstream that records what it
receives and can answer, pace, fail, stall and drop on demand, and
L{FaultyOpenAI}, which can also answer any raw status, headers and body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, cast

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IListeningPort, IReactorTCP, IReactorTime, ITCPTransport,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


from llmproxy.testing.builders import CREATED, chat_chunks, chat_completion, responses_events, responses_object


@dataclass(frozen=True)
class Recorded:
    """
    One request the fake received.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    raw: bytes = b""

    @property
    def model(self) -> Any:
        return self.body.get("model") if isinstance(self.body, dict) else None


@dataclass
class Reply:
    """
    Answer with a status, a JSON (or raw bytes) body and headers.
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    """
    Answer 200 with these SSE chunks, C{delay} seconds apart; then C{end}:
    C{"close"} (finish cleanly), C{"drop"} (cut the connection) or
    C{"stall"} (send nothing more, keep the connection open).
    """

    chunks: Sequence[bytes]
    delay: float = 0.0
    end: str = "close"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """
    Never answer (until the client gives up).
    """


@dataclass
class Drop:
    """
    Close the connection without answering.
    """


Behaviour = Reply | Stream | Stall | Drop




class FakeOpenAI(Resource):
    """
    A fake OpenAI API (C{/v1/chat/completions}, C{/v1/responses},
    C{/v1/models}).

    Behaviours are taken from C{by_key[bearer token]} or C{by_model[model]}
    (lists, consumed in order, the last one repeating), else from the
    C{script} queue, else the default: an echo of the last user message in
    the request's dialect.

    @ivar requests: every request received, in order.
    @ivar lost: how many requests the client abandoned before the fake
        finished answering.
    @ivar models_reply: how to answer C{GET /models} instead of listing
        C{models}.
    @ivar stream_transports: the server-side transport of every streamed
        answer, to see how much the client has not read yet.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self.clock = clock
        self.requests: list[Recorded] = []
        self.script: list[Behaviour] = []
        self.by_model: dict[str, list[Behaviour]] = {}
        self.by_key: dict[str, list[Behaviour]] = {}
        self.models_reply: Behaviour | None = None
        self.models = ["gpt-4o", "gpt-4o-mini"]
        self.lost = 0
        self.completed = 0
        self.open: list[Request] = []
        self.stream_transports: list[Any] = []
        self.on_request: Callable[[Recorded], None] | None = None

    def render_GET(self, request: Request) -> bytes | int:
        recorded = self._record(request, None)
        if request.path.endswith(b"/models") and self.models_reply is not None:
            return self._perform(request, self.models_reply, recorded)
        if request.path.endswith(b"/models"):
            return self._json(request, 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"}
                for m in self.models]})
        return self._json(request, 404, {"error": {"message": "no such path",
                                                   "type": "invalid_request_error",
                                                   "param": None, "code": None}})

    def render_POST(self, request: Request) -> bytes | int:
        assert request.content is not None  # gotLength() made it
        raw = request.content.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        recorded = self._record(request, body, raw)
        behaviour = self._behaviour(recorded)
        return self._perform(request, behaviour, recorded)

    def _record(self, request: Request, body: Any, raw: bytes = b"") -> Recorded:
        recorded = Recorded(
            request.method.decode(), request.path.decode(),
            {k.decode().lower(): v[-1].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
            body, raw,
        )
        self.requests.append(recorded)
        if self.on_request is not None:
            self.on_request(recorded)
        return recorded

    def _behaviour(self, recorded: Recorded) -> Behaviour | None:
        token = recorded.headers.get("authorization", "").partition(" ")[2]
        queue = self.by_key.get(token) or (
            self.by_model.get(recorded.model) if recorded.model else None)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        if self.script:
            return self.script.pop(0)
        return None

    def _default(self, recorded: Recorded) -> Behaviour:
        body = recorded.body if isinstance(recorded.body, dict) else {}
        model = str(body.get("model", "gpt-4o"))
        text = "fake: " + last_text(body)
        pieces = [w + " " for w in text.split(" ")]
        if recorded.path.endswith("/responses"):
            if body.get("stream"):
                return Stream(responses_events(model, pieces))
            return Reply(200, responses_object(model, text))
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return Stream(chat_chunks(model, pieces, usage=usage))
        return Reply(200, chat_completion(model, text))

    def _perform(self, request: Request, behaviour: Behaviour | None, recorded: Recorded) -> bytes | int:
        if behaviour is None:
            behaviour = self._default(recorded)
        if isinstance(behaviour, Reply):
            for k, v in behaviour.headers.items():
                request.setHeader(k, v)
            self.completed += 1
            return self._json(request, behaviour.status, behaviour.body)
        self.open.append(request)
        request.notifyFinish().addBoth(self._gone, request)
        if isinstance(behaviour, Drop):
            _abort(request)
        elif isinstance(behaviour, Stream):
            self.stream_transports.append(request.channel.transport)
            request.setHeader(b"content-type", b"text/event-stream")
            for k, v in behaviour.headers.items():
                request.setHeader(k, v)
            self._pace(request, list(behaviour.chunks), behaviour)
        return NOT_DONE_YET

    def _pace(self, request: Request, chunks: list[bytes], behaviour: Stream) -> None:
        if request not in self.open:
            return
        if chunks:
            request.write(chunks.pop(0))
            if chunks or behaviour.end != "close":
                self.clock.callLater(behaviour.delay, self._pace, request, chunks, behaviour)
                return
        if behaviour.end == "close":
            request.finish()
        elif behaviour.end == "drop":
            _abort(request)

    def _gone(self, result: Any, request: Request) -> None:
        if request in self.open:
            self.open.remove(request)
        if isinstance(result, Exception) or hasattr(result, "check"):
            self.lost += 1
        else:
            self.completed += 1

    def _json(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return body if isinstance(body, bytes) else json.dumps(body).encode()

    def wait_idle(self) -> None:
        """
        Abort every request still open (for test cleanup).
        """
        for request in list(self.open):
            _abort(request)


def _abort(request: Request) -> None:
    """
    Cut C{request}'s connection (its channel's transport is a TCP one).
    """
    cast(ITCPTransport, request.channel.transport).abortConnection()


def last_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        content = messages[-1].get("content") if isinstance(messages[-1], dict) else ""
    else:
        content = body.get("input", "")
        if isinstance(content, list) and content:
            content = content[-1].get("content", "") if isinstance(content[-1], dict) else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


async def listen_local(reactor: IReactorTCP, resource: Resource) -> tuple[IListeningPort, str]:
    """
    Serve C{resource} on 127.0.0.1, port 0, quietly.  Returns the port and
    its C{http://127.0.0.1:PORT} origin.
    """
    site = Site(resource)
    site.noisy = False
    port: IListeningPort = await endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1"
    ).listen(site)
    address = cast(IPv4Address, port.getHost())  # a TCP4ServerEndpoint's port
    return port, f"http://127.0.0.1:{address.port}"


async def listen_fake(reactor: IReactorTCP, clock: IReactorTime | None = None) -> tuple[FakeOpenAI, IListeningPort, str]:
    """
    Start a L{FakeOpenAI} on 127.0.0.1, port 0.  Returns it, its port and
    its base URL (ending in C{/v1}).
    """
    fake = FakeOpenAI(clock or cast(IReactorTime, reactor))  # the reactor is a clock too
    port, origin = await listen_local(reactor, fake)
    return fake, port, origin + "/v1"




@dataclass
class Raw:
    """
    Answer with a status, these bytes as the body and these headers, with
    no Content-Type unless the headers give one (L{Reply} always says JSON).
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


class FaultyOpenAI(FakeOpenAI):
    """
    A L{FakeOpenAI} that can also answer L{Raw}, and notes the connection
    each request came on.

    @ivar channels: the connection (its L{HTTPChannel}) of each request, in
        order; C{len(set(map(id, ...)))} is how many connections served them.
    """

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__(clock)
        self.channels: list[Any] = []

    @property
    def connections(self) -> int:
        """
        How many connections the requests so far came on.
        """
        return len({id(channel) for channel in self.channels})

    def render(self, request: Request) -> bytes | int:
        self.channels.append(request.channel)
        return super().render(request)

    def _perform(self, request: Request, behaviour: Any, recorded: Recorded) -> bytes | int:
        if not isinstance(behaviour, Raw):
            return super()._perform(request, behaviour, recorded)
        request.defaultContentType = None
        request.setResponseCode(behaviour.status)
        for k, v in behaviour.headers.items():
            request.setHeader(k, v)
        self.completed += 1
        return behaviour.body


async def listen_faulty(
    reactor: IReactorTCP, clock: IReactorTime | None = None
) -> tuple[FaultyOpenAI, IListeningPort, str]:
    """
    Start a L{FaultyOpenAI} on 127.0.0.1, port 0 (see L{listen_fake}).
    """
    fake = FaultyOpenAI(clock or cast(IReactorTime, reactor))
    port, origin = await listen_local(reactor, fake)
    return fake, port, origin + "/v1"
