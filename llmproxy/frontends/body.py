# -*- test-case-name: tests.test_request_checks -*-
"""
A request body, read once: strict JSON (UTF-8, finite numbers, an object),
then the checks of the fields llmproxy itself reads before routing.

A null optional field means "not set", as OpenAI reads it: every check
here treats it as absent, and nothing here changes the body, so an
untouched body still goes upstream as the client's own bytes.

Only the fields whose value llmproxy acts on are checked (C{stream},
C{stream_options}, the C{messages} or C{input}; C{model} when it is
routed; the translators check what they translate).  The fields it only
passes through (C{temperature}, C{stop}, C{seed}, C{n}, C{user}, ...) are
the upstream's to judge: it answers its own 400, which reaches the client,
and a proxy that re-validated them would drift from every upstream's API.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any, Mapping, NoReturn

from llmproxy.dialects import CHAT
from llmproxy.errors import InvalidRequest
from llmproxy.frontends.errors import too_deep

__all__ = ["check_fields", "parse_body"]

_NOT_JSON = "We could not parse the JSON body of your request. The body must be valid JSON."


def _shown(text: str) -> str:
    return text if len(text) <= 24 else text[:24] + "..."


def _not_finite(text: str) -> NoReturn:
    raise InvalidRequest(
        f"We could not parse the JSON body of your request: {text} is not JSON "
        "(NaN and the infinities are not numbers in JSON).",
        code="invalid_json",
    )


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: the number {_shown(text)} "
            "is out of range (numbers must be finite).",
            code="invalid_json",
        )
    return value


#: The one decoder: Python's, refusing what JSON does not have.  (Passing
#: these hooks to C{json.loads} would build a decoder per request.)
_DECODER = json.JSONDecoder(parse_constant=_not_finite, parse_float=_finite)


def parse_body(raw: bytes) -> dict[str, Any]:
    """
    The JSON object a request body holds.

    The body must be UTF-8 (RFC 8259 8.1; a UTF-8 byte order mark is
    ignored, as the RFC allows and llmproxy always did), so UTF-16 and
    UTF-32 bodies, which C{json.loads} would detect and read, are refused,
    and so are encoded surrogates, which it lets through.

    @raise InvalidRequest: for anything but a JSON object.
    """
    try:
        text = raw.decode("utf-8-sig" if raw[:3] == codecs.BOM_UTF8 else "utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: it is not valid UTF-8 "
            f"(byte {e.start}).",
            code="invalid_json",
        )
    try:
        body = _DECODER.decode(text)
    except ValueError:
        raise InvalidRequest(_NOT_JSON, code="invalid_json")
    except RecursionError:
        raise too_deep()
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object", code="invalid_json")
    return body


def check_fields(body: Mapping[str, Any], dialect: str) -> None:
    """
    Check the fields llmproxy reads before routing, for the frontend's
    C{dialect}; null ones count as absent.

    @raise InvalidRequest: naming the first field at fault.
    """
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
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
    elif (body.get("input") is None and body.get("messages") is None
          and not body.get("previous_response_id")):
        raise InvalidRequest("you must provide an input parameter", param="input",
                             code="missing_required_parameter")
