"""
llmproxy's own site, in memory and on a L{Clock}: raw HTTP in, raw HTTP out,
over a L{StringTransport}, with backends that answer from a script.  Unlike
C{StubTreq} (which wraps a resource in a plain L{Site}), the requests go
through L{ProxySite}, so its reply events are seen too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from llmproxy.backends import REGISTRY
from llmproxy.backends.memory import MemoryResponse
from llmproxy.config import ApiKey, BackendConfig, Config, build_config
from llmproxy.dialects import CHAT
from llmproxy.exchange.runtime import live_upstreams
from llmproxy.frontends import ProxyApp
from llmproxy.testing import chat_chunks, chat_completion


@dataclass
class Answer:
    """
    One scripted upstream answer: C{status} and C{chunks} (by default a
    chat completion, or its chunks when streamed, of C{text}), the chunks
    C{delay} seconds apart, the headers after C{after} seconds.
    """

    status: int = 200
    chunks: Sequence[bytes] | None = None
    delay: float = 0.0
    after: float = 0.0
    text: str = "hello there"
    headers: Mapping[bytes, bytes] = field(default_factory=dict)


class ScriptedBackend:
    """
    A chat backend answering from C{script} (consumed in order, the last
    answer repeating); an exception in the script fails the send.

    @ivar sent: the key of every send, in order.
    """

    dialect = CHAT

    def __init__(self, config: BackendConfig, clock: Clock,
                 script: list[Answer | Exception] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.script = script if script is not None else [Answer()]
        self.sent: list[ApiKey | None] = []

    def send(self, body: bytes, key: ApiKey | None, stream: bool,
             timeout: float | None = None) -> Deferred[IResponse]:
        self.sent.append(key)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            return fail(answer)
        model = json.loads(body).get("model", "m")
        chunks = answer.chunks
        if chunks is None:
            chunks = (chat_chunks(model, answer.text.split(" "), usage=True) if stream
                      else [json.dumps(chat_completion(model, answer.text)).encode()])
        kind = b"text/event-stream" if stream and answer.status == 200 else b"application/json"
        response = MemoryResponse(answer.status, {b"content-type": kind, **answer.headers},
                                  chunks, self.clock, answer.delay)
        return deferLater(self.clock, answer.after, lambda: response)

    async def models(self) -> list[str]:
        return list(self.config.models)

    def close(self) -> None:
        pass


def config_of(backends: Mapping[str, Mapping[str, Any]], **extra: Any) -> Config:
    """
    A configuration of these (scripted) backends; the first is the default.
    """
    data: dict[str, Any] = {
        "default_backend": next(iter(backends)),
        "backends": {name: {"type": "openai", "base_url": "http://upstream.invalid/v1",
                            **({} if "api_keys" in b else {"api_key": "sk-unused"}), **b}
                     for name, b in backends.items()},
    }
    data.update(extra)
    return build_config(data, environ={}, source="test.yaml", kinds=REGISTRY.kinds)


class Scripts:
    """
    The scripted backend of each backend name, made on demand; a
    L{BackendFactory} for L{live_upstreams}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.scripts: dict[str, list[Answer | Exception]] = {}
        self.made: list[ScriptedBackend] = []

    def __call__(self, config: BackendConfig) -> ScriptedBackend:
        backend = ScriptedBackend(config, self.clock, self.scripts.get(config.name))
        self.made.append(backend)
        return backend

    def latest(self, name: str) -> ScriptedBackend:
        return [b for b in self.made if b.config.name == name][-1]


@dataclass
class Reply:
    """
    What a client received: status, headers (lower-case names), body (chunked
    encoding undone).
    """

    status: int
    headers: dict[str, str]
    body: bytes


class Conversation:
    """
    One client connection to the site, in memory.
    """

    def __init__(self, app: ProxyApp, clock: Clock) -> None:
        site = app.site()
        site.reactor = clock  # the channel's timeouts run on the clock too
        self.clock = clock
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4567))
        self.protocol = site.buildProtocol(IPv4Address("TCP", "10.1.2.3", 4567))
        assert self.protocol is not None
        self.protocol.makeConnection(self.transport)

    def send(self, method: str, path: str, body: Any = None,
             headers: Mapping[str, str] | None = None) -> None:
        data = b"" if body is None else body if isinstance(body, bytes) else \
            json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", "Host: proxy", "User-Agent: memsite/1",
                 f"Content-Length: {len(data)}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.protocol.dataReceived("\r\n".join(lines).encode() + b"\r\n\r\n" + data)

    def run(self, seconds: float = 0.0, step: float = 0.125) -> None:
        """
        Let C{seconds} pass on the clock, in steps (binary fractions, so the
        times the events report are exact).
        """
        self.clock.advance(0)
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(step)
            elapsed += step

    def reply(self) -> Reply:
        """
        What the client received so far.
        """
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        body = _dechunk(rest) if headers.get("transfer-encoding") == "chunked" else rest
        return Reply(int(lines[0].split(" ")[1]), headers, body)

    def leave(self) -> None:
        """
        The client goes away.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2:]
    return b"".join(out)


def memory_app(config: Config, clock: Clock, scripts: Scripts | None = None) -> ProxyApp:
    """
    The application of C{config} over scripted backends.
    """
    return ProxyApp(config, live_upstreams(config, scripts or Scripts(clock), clock), clock)


USER = [{"role": "user", "content": "hi"}]
