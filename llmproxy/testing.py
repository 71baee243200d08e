# -*- test-case-name: tests.test_testing -*-
"""
Test doubles and builders for code that talks to (or is) llmproxy:

 - L{FakeOpenAI}, an in-process fake OpenAI upstream that records what it
   receives and can answer, pace, fail, stall and drop on demand, served on
   a real port by L{listen_fake} or in memory through a L{MemoryAgent};
 - canned bodies and event streams: L{chat_request}, L{chat_completion},
   L{chat_chunk}, L{chat_chunks}, L{chat_tool_completion},
   L{chat_tool_chunks}, L{responses_object}, L{responses_events},
   L{function_call_response}, L{function_call_events};
 - reading an SSE body: L{sse_events}, L{sse_data}, L{sse_json};
 - configurations: L{backend_data}, L{config_data}, L{openai_config} (the
   data a YAML file holds) and L{make_config} (the frozen L{Config});
 - L{MemoryAgent}, an L{IAgent} served in memory by a given L{Site}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, cast

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort, IReactorTCP, IReactorTime, IStreamClientEndpoint, ITCPTransport,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import URI, Agent
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from llmproxy.backends import REGISTRY
from llmproxy.config import Config, Overrides, build_config
from llmproxy.sse import DONE, Event, SSEParser, encode_event

#: The C{created} time of every canned body.
CREATED = 1700000000


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


def chat_request(text: str = "hi", model: str = "gpt-4o", **fields: Any) -> dict[str, Any]:
    """
    A Chat Completions request: one user message, then C{fields}.
    """
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def chat_completion(model: str, text: str, ident: str = "chatcmpl-fake") -> dict[str, Any]:
    """
    A minimal, valid chat.completion.
    """
    return {
        "id": ident, "object": "chat.completion", "created": CREATED, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split()),
                  "total_tokens": 3 + len(text.split())},
    }


def chat_tool_completion(model: str, name: str, arguments: str,
                         call_id: str = "call_1") -> dict[str, Any]:
    """
    A chat.completion whose answer is one call of tool C{name}.
    """
    answer = chat_completion(model, "")
    answer["choices"][0]["message"] = {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": call_id, "type": "function",
                        "function": {"name": name, "arguments": arguments}}]}
    answer["choices"][0]["finish_reason"] = "tool_calls"
    return answer


def chat_chunk(model: str, delta: Mapping[str, Any], finish: str | None = None,
               ident: str = "chatcmpl-fake", created: int = CREATED) -> dict[str, Any]:
    """
    One chat.completion.chunk: a single choice carrying C{delta}.
    """
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": dict(delta), "logprobs": None,
                         "finish_reason": finish}]}


def chat_chunks(model: str, pieces: Sequence[str], ident: str = "chatcmpl-fake",
                usage: bool = False) -> list[bytes]:
    """
    The SSE events of a streamed chat completion of C{pieces}, C{[DONE]}
    included; with C{usage}, a final usage chunk (no choices) before it.
    """
    out = [chat_chunk(model, {"role": "assistant", "content": ""}, ident=ident)]
    out += [chat_chunk(model, {"content": p}, ident=ident) for p in pieces]
    out.append(chat_chunk(model, {}, "stop", ident=ident))
    if usage:
        out.append({**chat_chunk(model, {}, ident=ident), "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": len(pieces),
                              "total_tokens": 3 + len(pieces)}})
    return [encode_event(c) for c in out] + [DONE]


def chat_tool_chunks(model: str, name: str, arguments: Sequence[str], call_id: str = "call_1",
                     ident: str = "chatcmpl-fake") -> list[bytes]:
    """
    The SSE events of a streamed chat completion that calls tool C{name},
    its arguments in the given pieces, C{[DONE]} included.
    """
    out = [chat_chunk(model, {"role": "assistant", "content": None}, ident=ident),
           chat_chunk(model, {"tool_calls": [{"index": 0, "id": call_id, "type": "function",
                                               "function": {"name": name, "arguments": ""}}]},
                      ident=ident)]
    out += [chat_chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]},
                       ident=ident) for piece in arguments]
    out.append(chat_chunk(model, {}, "tool_calls", ident=ident))
    return [encode_event(c) for c in out] + [DONE]


def responses_object(model: str, text: str, ident: str = "resp_fake") -> dict[str, Any]:
    """
    A minimal, valid Responses API response object.
    """
    return {
        "id": ident, "object": "response", "created_at": CREATED, "model": model,
        "status": "completed", "error": None, "incomplete_details": None,
        "instructions": None, "metadata": {}, "parallel_tool_calls": True,
        "temperature": None, "tool_choice": "auto", "tools": [], "top_p": None,
        "output": [{"type": "message", "id": "msg_fake", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": len(text.split()),
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": 3 + len(text.split())},
    }


def responses_events(model: str, pieces: Sequence[str], ident: str = "resp_fake") -> list[bytes]:
    """
    The SSE events of a streamed Responses answer of C{pieces}.
    """
    text = "".join(pieces)
    final = responses_object(model, text, ident)
    item = {"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant",
            "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "part": part},
    ]
    events += [{"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0,
                "content_index": 0, "delta": p, "logprobs": []} for p in pieces]
    events += [
        {"type": "response.output_text.done", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "text": text, "logprobs": []},
        {"type": "response.content_part.done", "item_id": "msg_fake", "output_index": 0,
         "content_index": 0, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": final["output"][0]},
    ]
    return _response_stream(final, events)


def function_call_response(model: str, name: str, arguments: str, call_id: str = "call_1",
                           ident: str = "resp_fake") -> dict[str, Any]:
    """
    A Responses API response object whose output is one call of tool
    C{name} (item id C{fc_1}).
    """
    data = responses_object(model, "", ident)
    data["output"] = [{"type": "function_call", "id": "fc_1", "call_id": call_id,
                       "name": name, "arguments": arguments, "status": "completed"}]
    return data


def function_call_events(model: str, name: str, arguments: Sequence[str],
                         call_id: str = "call_1", ident: str = "resp_fake") -> list[bytes]:
    """
    The SSE events of a streamed Responses answer that calls tool C{name},
    its arguments in the given pieces.
    """
    final = function_call_response(model, name, "".join(arguments), call_id, ident)
    call = final["output"][0]
    events: list[dict[str, Any]] = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**call, "arguments": "", "status": "in_progress"}},
    ]
    events += [{"type": "response.function_call_arguments.delta", "item_id": call["id"],
                "output_index": 0, "delta": piece} for piece in arguments]
    events += [
        {"type": "response.function_call_arguments.done", "item_id": call["id"],
         "output_index": 0, "name": name, "arguments": call["arguments"]},
        {"type": "response.output_item.done", "output_index": 0, "item": call},
    ]
    return _response_stream(final, events)


def _response_stream(final: Mapping[str, Any], middle: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """
    C{middle} between the C{created}/C{in_progress} events and the
    C{completed} one of response C{final}, numbered and encoded.
    """
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    events = [{"type": "response.created", "response": started},
              {"type": "response.in_progress", "response": started},
              *middle,
              {"type": "response.completed", "response": final}]
    return [encode_event({**e, "sequence_number": i}, e["type"]) for i, e in enumerate(events)]


def sse_events(body: bytes) -> list[Event]:
    """
    Every event of a whole SSE body (a last one without its blank line
    included); comments are left out.
    """
    parser = SSEParser()
    return parser.feed(body) + parser.close()


def sse_data(body: bytes) -> list[str]:
    """
    The data of every event of a whole SSE body that has data, C{[DONE]}
    included.
    """
    return [e.data for e in sse_events(body) if e.data is not None]


def sse_json(body: bytes) -> list[Any]:
    """
    The data of every event of a whole SSE body decoded as JSON, but for
    C{[DONE]}; raises L{ValueError} if any is not JSON.
    """
    return [json.loads(data) for data in sse_data(body) if data != "[DONE]"]


def backend_data(base_url: str, *keys: str, type: str = "openai",
                 **fields: Any) -> dict[str, Any]:
    """
    One backend's configuration: its type, its base URL, its C{keys} (none:
    keyless, or the environment's for C{openai}) and other C{fields}.
    """
    data: dict[str, Any] = {"type": type, "base_url": base_url}
    if keys:
        data["api_keys"] = list(keys)
    data.update(fields)
    return data


def config_data(backends: Mapping[str, Mapping[str, Any]], default: str | None = None,
                **extra: Any) -> dict[str, Any]:
    """
    A configuration file's data: C{backends} by name (the first is the
    default backend unless C{default} names another) and C{extra} top-level
    keys.
    """
    return {"default_backend": default or next(iter(backends), None),
            "backends": {name: dict(b) for name, b in backends.items()}, **extra}


def openai_config(base_url: str, keys: Sequence[str] = ("sk-test-1",),
                  **extra: Any) -> dict[str, Any]:
    """
    A configuration with one C{openai} backend at C{base_url}, with C{keys}.
    """
    return config_data({"openai": backend_data(base_url, *keys)}, **extra)


def make_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                source: str = "test.yaml", **overrides: Any) -> Config:
    """
    The L{Config} for C{data}, with command-line C{overrides}, reading
    C{environ} only (never the process's environment).
    """
    return build_config(data, Overrides(**overrides), environ or {}, source=source,
                        kinds=REGISTRY.kinds)


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
        text = "fake: " + _last_text(body)
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


def _last_text(body: Mapping[str, Any]) -> str:
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


async def listen_fake(reactor: IReactorTCP, clock: IReactorTime | None = None) -> tuple[FakeOpenAI, IListeningPort, str]:
    """
    Start a L{FakeOpenAI} on 127.0.0.1, port 0.  Returns it, its port and
    its base URL (ending in C{/v1}).
    """
    fake = FakeOpenAI(clock or cast(IReactorTime, reactor))  # the reactor is a clock too
    site = Site(fake)
    site.noisy = False
    port: IListeningPort = await endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1"
    ).listen(site)
    address = cast(IPv4Address, port.getHost())  # a TCP4ServerEndpoint's port
    return fake, port, f"http://127.0.0.1:{address.port}/v1"


@implementer(IAgentEndpointFactory)
class _MemoryEndpoints:
    """
    An endpoint on the memory reactor for every URI (only its port is
    recorded; L{MemoryAgent} connects whatever was asked to its site).
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class MemoryAgent:
    """
    An L{IAgent} whose every request is served by C{site} over an in-memory
    connection: no socket, and nothing moves until L{flush}.

    Like treq's C{RequestTraversalAgent}, but for a given L{Site}, so its own
    request factory (body limits and all) serves; the site's connection
    timers are moved onto a memory clock of the agent's, so they never
    reach the global reactor.  Request bodies must be written at once
    (treq's C{FileBodyProducer} waits for the global reactor's cooperator).
    Disconnections are clean (iosim's C{abortConnection} loses no buffered
    data) and flow control is not modelled.
    """

    def __init__(self, site: Site) -> None:
        self._reactor = MemoryReactorClock()
        site.reactor = self._reactor
        self._site = site
        self._agent = Agent.usingEndpointFactory(self._reactor, _MemoryEndpoints(self._reactor))
        self._pumps: list[iosim.IOPump] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        d = self._agent.request(method, uri, headers, bodyProducer)
        if not self._reactor.tcpClients:
            return d  # failed before connecting (a bad URI)
        factory = self._reactor.tcpClients.pop()[2]
        client_address = IPv4Address("TCP", "127.0.0.1", 31337)
        server_address = IPv4Address("TCP", "127.0.0.1", 80)
        server = self._site.buildProtocol(client_address)
        client = factory.buildProtocol(server_address)
        assert server is not None and client is not None
        self._pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, True, server_address, client_address),
            client, iosim.FakeTransport(client, False, client_address, server_address),
            greet=False))
        return d

    def flush(self) -> bool:
        """
        Move every pending byte and disconnection, both ways, until none is
        left.

        @return: whether anything moved.
        """
        moved = False
        for pump in list(self._pumps):
            moved = pump.flush() or moved
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self._pumps.remove(pump)
        return moved


# Fault modes beyond the fake's own (issue #10): answers of any shape, and
# the connections they came on.


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
    site = Site(fake)
    site.noisy = False
    port: IListeningPort = await endpoints.TCP4ServerEndpoint(
        reactor, 0, interface="127.0.0.1"
    ).listen(site)
    address = cast(IPv4Address, port.getHost())
    return fake, port, f"http://127.0.0.1:{address.port}/v1"


__all__ = [
    "CREATED", "Drop", "FakeOpenAI", "FaultyOpenAI", "MemoryAgent", "Raw", "Recorded", "Reply",
    "Stall", "Stream", "listen_faulty",
    "backend_data", "chat_chunk", "chat_chunks", "chat_completion", "chat_request",
    "chat_tool_chunks", "chat_tool_completion", "config_data", "function_call_events",
    "function_call_response", "listen_fake", "make_config", "openai_config",
    "responses_events", "responses_object", "sse_data", "sse_events", "sse_json",
]
