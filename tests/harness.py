"""
Shared fixtures: llmproxy and its fake upstream either in memory on one
L{Clock} (L{MemoryProxy}: no socket, no real time) or in-process on port 0
(L{start}), and clients (treq, and the OpenAI SDK in a thread).

Use L{MemoryProxy} for what llmproxy decides (statuses, error shapes,
routing, failover, what the upstream receives); use L{start} for what
depends on real connections (streaming pace, backpressure, disconnects,
the SDK end to end).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, NamedTuple, TypeVar

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from llmproxy.backends import REGISTRY
from llmproxy.backends.openai import BytesProducer, OpenAIBackend
from llmproxy.config import Config, build_config
from llmproxy.service import ProxyService
from llmproxy.testing import FakeOpenAI, MemoryAgent, chat_request, listen_fake, openai_config

T = TypeVar("T")


class Proxy:
    """
    A running llmproxy and its fake upstream.
    """

    def __init__(self, service: ProxyService, url: str, fake: FakeOpenAI, upstream: str) -> None:
        self.service = service
        self.url = url
        self.fake = fake
        self.upstream = upstream

    @property
    def config(self) -> Config:
        return self.service.config


def base_config(upstream: str, **extra: Any) -> dict[str, Any]:
    """
    A config with one openai backend at the fake and one key,
    C{sk-test-1} (L{openai_config}'s default).
    """
    return openai_config(upstream, **extra)


async def start(
    case: TestCase,
    make_config: Callable[[str], Mapping[str, Any]] | None = None,
    clock: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Proxy:
    """
    Start the fake upstream and llmproxy; everything is cleaned up with the
    test.
    """
    fake, port, upstream = await listen_fake(reactor)
    case.addCleanup(port.stopListening)
    case.addCleanup(fake.wait_idle)
    data = (make_config or base_config)(upstream)
    config = build_config(data, environ=environ or {}, source="test.yaml", kinds=REGISTRY.kinds)
    service = ProxyService(config, reactor, clock=clock)
    proxy_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        service.app.site()
    )
    case.addCleanup(service.pool.closeCachedConnections)
    case.addCleanup(proxy_port.stopListening)
    return Proxy(service, f"http://127.0.0.1:{proxy_port.getHost().port}", fake, upstream)


def client(case: TestCase) -> HTTPClient:
    """
    A treq client with its own pool, closed after the test.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    case.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


async def post(case: TestCase, url: str, body: Any, headers: Mapping[str, str] | None = None) -> tuple[int, Mapping[str, str], bytes]:
    """
    POST JSON (or raw bytes) and read the whole answer.
    """
    import treq

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"content-type": "application/json", **(headers or {})}
    response = await client(case).post(url, data=data, headers=h)
    content = await treq.content(response)
    got = {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, got, content


class Answer(NamedTuple):
    """
    A whole HTTP answer: status, headers (lower-cased names, last value)
    and body.
    """

    status: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


#: The base URL of a L{MemoryProxy}'s fake upstream.
MEMORY_UPSTREAM = "http://upstream.test/v1"


class MemoryProxy:
    """
    llmproxy, assembled as in production, and its fake upstream, both in
    memory on one L{Clock}: requests travel through L{MemoryAgent}s, so
    nothing moves until L{pump} (or L{advance}), and no time passes but the
    clock's.

    The configuration is C{make_config(upstream)} (default: one openai
    backend with one key), where C{upstream} is L{MEMORY_UPSTREAM}; every
    openai backend's requests go to the fake, whatever its base URL.
    """

    def __init__(
        self,
        make_config: Callable[[str], Mapping[str, Any]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.clock = Clock()
        self.fake = FakeOpenAI(self.clock)
        data = (make_config or base_config)(MEMORY_UPSTREAM)
        config = build_config(data, environ=environ or {}, source="test.yaml",
                              kinds=REGISTRY.kinds)
        sites: list[Site] = []

        def listener(site: Site) -> Service:
            sites.append(site)
            return Service()

        self.service = ProxyService(config, self.clock, clock=self.clock, listener=listener)
        self._upstream = MemoryAgent(Site(self.fake))
        for backend in self.service.app.runtime.upstreams.backends.values():
            if isinstance(backend, OpenAIBackend):
                # The backend's one way out to the network.
                backend.agent = self._upstream  # type: ignore[assignment]
        self._client = MemoryAgent(sites[0])

    @property
    def config(self) -> Config:
        return self.service.config

    def request(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None) -> Deferred[Answer]:
        """
        Send a request (a JSON body, or raw bytes) and L{pump}; the
        L{Deferred} fires with the whole answer once it has come (at once,
        unless something waits for the clock).
        """
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        h = Headers({"content-type": ["application/json"]})
        for name, value in (headers or {}).items():
            h.setRawHeaders(name, [value])

        async def send() -> Answer:
            response = await self._client.request(
                method.encode(), b"http://llmproxy.test" + path.encode(), h,
                None if data is None else BytesProducer(data))
            content = await readBody(response)
            got = {k.decode().lower(): v[-1].decode()
                   for k, v in response.headers.getAllRawHeaders()}
            return Answer(response.code, got, content)

        d = Deferred.fromCoroutine(send())
        self.pump()
        return d

    def pump(self) -> None:
        """
        Move bytes both ways and run what is due on the clock now, until
        nothing is left to do.
        """
        for _ in range(1000):
            moved = self._client.flush() | self._upstream.flush()
            due = [c for c in self.clock.getDelayedCalls() if c.getTime() <= self.clock.seconds()]
            self.clock.advance(0)
            if not moved and not due:
                return
        raise AssertionError("llmproxy is still busy after 1000 rounds")

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass on the clock, then L{pump}.
        """
        self.clock.advance(seconds)
        self.pump()

    def result(self, d: Deferred[T]) -> T:
        """
        L{pump}, then the result of C{d}, which must have one.
        """
        self.pump()
        results: list[T | Failure] = []
        d.addBoth(results.append)
        if not results:
            raise AssertionError(f"no result yet from {d!r}")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def post(self, path: str, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
        """
        POST and return the whole answer (which must come without time
        passing).
        """
        return self.result(self.request("POST", path, body, headers))

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self.result(self.request("GET", path, None, headers))

    def chat(self, **fields: Any) -> Answer:
        """
        POST a chat completion (L{chat_request}, C{fields} on top).
        """
        return self.post("/v1/chat/completions", chat_request(**fields))

    def chat_d(self, **fields: Any) -> Deferred[Answer]:
        """
        Start a chat completion (L{chat_request}, C{fields} on top); its
        answer comes as the test pumps and advances.
        """
        return self.request("POST", "/v1/chat/completions", chat_request(**fields))


def in_thread(fn: Callable[[], T]) -> Any:
    """
    Run blocking client code (the OpenAI SDK) off the reactor thread.
    """
    return deferToThread(fn)


def sdk(url: str, key: str = "unused") -> Any:
    """
    An OpenAI SDK client pointed at llmproxy; use it as a context manager.
    """
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)
