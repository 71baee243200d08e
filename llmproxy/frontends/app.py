# -*- test-case-name: tests.test_proxy -*-
"""
The HTTP surface: the OpenAI endpoints (the two hot POSTs in one table,
L{hot_routes}; Klein for every other route), client auth, body parsing
(once per request, L{llmproxy.frontends.body}) and OpenAI-shaped errors for everything.

The application reads its L{Runtime} once per request; assigning a new one
to C{runtime} serves the requests to come with it, while the requests in
flight keep theirs.
"""

from __future__ import annotations

from typing import Any, Mapping, cast

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from llmproxy.config import Config
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import AuthenticationFailed, InvalidRequest, ProxyError
from llmproxy.exchange import planning
from llmproxy.exchange.events import ExchangeEvents
from llmproxy.exchange.exchange import Call, Exchange
from llmproxy.exchange.runtime import Runtime, Upstreams
from llmproxy.exchange.sessions import Sessions
from llmproxy.routing.conversation import Conversation, conversation_of
from llmproxy.frontends import errors
from llmproxy.frontends.access import AccessLog
from llmproxy.frontends.auth import check_key
from llmproxy.frontends.body import check_fields, parse_body
from llmproxy.frontends.errors import json_answer, too_deep
from llmproxy.frontends.hot import HotRoute, Root
from llmproxy.frontends.models import ModelListing
from llmproxy.frontends.site import ProxyRequest, ProxySite
from llmproxy.frontends.store import ResponseStore
from llmproxy.frontends.usage import pooled_usage


class ProxyApp:
    """
    The llmproxy web application.

    @ivar runtime: what requests run on; swap it to serve the requests to
        come with another configuration (L{Runtime.successor}).
    @ivar events: the exchange's attempt and reply events; add observers
        there (the access log is one).
    """

    app = Klein()
    # Before any route: each rule takes the map's setting when added.  Paths
    # are matched as they are, '//' included (see hot.py), never redirected.
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(
        self, config: Config, upstreams: Upstreams, clock: IReactorTime,
        store: ResponseStore | None = None, sessions: Sessions | None = None,
    ) -> None:
        self.runtime = Runtime.of(config, upstreams, clock, sessions)
        self.clock = clock
        self.store = store or ResponseStore(clock, config.responses_store_size,
                                            config.responses_store_ttl)
        self.events = ExchangeEvents()
        self.listing = ModelListing(clock)
        #: The site's request class (capture puts its own).
        self.request_factory: type[ProxyRequest] = ProxyRequest
        if config.access_log:
            self.events.addObserver(AccessLog())

    def hot_routes(self) -> dict[bytes, HotRoute]:
        """
        The routes that carry the traffic, served without Klein.
        """
        return {
            b"/v1/chat/completions": HotRoute(CHAT, self.chat_completions),
            b"/v1/responses": HotRoute(RESPONSES, self.responses),
        }

    def site(self) -> Site:
        """
        A L{Site} serving this application.
        """
        # No form parsing: every body is JSON, and Twisted's Content-Type
        # check for forms costs an email.message per request.
        return ProxySite(Root(self.hot_routes(), self.app.resource(), self.log), self.events,
                         self.clock, self.admit, requestFactory=self.request_factory,
                         parsePOSTFormSubmission=False)

    def admit(self, request: http.Request, path: bytes) -> int:
        """
        The site's gate, at the end of a request's headers, before its body:
        every path but C{/healthz} needs a proxy key (a request that already
        went through llmproxy is let on, to be refused as a loop).  The body
        limit in bytes.

        @raise AuthenticationFailed: no key, or a wrong one.
        """
        runtime = self.runtime
        if path != b"/healthz":
            headers = request.requestHeaders
            try:
                check_key(runtime, headers.getRawHeaders(b"authorization"))
            except AuthenticationFailed:
                if not headers.hasHeader(b"x-llmproxy-loop-guard"):
                    raise
            else:
                if isinstance(request, ProxyRequest):
                    request.admitted = runtime
        return runtime.config.max_body_bytes

    # request helpers

    def _authorize(self, request: IRequest, runtime: Runtime) -> None:
        if getattr(request, "admitted", None) is runtime:
            return  # the site's gate checked this key against this runtime
        check_key(runtime, request.requestHeaders.getRawHeaders(b"authorization"))

    def _body(
        self, request: Request, dialect: str, runtime: Runtime
    ) -> tuple[dict[str, Any], bytes]:
        self._authorize(request, runtime)
        assert request.content is not None  # gotLength() made it
        request.content.seek(0)
        raw = request.content.read()
        body = parse_body(raw)
        check_fields(body, dialect)
        return body, raw

    # Klein routes

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        return json_answer(request, 200, {"status": "ok"})

    @app.route("/v1/models", methods=["GET"])
    async def models(self, request: IRequest) -> bytes:
        runtime = self.runtime
        self._authorize(request, runtime)
        return json_answer(request, 200, {"object": "list",
                                          "data": await self.listing.entries(runtime)})

    @app.route("/v1/models/<path:model>", methods=["GET"])
    async def model(self, request: IRequest, model: str) -> bytes:
        runtime = self.runtime
        self._authorize(request, runtime)
        for entry in await self.listing.entries(runtime):
            if entry["id"] == model:
                return json_answer(request, 200, entry)
        raise ProxyError(f"The model '{model}' does not exist", status=404,
                         type="invalid_request_error", param="model", code="model_not_found")

    @app.route("/v1/llmproxy/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        runtime = self.runtime
        self._authorize(request, runtime)
        up = runtime.upstreams
        backends: dict[str, Any] = {}
        for name, backend in up.backends.items():
            pool = up.pools[name]
            entry = backends[name] = {
                "type": backend.config.type,
                "circuits": up.breakers[name].status(),
                "keys": [{**key, "prompt_cache": pool.prompt_cache.shown(key["name"])}
                         for key in pool.status()],
            }
            # Backends whose keys are accounts say more of them.
            accounts = getattr(backend, "accounts_status", None)
            if accounts is not None:
                entry["accounts"] = accounts()
        return json_answer(request, 200, {"backends": backends,
                                          "state": self.store.state.status().shown()})

    @app.route("/backend-api/wham/usage", methods=["GET"])
    @app.route("/api/codex/usage", methods=["GET"])
    async def usage(self, request: IRequest) -> bytes:
        """
        The pooled usage limits of the subscription accounts, as the Codex
        CLI asks ChatGPT for its own (L{llmproxy.frontends.usage}).
        """
        runtime = self.runtime
        self._authorize(request, runtime)
        return json_answer(request, 200, await pooled_usage(runtime, self.clock.seconds()))

    # the hot routes (see hot_routes)

    async def chat_completions(self, request: Request) -> bytes | None:
        runtime = self.runtime
        body, raw = self._body(request, CHAT, runtime)
        return await self._serve(request, runtime,
                                 Call(CHAT, body, raw, conversation=_conversation(request, body)))

    async def responses(self, request: Request) -> bytes | None:
        runtime = self.runtime
        body, raw = self._body(request, RESPONSES, runtime)
        history: tuple[Mapping[str, Any], ...] | None = ()
        found = root = None
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise InvalidRequest("'previous_response_id' must be a string",
                                     param="previous_response_id", code="invalid_type")
            found = await self.store.find(previous)
            history, root = (found.messages, found.root) if found else (None, previous)

        writes: list[Deferred[None]] = []

        def on_response(data: bytes) -> None:
            written = self.store.remember(body, found, data)
            if written is not None:
                writes.append(written)

        out = await self._serve(request, runtime, Call(
            RESPONSES, body, raw, history, on_response, _conversation(request, body, root)))
        for written in writes:  # shared before the client can name it elsewhere
            await written
        return out

    async def _serve(self, request: Request, runtime: Runtime, call: Call) -> bytes | None:
        phase = None
        if call.conversation is not None:
            request.setHeader(b"x-llmproxy-session", call.conversation.shown.encode("ascii"))
            phase = await planning.enter(runtime, call)
        if phase is not None:
            request.setHeader(planning.HEADER, phase.header)
            route = phase.route
        else:
            route = runtime.router.resolve(call.body, call.frontend)
        for target in route.targets:
            for warning in target.warnings:
                self.log.warn("{note}", note=warning)
        exchange = Exchange(request, call, runtime, self.events)
        if isinstance(request, ProxyRequest):
            request.note = exchange.note
        try:
            out = await exchange.run(route)
        except CancelledError:
            raise
        except RecursionError:
            raise too_deep()
        except ProxyError as e:
            if exchange.write_late_error(e):
                return None
            raise
        if phase is not None:
            await phase.finish()
        if out is not None:
            request.setHeader(b"content-length", str(len(out)).encode())
        return out

    # errors, for Klein's routes (the hot routes' are rendered by Root)

    @app.handle_errors(ProxyError)
    def proxy_error(self, request: IRequest, failure: Failure) -> bytes:
        # registered for ProxyError only
        return errors.proxy_error(request, cast(ProxyError, failure.value))

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return errors.unknown_path(request)

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return errors.method_not_allowed(request)

    @app.handle_errors(Exception)  # = the bare form, which klein's overloads mistype
    def internal_error(self, request: IRequest, failure: Failure) -> bytes | None:
        return errors.internal_error(request, failure, self.log)


__all__ = ["ProxyApp"]


def _conversation(
    request: Request, body: Mapping[str, Any], root: str | None = None
) -> Conversation | None:
    """
    The conversation the request names (L{conversation_of}), scoped to the
    client's own credential so two clients' equal ids never meet.
    """
    def header(name: str) -> str | None:
        value = request.getHeader(name.encode("ascii"))
        return value.decode("latin-1") if value else None

    scope = request.getHeader(b"authorization") or b""
    return conversation_of(header, body, root, scope.decode("latin-1"))
