# -*- test-case-name: tests.test_proxy -*-
"""
The HTTP surface: Klein routes for the OpenAI endpoints, client auth, body
parsing (once per request) and OpenAI-shaped errors for everything.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any, Mapping, cast

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from werkzeug.exceptions import MethodNotAllowed, NotFound

from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.config import Config
from llmproxy.errors import AuthenticationFailed, InvalidRequest, ProxyError
from llmproxy.exchange.exchange import Exchange
from llmproxy.exchange.runtime import Upstreams
from llmproxy.frontends.store import ResponseStore
from llmproxy.routing.aliases import alias_targets
from llmproxy.routing.resolve import Router
from llmproxy.translate.transforms import in_band_error

_JSON = b"application/json"


class LimitedRequest(Request):
    """
    A request that stops buffering its body past the configured limit, so
    an oversized upload costs no memory; the handler answers 413.
    """

    max_body: int = 32 * 1024 * 1024
    too_large = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        assert self.content is not None  # gotLength() made it
        if self.content.tell() + len(data) > self.max_body:
            self.too_large = True
            return
        super().handleContentChunk(data)


class ProxySite(Site):
    """
    A site with no per-request access log unless it is asked for.
    """

    noisy = False
    access_log = False

    def log(self, request: http.Request) -> None:
        if self.access_log:
            super().log(request)


def _json(request: IRequest, status: int, body: Any) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", _JSON)
    request.setHeader(b"content-length", str(len(data)).encode())
    return data


def _gone(request: Request) -> bool:
    """
    Whether nothing more can be written: finished, or the client left (a
    request loses its channel when its connection is lost).
    """
    return bool(request.finished) or request.channel is None


class _Root(Resource):
    """
    The site's root: the two hot POST routes are dispatched directly (Klein's
    per-request routing costs more than it gives there); every other request,
    and every other method on those paths, goes through Klein.
    """

    isLeaf = True

    def __init__(self, app: ProxyApp) -> None:
        super().__init__()
        self.app = app
        self.klein = app.app.resource()
        self.hot = {
            b"/v1/chat/completions": app.chat_completions,
            b"/v1/responses": app.responses,
        }

    def render(self, request: Request) -> bytes | int:
        if request.getHeader(b"x-llmproxy-loop-guard") is not None:
            # Before auth: a proxy pointed at itself must not mark its own
            # key invalid, and no route (models included) may recurse.
            return _json(request, 400, InvalidRequest(
                "This request already passed through llmproxy (proxy loop)",
                code="proxy_loop_detected").to_json())
        handler = self.hot.get(request.path) if request.method == b"POST" else None
        if handler is None:
            # KleinResource.render returns bytes or NOT_DONE_YET, never the
            # other renderables its annotation allows.
            return cast("bytes | int", self.klein.render(request))
        d = Deferred.fromCoroutine(handler(request))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(self._done, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _done(self, body: bytes | None, request: Request) -> None:
        if _gone(request):
            return
        if body:
            request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if _gone(request):
            if not failure.check(CancelledError):
                self.app.log.failure("after the client left", failure)
            return
        body = self.app.render_failure(request, failure)
        if request.startedWriting:
            # The event stream is already out: the error goes in-band.
            error = failure.value if isinstance(failure.value, ProxyError) else ProxyError(
                "Internal error in llmproxy", code="internal_error")
            body = in_band_error(CHAT if request.path == b"/v1/chat/completions" else RESPONSES,
                                 error)
        self._done(body, request)


def _too_deep() -> InvalidRequest:
    return InvalidRequest("The request body is nested too deeply", code="invalid_json")


def _check_fields(body: Mapping[str, Any], dialect: str) -> None:
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options",
                             code="invalid_type")
    if dialect == CHAT:
        messages = body.get("messages")
        if messages is None:
            raise InvalidRequest("you must provide a messages parameter", param="messages",
                                 code="missing_required_parameter")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) for m in messages
        ):
            raise InvalidRequest("'messages' must be a non-empty array of message objects",
                                 param="messages", code="invalid_type")
    elif "input" not in body and "messages" not in body and not body.get("previous_response_id"):
        raise InvalidRequest("you must provide an input parameter", param="input",
                             code="missing_required_parameter")


class ProxyApp:
    """
    The llmproxy web application.
    """

    app = Klein()
    log = Logger()

    def __init__(
        self, config: Config, upstreams: Upstreams, clock: IReactorTime,
        store: ResponseStore | None = None,
    ) -> None:
        self.config = config
        self.upstreams = upstreams
        self.clock = clock
        self.store = store or ResponseStore(clock, config.responses_store_size,
                                            config.responses_store_ttl)
        self._keys = [k.encode("utf-8") for k in config.proxy_keys]
        self.router = Router(config)

    def site(self) -> Site:
        """
        A L{Site} serving this application.
        """
        limit = self.config.max_body_bytes

        class _Request(LimitedRequest):
            max_body = limit

        # No form parsing: every body is JSON, and Twisted's Content-Type
        # check for forms costs an email.message per request.
        site = ProxySite(_Root(self), requestFactory=_Request,
                         parsePOSTFormSubmission=False)
        site.access_log = self.config.access_log
        return site

    # request helpers

    def _authorize(self, request: IRequest) -> None:
        if not self.config.auth_enabled:
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise AuthenticationFailed(
                "Missing proxy key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        if not ok:
            raise AuthenticationFailed("Incorrect proxy key provided", code="invalid_api_key")

    def _body(self, request: Request, dialect: str) -> tuple[dict[str, Any], bytes]:
        self._authorize(request)
        if getattr(request, "too_large", False):
            raise ProxyError(
                f"Request body larger than {self.config.max_body_bytes} bytes",
                status=413, type="invalid_request_error", code="request_too_large",
            )
        assert request.content is not None  # gotLength() made it
        request.content.seek(0)
        raw = request.content.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest(
                "We could not parse the JSON body of your request. The body must be valid JSON.",
                code="invalid_json",
            )
        except RecursionError:
            raise _too_deep()
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
        _check_fields(body, dialect)
        return body, raw

    # routes

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        return _json(request, 200, {"status": "ok"})

    @app.route("/v1/models", methods=["GET"])
    async def models(self, request: IRequest) -> bytes:
        self._authorize(request)
        return _json(request, 200, {"object": "list", "data": await self._model_list()})

    @app.route("/v1/models/<path:model>", methods=["GET"])
    async def model(self, request: IRequest, model: str) -> bytes:
        self._authorize(request)
        for entry in await self._model_list():
            if entry["id"] == model:
                return _json(request, 200, entry)
        raise ProxyError(f"The model '{model}' does not exist", status=404,
                         type="invalid_request_error", param="model", code="model_not_found")

    async def _model_list(self) -> list[dict[str, Any]]:
        created = int(self.clock.seconds())
        entries: dict[str, dict[str, Any]] = {}

        def add(ident: str, owner: str) -> None:
            entries.setdefault(ident, {"id": ident, "object": "model", "created": created,
                                       "owned_by": owner})

        for name, backend in self.upstreams.backends.items():
            try:
                found = await backend.models()
            except CancelledError:
                raise
            except Exception:
                found = list(backend.config.models)
            for model in found:
                if name == self.config.default_backend:
                    add(model, name)
                add(f"{name}:{model}", name)
        for target in alias_targets(self.config.model_aliases):
            add(target, "llmproxy")
        return list(entries.values())

    @app.route("/v1/llmproxy/status", methods=["GET"])
    def status(self, request: IRequest) -> bytes:
        self._authorize(request)
        up = self.upstreams
        return _json(request, 200, {
            "backends": {
                name: {
                    "type": up.backends[name].config.type,
                    "circuit": up.breakers[name].status(),
                    "keys": up.pools[name].status(),
                }
                for name in up.backends
            }
        })

    @app.route("/v1/chat/completions", methods=["POST"])
    async def chat_completions(self, request: Request) -> bytes | None:
        body, raw = self._body(request, CHAT)
        return await self._serve(request, body, raw, CHAT)

    @app.route("/v1/responses", methods=["POST"])
    async def responses(self, request: Request) -> bytes | None:
        body, raw = self._body(request, RESPONSES)
        history: tuple[Mapping[str, Any], ...] | None = ()
        previous = body.get("previous_response_id")
        if previous is not None:
            if not isinstance(previous, str):
                raise InvalidRequest("'previous_response_id' must be a string",
                                     param="previous_response_id", code="invalid_type")
            history = self.store.history(previous)

        def on_response(data: bytes) -> None:
            self.store.remember(body, history or (), data)

        return await self._serve(request, body, raw, RESPONSES, history, on_response)

    async def _serve(
        self, request: Request, body: dict[str, Any], raw: bytes, dialect: str,
        history: tuple[Mapping[str, Any], ...] | None = (), on_response: Any = None,
    ) -> bytes | None:
        route = self.router.resolve(body, dialect)
        for target in route.targets:
            for warning in target.warnings:
                self.log.warn("{note}", note=warning)
        exchange = Exchange(request, self.config, self.upstreams, self.clock, dialect,
                            body, raw, history, on_response)
        try:
            out = await exchange.run(route)
        except CancelledError:
            raise
        except RecursionError:
            raise _too_deep()
        except ProxyError as e:
            if exchange.write_late_error(e):
                return None
            raise
        if out is not None:
            request.setHeader(b"content-length", str(len(out)).encode())
        return out

    # errors

    def render_failure(self, request: IRequest, failure: Failure) -> bytes | None:
        """
        The body for a failed handler, as the Klein error handlers below
        would render it.
        """
        if failure.check(ProxyError):
            return self.proxy_error(request, failure)
        return self.internal_error(request, failure)

    @app.handle_errors(ProxyError)
    def proxy_error(self, request: IRequest, failure: Failure) -> bytes:
        error = cast(ProxyError, failure.value)  # registered for ProxyError only
        for name, value in error.headers.items():
            request.setHeader(name.encode(), value.encode())
        return _json(request, error.status, error.to_json())

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        path = request.path.decode("utf-8", "replace")
        return _json(request, 404, ProxyError(
            f"Unknown path {path}", type="invalid_request_error", code="unknown_url"
        ).to_json())

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        method = request.method.decode("ascii", "replace")
        return _json(request, 405, ProxyError(
            f"Method {method} is not allowed here", type="invalid_request_error",
            code="method_not_allowed",
        ).to_json())

    @app.handle_errors(Exception)  # = the bare form, which klein's overloads mistype
    def internal_error(self, request: IRequest, failure: Failure) -> bytes | None:
        if failure.check(CancelledError):
            return None
        ident = "req_" + secrets.token_hex(8)
        self.log.failure("internal error in request {ident}", failure, ident=ident)
        return _json(request, 500, ProxyError(
            f"Internal error in llmproxy (request id {ident})", code="internal_error"
        ).to_json())
