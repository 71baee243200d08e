"""
The floor: the least a Twisted proxy can do.  A bare twisted.web resource
that forwards each request's body bytes to the upstream with an L{Agent}
over a persistent L{HTTPConnectionPool} and relays the response body back
as it arrives (streams included), parsing nothing.

llmproxy cannot be faster than this on the same stack; the bench reports
llmproxy against it.

Run: C{python -m bench.floor --port P --upstream http://127.0.0.1:U/v1/chat/completions}
"""

from __future__ import annotations

import argparse
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

_FORWARDED = (b"content-type", b"accept")


@implementer(IBodyProducer)
class Body:
    """
    Request body bytes already in memory.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _client_left(request: server.Request) -> bool:
    return request.channel is None or bool(getattr(request, "_disconnected", False))


class Discard(Protocol):
    """
    Drop an upstream body nobody waits for any more.
    """

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class Relay(Protocol):
    """
    Write each piece of the upstream body to the client as it arrives;
    the client's backpressure pauses the upstream.
    """

    def __init__(self, request: server.Request) -> None:
        self.request = request
        self.gone = False

    def connectionMade(self) -> None:
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self.gone:
            self.request.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.gone:
            return
        self.request.unregisterProducer()
        self.request.finish()


class Forward(resource.Resource):
    """
    POST anything: forward the body to the upstream URL.
    """

    isLeaf = True

    def __init__(self, agent: Agent, url: bytes) -> None:
        super().__init__()
        self.agent = agent
        self.url = url

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"status":"ok"}'

    def render_POST(self, request: server.Request) -> Any:
        headers = Headers()
        for name in _FORWARDED:
            value = request.requestHeaders.getRawHeaders(name)
            if value:
                headers.setRawHeaders(name, value)
        assert request.content is not None
        body: Any = Body(request.content.read())
        d = self.agent.request(b"POST", self.url, headers, body)
        d.addCallbacks(self._relay, self._failed, callbackArgs=(request,),
                       errbackArgs=(request,))
        return server.NOT_DONE_YET

    def _relay(self, response: Any, request: server.Request) -> None:
        if _client_left(request):
            response.deliverBody(Discard())
            return
        request.setResponseCode(response.code)
        for name in (b"content-type",):
            value = response.headers.getRawHeaders(name)
            if value:
                request.responseHeaders.setRawHeaders(name, value)
        if response.length is not UNKNOWN_LENGTH:
            request.setHeader(b"content-length", str(response.length).encode())
        relay = Relay(request)
        request.notifyFinish().addErrback(lambda _: _client_gone(relay))
        response.deliverBody(relay)

    def _failed(self, failure: Failure, request: server.Request) -> None:
        if _client_left(request):
            return
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"application/json")
        request.write(b'{"error":{"message":"upstream failed","type":"server_error"}}')
        request.finish()


def _client_gone(relay: Relay) -> None:
    relay.gone = True
    if relay.transport is not None:
        relay.transport.stopProducing()


class QuietSite(server.Site):
    """
    No access log (llmproxy has none by default either), and no parsing of
    POST bodies as HTML forms: the floor parses nothing.
    """

    noisy = False

    def __init__(self, root: resource.Resource) -> None:
        try:
            super().__init__(root, parsePOSTFormSubmission=False)
        except TypeError:  # Twisted without the option
            super().__init__(root)

    def log(self, request: Any) -> None:
        pass


def make_site(reactor: Any, upstream: str, max_per_host: int = 256) -> QuietSite:
    """
    The floor's site, forwarding to C{upstream}.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max_per_host
    pool.retryAutomatically = False
    return QuietSite(Forward(Agent(reactor, pool=pool), upstream.encode()))


def main(argv: list[str] | None = None) -> None:
    """
    Serve the floor on 127.0.0.1:PORT.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="full upstream URL")
    parser.add_argument("--max-per-host", type=int, default=256)
    args = parser.parse_args(argv)
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    site = make_site(reactor, args.upstream, args.max_per_host)
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
