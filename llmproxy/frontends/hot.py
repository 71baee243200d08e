# -*- test-case-name: tests.test_hot_routes -*-
"""
The site's root: the two hot routes (the POSTs that carry the traffic) are
declared once, in one table, and dispatched straight to their handlers,
since Klein's per-request URL matching costs more than it gives there.
Every other request goes to Klein; another method on a hot path gets the
same JSON 405 Klein gives elsewhere, and a method llmproxy does not know
anywhere gets a JSON 501.  Paths match as they are: a repeated slash is an
unknown path (a JSON 404), on every route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Mapping, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from llmproxy.errors import InvalidRequest, ProxyError
from llmproxy.exchange.transform import response_id
from llmproxy.frontends.errors import (
    json_answer, method_not_allowed, not_implemented, render_failure, unknown_path,
)
from llmproxy.frontends.rejections import bad_host
from llmproxy.translate.transforms import in_band_error

#: The methods some route could allow: any other is a 501 everywhere,
#: these a 405 where the route does not allow them (RFC 9110 15.5.6, 15.6.2).
METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"})

#: A hot route's handler: the body to write, or L{None} when it wrote it.
Handler = Callable[[Request], Coroutine[Any, Any, "bytes | None"]]


@dataclass(frozen=True)
class HotRoute:
    """
    A POST route served without Klein, and the dialect its errors take
    once its event stream started.
    """

    dialect: str
    handler: Handler


def _klein_path(request: Request) -> bool:
    """
    Whether Klein may see the request's path: Klein would turn a leading
    C{//} into C{/} (it rebuilds the path from its segments) and log a
    traceback for a path that is not UTF-8 once percent-decoded.
    """
    if b"//" in request.path:
        return False
    try:
        b"/".join(request.postpath or ()).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _klein_host(request: Request) -> bool:
    """
    Whether Klein can route for the request's host name: werkzeug binds its
    URL map to it, IDNA-encoded, and raises (a bare 500 from Klein) for a
    name IDNA refuses (an empty label, one over 63 octets).
    """
    try:
        request.getRequestHostname().decode("utf-8").encode("idna")
    except UnicodeError:
        return False
    return True


def _gone(request: Request) -> bool:
    """
    Whether nothing more can be written: finished, or the client left (a
    request loses its channel when its connection is lost).
    """
    return bool(request.finished) or request.channel is None


class Root(Resource):
    """
    Dispatch the hot routes of C{hot} (by exact path) directly, and every
    other request to C{fallback} (Klein).  Before anything, a request that
    already went through llmproxy is refused, and so is a method outside
    L{METHODS}.
    """

    isLeaf = True

    def __init__(self, hot: Mapping[bytes, HotRoute], fallback: IResource, log: Logger) -> None:
        super().__init__()
        self.hot = hot
        self.fallback = fallback
        self.log = log

    def render(self, request: Request) -> bytes | int:
        if request.getHeader(b"x-llmproxy-loop-guard") is not None:
            # Before auth: a proxy pointed at itself must not mark its own
            # key invalid, and no route (models included) may recurse.
            return json_answer(request, 400, InvalidRequest(
                "This request already passed through llmproxy (proxy loop)",
                code="proxy_loop_detected").to_json())
        if request.method not in METHODS:
            return not_implemented(request)
        route = self.hot.get(request.path)
        if route is None:
            if not _klein_path(request):
                return unknown_path(request)
            if not _klein_host(request):
                return json_answer(request, 400, bad_host().to_json())
            # KleinResource.render returns bytes or NOT_DONE_YET, never the
            # other renderables its annotation allows.
            return cast("bytes | int", self.fallback.render(request))
        if request.method != b"POST":
            self._done(method_not_allowed(request), request)
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(route.handler(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(self._done, self._failed, callbackArgs=(request,),
                       errbackArgs=(request, route))
        return NOT_DONE_YET

    def _done(self, body: bytes | None, request: Request) -> None:
        if _gone(request):
            return
        if body:
            request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request, route: HotRoute) -> None:
        if _gone(request):
            if not failure.check(CancelledError):
                self.log.failure("after the client left", failure)
            return
        body = render_failure(request, failure, self.log)
        if request.startedWriting:
            # The event stream is already out: the error goes in-band.
            error = failure.value if isinstance(failure.value, ProxyError) else ProxyError(
                "Internal error in llmproxy", code="internal_error")
            body = in_band_error(route.dialect, error, response_id())
        self._done(body, request)


__all__ = ["METHODS", "Handler", "HotRoute", "Root"]
