"""
Shared fixtures: the fake upstream and llmproxy, both in-process on port 0,
and clients (treq, and the OpenAI SDK in a thread).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, TypeVar

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from llmproxy.backends import REGISTRY
from llmproxy.config import Config, build_config
from llmproxy.service import ProxyService
from llmproxy.testing import FakeOpenAI, listen_fake

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
    A config with one openai backend at the fake and one key.
    """
    data: dict[str, Any] = {
        "default_backend": "openai",
        "backends": {"openai": {"type": "openai", "base_url": upstream, "api_key": "sk-test-1"}},
    }
    data.update(extra)
    return data


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
