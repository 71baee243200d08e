# -*- test-case-name: tests.test_proxy,tests.test_openai_backend -*-
"""
The C{openai} and C{openai-responses} backends: HTTP/1.1 to an
OpenAI-compatible upstream over the process's one persistent pool.

Requests go through an L{IAgent} directly, not treq: treq's cookie jar
(shared by every client of a proxy), redirect following and content
decoding are wrong for a proxy and cost time on every request.  The agent
(L{UpstreamAgent}: L{Agent}'s work, with each URL parsed once) gets its
endpoints from an L{EndpointCache}, one per upstream.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from llmproxy import __version__
from llmproxy.backends.agent import UpstreamAgent
from llmproxy.backends.base import FirstByteTimeout, IUpstreamReactor
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.backends.body import collect_body
from llmproxy.backends.registry import BackendContext, BackendType
from llmproxy.config import ApiKey, BackendConfig, BackendKind

DEFAULT_URL = "https://api.openai.com/v1"
#: How long an upstream's model list is kept.
MODELS_TTL = 600.0
#: How long, after the upstream failed to list its models, its configured
#: models are used without asking again.
MODELS_RETRY = 60.0
#: The most one request for an upstream's models may take.
MODELS_DEADLINE = 10.0
MODELS_MAX_BYTES = 4 * 1024 * 1024
_USER_AGENT = f"llmproxy/{__version__}".encode()
#: The upstream path for each dialect.
PATHS = {CHAT: "/chat/completions", RESPONSES: "/responses"}


@implementer(IBodyProducer)
class BytesProducer:
    """
    A request body that is already in memory.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class QuietEndpoint:
    """
    An endpoint whose connections log nothing.

    L{HTTPConnectionPool} makes a protocol factory per connection, and a
    L{Factory} logs "Starting factory" and "Stopping factory" around each
    connection unless it is told not to (C{noisy}); a proxy making
    thousands of upstream connections would log little else.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self.endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class EndpointCache:
    """
    An L{Agent}'s endpoints, built once per (scheme, host, port) the way
    Agent's own factory builds them per request: a L{HostnameEndpoint}, in
    TLS for C{https} (verified like a browser, L{BrowserLikePolicyForHTTPS}).
    A proxy sends every request of a backend to one URL, and building the
    endpoint (IDNA-encoding the host) is most of what Agent does per request;
    L{UpstreamAgent} asks once per URL.
    """

    def __init__(
        self, reactor: IUpstreamReactor, connect_timeout: float,
        tls: IPolicyForHTTPS | None = None,
    ) -> None:
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.tls = tls if tls is not None else BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = QuietEndpoint(self._build(uri))
        return endpoint

    def _build(self, uri: URI) -> IStreamClientEndpoint:
        """
        @raise SchemeNotSupported: for a scheme Agent does not speak either
            (it turns this into a failed request).
        """
        endpoint = HostnameEndpoint(
            self.reactor, uri.host.decode("ascii"), uri.port, timeout=self.connect_timeout)
        # The schemes Agent's own endpoint factory accepts.
        if uri.scheme in (b"http", b"ws"):
            return endpoint
        if uri.scheme in (b"https", b"wss"):
            return wrapClientTLS(self.tls.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


def host_header(url: str) -> bytes:
    """
    The C{Host} header value for requests to C{url}.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme)
    if parts.port is None or parts.port == default:
        return host.encode("idna")
    return f"{host}:{parts.port}".encode("idna")


class OpenAIBackend:
    """
    An OpenAI-compatible upstream, speaking Chat Completions.
    """

    log = Logger()
    dialect = CHAT
    #: It answers whole bodies as well as streams.
    streams_only = False

    def __init__(
        self, config: BackendConfig, pool: HTTPConnectionPool, reactor: IUpstreamReactor,
        clock: IReactorTime,
    ) -> None:
        self.config = config
        self.clock = clock
        self.agent: IAgent = UpstreamAgent(EndpointCache(reactor, config.connect_timeout), pool)
        self._url = (config.base_url + PATHS[self.dialect]).encode()
        self._models: list[str] | None = None
        self._models_at = 0.0
        self._failed_at: float | None = None
        self._fetching: Deferred[None] | None = None
        # Headers per (key, stream); the agent only reads them (it would copy
        # them to add a Host header, which they have), so sharing is safe.
        self._header_cache: dict[tuple[str | None, bool], Headers] = {}

    def _headers(self, key: ApiKey | None, accept: bytes) -> Headers:
        headers = Headers({
            b"host": [host_header(self.config.base_url)],
            b"content-type": [b"application/json"],
            b"accept": [accept],
            # Without it any coding is acceptable (RFC 9110); llmproxy
            # decodes none, and relays bodies as they come.
            b"accept-encoding": [b"identity"],
            b"user-agent": [_USER_AGENT],
            b"x-llmproxy-loop-guard": [b"1"],
        })
        if key is not None:
            headers.setRawHeaders(b"authorization", [b"Bearer " + key.value.encode()])
        return headers

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        slot = (key.name if key is not None else None, stream)
        headers = self._header_cache.get(slot)
        if headers is None:
            accept = b"text/event-stream" if stream else b"application/json"
            headers = self._header_cache[slot] = self._headers(key, accept)
        d = self.agent.request(b"POST", self._url, headers, BytesProducer(body))
        return with_timeout(d, self.clock, self.config.timeout if timeout is None else timeout)

    async def models(self) -> list[str]:
        """
        The upstream's models (kept for L{MODELS_TTL}), or the configured
        ones when it cannot say: it failed less than L{MODELS_RETRY} ago,
        or failed now.  Callers share one request to the upstream; a caller
        that stops waiting (cancels) leaves it running for the others and
        for the caches.
        """
        if not self.config.keys and self.config.key_env:
            return list(self.config.models)
        now = self.clock.seconds()
        if self._models is not None and now - self._models_at < MODELS_TTL:
            return self._models
        if self._failed_at is not None and now - self._failed_at < MODELS_RETRY:
            return list(self.config.models)
        if self._fetching is None:
            fetching = Deferred.fromCoroutine(self._refresh())
            if not fetching.called:
                self._fetching = fetching
                fetching.addBoth(self._fetched)
        if self._fetching is not None:
            waiter: Deferred[None] = Deferred()
            self._fetching.addBoth(_wake, waiter)
            await waiter
        if self._models is not None and self._models_at >= now:
            return self._models
        return list(self.config.models)

    def _fetched(self, result: object) -> None:
        self._fetching = None

    async def _refresh(self) -> None:
        """
        Ask the upstream and keep what it said, or when it failed.
        """
        try:
            found = await self._fetch_models()
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn("{backend}: cannot list models upstream ({error}); using config",
                          backend=self.config.name, error=type(e).__name__)
            self._failed_at = self.clock.seconds()
            return
        self._models, self._models_at, self._failed_at = found, self.clock.seconds(), None

    async def _fetch_models(self) -> list[str]:
        """
        Ask the upstream's C{/models}.
        """
        key = self.config.keys[0] if self.config.keys else None
        data = await self._get_json((self.config.base_url + "/models").encode(),
                                    self._headers(key, b"application/json"))
        ids = [m["id"] for m in data.get("data", [])
               if isinstance(m, dict) and isinstance(m.get("id"), str)]
        return ids or list(self.config.models)

    async def _get_json(self, url: bytes, headers: Headers) -> Any:
        """
        GET C{url} and parse its 200 answer, within one deadline for headers
        and body together (a stalled body is cut, and cancelling drops it).

        @raise ValueError: for another status, or a body that is no JSON.
        """
        deadline = min(self.config.timeout, MODELS_DEADLINE)

        async def fetch() -> bytes:
            response = await self.agent.request(b"GET", url, headers)
            body = await collect_body(response, self.clock, deadline, MODELS_MAX_BYTES)
            if response.code != 200:
                raise ValueError(f"status {response.code}")
            return body

        return json.loads(
            await with_timeout(Deferred.fromCoroutine(fetch()), self.clock, deadline))

    def close(self) -> None:
        pass


def _wake(result: object, waiter: Deferred[None]) -> object:
    """
    Fire C{waiter} (unless its caller gave up on it), passing C{result} on.
    """
    if not waiter.called:
        waiter.callback(None)
    return result


def with_timeout(d: Deferred[Any], clock: IReactorTime, seconds: float) -> Deferred[Any]:
    """
    Cancel C{d} after C{seconds}, failing it with L{FirstByteTimeout}
    instead of whatever the cancellation caused; a cancellation from
    elsewhere is left as it is.
    """
    if seconds <= 0:
        return d
    fired = []

    def expire() -> None:
        fired.append(True)
        d.cancel()

    call = clock.callLater(seconds, expire)

    def done(result: Any) -> Any:
        if call.active():
            call.cancel()
        if fired and isinstance(result, Failure):
            return Failure(FirstByteTimeout(f"no response from upstream within {seconds:g} s"))
        return result

    return d.addBoth(done)


class OpenAIResponsesBackend(OpenAIBackend):
    """
    An OpenAI-compatible upstream speaking the Responses API.
    """

    dialect = RESPONSES


def build_chat(config: BackendConfig, context: BackendContext) -> OpenAIBackend:
    return OpenAIBackend(config, context.pool, context.reactor, context.clock)


def build_responses(config: BackendConfig, context: BackendContext) -> OpenAIBackend:
    return OpenAIResponsesBackend(config, context.pool, context.reactor, context.clock)


#: C{type: openai}: Chat Completions, to OpenAI or any compatible server;
#: part of the demo configuration.
OPENAI = BackendType(
    BackendKind("openai", default_url=DEFAULT_URL, openai_env=True, demo=True), build_chat)
#: C{type: openai-responses}: the Responses API.
OPENAI_RESPONSES = BackendType(
    BackendKind("openai-responses", default_url=DEFAULT_URL, openai_env=True), build_responses)
