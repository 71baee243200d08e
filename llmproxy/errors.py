# -*- test-case-name: tests.test_errors -*-
"""
OpenAI-shaped errors.

Every error llmproxy itself produces is a L{ProxyError}: it carries the HTTP
status, the OpenAI error C{type}, C{code} and C{param}, and renders as
C{{"error": {"message", "type", "param", "code"}}}.  Nothing here ever
includes a key value or a traceback.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


class ProxyError(Exception):
    """
    An error to be returned to the client in OpenAI's shape.

    @ivar status: the HTTP status code.
    @ivar message: human-readable text, safe to show the client.
    @ivar type: the OpenAI error type (C{invalid_request_error}, ...).
    @ivar code: a machine-readable code, or L{None}.
    @ivar param: the request parameter at fault, or L{None}.
    @ivar headers: extra response headers (e.g. C{retry-after}).
    """

    status: int = 500
    type: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.code = code
        self.param = param
        self.headers: Mapping[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """
        The JSON-ready error object.
        """
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        """
        The error body as UTF-8 JSON bytes.
        """
        return json.dumps(self.body()).encode("utf-8")


class InvalidRequest(ProxyError):
    """
    The client sent something we cannot serve (HTTP 400).
    """

    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ProxyError):
    """
    Missing or wrong proxy key (HTTP 401).
    """

    status = 401
    type = "invalid_request_error"


class UpstreamError(ProxyError):
    """
    The upstream could not be reached or failed (HTTP 502 by default).
    """

    status = 502
    type = "server_error"


def error_body(
    message: str,
    type: str = "server_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """
    Build an OpenAI error object without raising.
    """
    return ProxyError(message, type=type, code=code, param=param).body()


class StreamTimeout(UpstreamError):
    """
    The upstream sent nothing for longer than the idle timeout.
    """

    status = 504


class StreamBroken(UpstreamError):
    """
    The upstream connection ended before the stream was complete.
    """


class FirstTokenTimeout(StreamTimeout):
    """
    A streamed answer did not start within C{first_token_timeout}: nothing
    of it reached the client, so the request fails over.
    """


class StreamStalled(StreamTimeout):
    """
    A streamed answer that had started sent nothing for longer than
    C{stream_idle_timeout}: what the client has is cut short.

    @ivar reason: why, in words (the silence and the limit).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"upstream stream stalled: {reason}", code="upstream_timeout")
        self.reason = reason


class BodyTooLarge(UpstreamError):
    """
    The upstream body exceeded the configured limit.
    """
