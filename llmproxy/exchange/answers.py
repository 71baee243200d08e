# -*- test-case-name: tests.test_upstream_faults -*-
"""
Whether an upstream's 2xx is an answer: its head (no content coding, an
event stream for a streaming request) and, for a whole answer, its body (a
JSON object of the backend's dialect, not an error object).  What is not
an answer is an L{InvalidAnswer}: nothing reaches the client, the attempt
counts against the backend, and the next attempt may serve the request.

Streams are checked event by event by their transforms
(L{llmproxy.translate.transforms}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IResponse

from llmproxy.dialects import CHAT
from llmproxy.errors import UpstreamError

#: The member a whole answer of each dialect has, as a list.
_OUTPUT = {CHAT: "choices"}
_RESPONSES_OUTPUT = "output"


class InvalidAnswer(UpstreamError):
    """
    The upstream answered 2xx with something that is not an answer (502).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, code="upstream_invalid_response")


def content_coding(response: IResponse) -> str | None:
    """
    The content coding of C{response}'s body, unless it has none
    (C{identity}).
    """
    coding = response.headers.getRawHeaders(b"content-encoding")
    if coding is None or all(v.strip().lower() in (b"", b"identity") for v in coding):
        return None
    return b", ".join(coding).decode("latin-1")[:80]


def head_problem(response: IResponse, stream: bool) -> str | None:
    """
    What makes a 2xx's head unusable, or L{None}: a content coding
    (llmproxy asks for none and decodes none, so coded bytes would reach
    the client labelled as plain JSON or events), or, for a streaming
    request, a body declared as something other than an event stream (no
    C{Content-Type} at all is left to the stream's own checks).
    """
    coding = content_coding(response)
    if coding is not None:
        return f"answered in the {coding} content coding although llmproxy asked for none"
    if stream:
        kind = response.headers.getRawHeaders(b"content-type")
        if kind is not None and not kind[-1].lstrip().lower().startswith(b"text/event-stream"):
            return ("answered a streaming request with " + kind[-1].decode("latin-1")[:80]
                    + " instead of an event stream")
    return None


def _error_message(data: dict[str, Any]) -> str:
    error = data["error"]
    message = error.get("message")
    return message if isinstance(message, str) and message else "no message"


def parse_answer(body: bytes, dialect: str) -> tuple[dict[str, Any] | None, str | None]:
    """
    A whole 2xx body as the answer it must be: the parsed object, or
    L{None} and what is wrong with it.  An OpenAI error object (one that
    lacks the dialect's output list) is not an answer, whatever its
    status.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # UnicodeDecodeError is a ValueError: JSON must be UTF-8.
        what = "nothing" if not body.strip() else "a body that is not JSON"
        return None, f"answered with {what}"
    if not isinstance(data, dict):
        return None, f"answered with a JSON {type(data).__name__}, not an object"
    if isinstance(data.get("error"), dict) \
            and not isinstance(data.get(_OUTPUT.get(dialect, _RESPONSES_OUTPUT)), list):
        return None, f"answered {{\"error\": ...}} as a success: {_error_message(data)}"
    return data, None


__all__ = ["InvalidAnswer", "content_coding", "head_problem", "parse_answer"]
