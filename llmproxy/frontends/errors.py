# -*- test-case-name: tests.test_proxy -*-
"""
JSON answers, and the OpenAI-shaped body of every error the HTTP surface
gives: llmproxy's own errors, unknown paths, wrong methods, and internal
errors (logged under a request id, which alone reaches the client).
"""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from llmproxy.errors import InvalidRequest, ProxyError

JSON = b"application/json"


def json_answer(request: IRequest, status: int, body: Any) -> bytes:
    """
    Set C{status} and the JSON headers; the bytes of C{body} to write.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"content-length", str(len(data)).encode())
    return data


def proxy_error(request: IRequest, error: ProxyError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return json_answer(request, error.status, error.to_json())


def unknown_path(request: IRequest) -> bytes:
    path = request.path.decode("utf-8", "replace")
    return json_answer(request, 404, ProxyError(
        f"Unknown path {path}", type="invalid_request_error", code="unknown_url"
    ).to_json())


def method_not_allowed(request: IRequest) -> bytes:
    method = request.method.decode("ascii", "replace")
    return json_answer(request, 405, ProxyError(
        f"Method {method} is not allowed here", type="invalid_request_error",
        code="method_not_allowed",
    ).to_json())


def not_implemented(request: IRequest) -> bytes:
    method = request.method[:40].decode("ascii", "backslashreplace")
    return json_answer(request, 501, ProxyError(
        f"Method {method} is not implemented", type="invalid_request_error",
        code="method_not_implemented",
    ).to_json())


def internal_error(request: IRequest, failure: Failure, log: Logger) -> bytes | None:
    """
    A 500 naming a fresh request id, the traceback logged under it; none
    for a cancelled request (its client left).
    """
    if failure.check(CancelledError):
        return None
    ident = "req_" + secrets.token_hex(8)
    log.failure("internal error in request {ident}", failure, ident=ident)
    return json_answer(request, 500, ProxyError(
        f"Internal error in llmproxy (request id {ident})", code="internal_error"
    ).to_json())


def render_failure(request: IRequest, failure: Failure, log: Logger) -> bytes | None:
    """
    The body for a failed handler.
    """
    if failure.check(ProxyError):
        return proxy_error(request, cast(ProxyError, failure.value))
    return internal_error(request, failure, log)


def too_deep() -> InvalidRequest:
    return InvalidRequest("The request body is nested too deeply", code="invalid_json")


__all__ = [
    "JSON", "internal_error", "json_answer", "method_not_allowed", "not_implemented",
    "proxy_error",
    "render_failure", "too_deep", "unknown_path",
]
