# -*- test-case-name: tests.test_proxy -*-
"""
What every backend offers the request pipeline.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorPluggableNameResolver, IReactorTCP, IReactorTime
from twisted.web.iweb import IResponse

from llmproxy.config import ApiKey, BackendConfig



class IUpstreamReactor(IReactorTCP, IReactorTime, IReactorPluggableNameResolver):
    """
    What connecting to an upstream takes (L{HostnameEndpoint}'s needs):
    TCP, timers for its connection attempts, and name resolution.
    """


class FirstByteTimeout(Exception):
    """
    The upstream accepted the request but sent no response byte in time.
    """


class Backend(Protocol):
    """
    A backend instance: it speaks one dialect and sends bodies upstream.

    @ivar dialect: L{CHAT} or L{RESPONSES}, the API the upstream speaks.
    @ivar streams_only: whether the upstream answers only streams (the
        ChatGPT backend).  A client that wants a whole answer is then sent
        as a stream (C{send(..., stream=True)}; making the body say
        C{stream: true} is the backend's own adapt step), and the stream is
        aggregated into the whole answer
        (L{llmproxy.exchange.aggregated}); Responses backends only.  A
        backend without the attribute is taken to answer whole bodies.
    """

    config: BackendConfig
    dialect: str
    streams_only: bool

    def send(
        self, body: bytes, key: ApiKey | None, stream: bool, timeout: float | None = None
    ) -> Deferred[IResponse]:
        """
        POST C{body} to the dialect's path.  Fires with the response once
        its headers arrived; fails with L{FirstByteTimeout} when they do not
        arrive within C{timeout} seconds (default: the backend's timeout).  Cancelling it aborts the
        request.
        """

    async def models(self) -> list[str]:
        """
        The model ids this backend serves.
        """

    def close(self) -> None:
        """
        Release anything the backend holds (called at service stop).
        """
