# -*- test-case-name: tests.test_streams_only -*-
"""
Whole answers from backends that only stream (L{Backend.streams_only}):
a non-streaming client's attempt is sent as a stream, its body collected
within the whole-answer deadlines and aggregated into one Responses object
(L{llmproxy.translate.aggregate}), which then goes the way of any whole
answer.

A stream that ended in no answer is an upstream failure of the status its
error amounts to (L{FailedStream}); what the exchange then does is
L{llmproxy.exchange.outcome}'s classification of that status, as for an
upstream that answered it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from llmproxy.backends.base import Backend
from llmproxy.translate.aggregate import StreamFailed, aggregate_responses

#: How much larger than a whole answer its event stream may be (every
#: delta event repeats its frame, and the final events the whole text).
STREAM_FACTOR = 8

#: Error codes, then types, that say which status a failed stream amounts
#: to; anything else, a missing final event included, is a 502.
_CODE_STATUS = {
    "context_length_exceeded": 400, "invalid_prompt": 400,
    "invalid_api_key": 401, "usage_not_included": 403,
    "rate_limit_exceeded": 429, "usage_limit_reached": 429, "insufficient_quota": 429,
}
_TYPE_STATUS = {"invalid_request_error": 400, "authentication_error": 401,
                "permission_error": 403, "rate_limit_error": 429, "tokens": 429,
                "requests": 429, "usage_limit_reached": 429, "insufficient_quota": 429}
#: Codex's own reading of a retry hint in a message.
_TRY_AGAIN = re.compile(r"(?i)try again in\s*(\d+(?:\.\d+)?)\s*(ms|s|seconds?)\b")


class FailedStream(Exception):
    """
    An aggregated stream that failed, as the upstream answer it amounts to.

    @ivar status: the HTTP status its error means.
    @ivar body: the OpenAI error body (the upstream's error object).
    @ivar headers: retry hints its error carried, as a C{retry-after}.
    """

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers)


def streams_only(backend: Backend) -> bool:
    """
    Whether C{backend} answers only streams (one that does not say so
    answers whole bodies too).
    """
    return getattr(backend, "streams_only", False) is True


def failure_status(error: Mapping[str, Any]) -> int:
    """
    The HTTP status a stream's error object amounts to.
    """
    for table, name in ((_CODE_STATUS, "code"), (_TYPE_STATUS, "type")):
        value = error.get(name)
        if isinstance(value, str) and value in table:
            return table[value]
    return 502


def retry_hint(error: Mapping[str, Any], now: float) -> float | None:
    """
    The seconds an error asks to wait: C{resets_in_seconds}, C{resets_at}
    (a unix time) or a "try again in N s" message.
    """
    seconds = error.get("resets_in_seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        return max(0.0, float(seconds)) if math.isfinite(seconds) else None
    at = error.get("resets_at")
    if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at):
        return max(0.0, at - now)
    match = _TRY_AGAIN.search(str(error.get("message", "")))
    if match is None:
        return None
    value = float(match.group(1))
    return value / 1000 if match.group(2).lower() == "ms" else value


def failed_stream(error: Mapping[str, Any], now: float) -> FailedStream:
    """
    The upstream answer a stream that failed with C{error} amounts to; an
    error without a type gets the one of its status class.
    """
    status = failure_status(error)
    body = dict(error)
    if not body.get("type"):
        body["type"] = "invalid_request_error" if status < 500 else "server_error"
    wait = retry_hint(error, now)
    headers = {"retry-after": str(max(1, math.ceil(wait)))} if wait is not None else {}
    return FailedStream(status, json.dumps({"error": body}).encode(), headers)


def aggregated_answer(body: bytes, now: float) -> bytes:
    """
    The whole Responses answer of stream C{body}, as JSON.

    @param now: the time, by the exchange's clock (for C{resets_at}).
    @raise FailedStream: the stream ended in no answer.
    """
    try:
        response = aggregate_responses(body)
    except StreamFailed as e:
        raise failed_stream(e.error, now)
    return json.dumps(response, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


__all__ = ["STREAM_FACTOR", "FailedStream", "aggregated_answer", "failed_stream",
           "failure_status", "retry_hint", "streams_only"]
