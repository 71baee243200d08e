"""
The healthy upstream's type checks: the 400 OpenAI answers when a request
field has the wrong JSON type.

llmproxy checks the type of the fields it reads itself (C{model},
C{messages}, C{input}, C{stream}, C{stream_options}, and whatever it
translates) and passes the others through untouched
(L{llmproxy.frontends.body}): for those the upstream is the judge, as it is
in production.  So the healthy upstream of this run judges them the way
OpenAI does, and the verdict on such a bad request is about what the client
gets back through the proxy: the upstream's 400, relayed as an OpenAI error.
A null field is not set, and passes.
"""

from __future__ import annotations

import json
from typing import Callable, Mapping

from bench.adversary.faults import response


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: object) -> bool:
    return isinstance(value, str)


def _stop(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list)
                                      and all(isinstance(v, str) for v in value))


def _objects(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _choice(value: object) -> bool:
    return isinstance(value, (str, dict))


def _object(value: object) -> bool:
    return isinstance(value, dict)


def _boolean(value: object) -> bool:
    return isinstance(value, bool)


_DECIMAL = ("a decimal", _number)
_INTEGER = ("an integer", _integer)

#: What OpenAI expects of each optional field it type-checks (Chat and
#: Responses share most names).
FIELDS: Mapping[str, tuple[str, Callable[[object], bool]]] = {
    "temperature": _DECIMAL, "top_p": _DECIMAL, "frequency_penalty": _DECIMAL,
    "presence_penalty": _DECIMAL,
    "max_tokens": _INTEGER, "max_completion_tokens": _INTEGER, "max_output_tokens": _INTEGER,
    "n": _INTEGER, "seed": _INTEGER, "top_logprobs": _INTEGER,
    "stop": ("a string or an array of strings", _stop),
    "user": ("a string", _string),
    "tools": ("an array of objects", _objects),
    "tool_choice": ("a string or an object", _choice),
    "response_format": ("an object", _object), "metadata": ("an object", _object),
    "logit_bias": ("an object", _object),
    "logprobs": ("a boolean", _boolean), "parallel_tool_calls": ("a boolean", _boolean),
    "store": ("a boolean", _boolean),
}


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def rejection(payload: Mapping[str, object]) -> bytes | None:
    """
    OpenAI's 400 for the first field of C{payload} of the wrong type, or
    L{None} when every field it checks is right (or null).
    """
    for name, (expected, right) in FIELDS.items():
        value = payload.get(name)
        if value is not None and not right(value):
            error = {"error": {
                "message": f"Invalid type for '{name}': expected {expected}, "
                           f"but got {_type_name(value)} instead.",
                "type": "invalid_request_error", "param": name, "code": "invalid_type"}}
            return response(400, json.dumps(error).encode(), reason="Bad Request")
    return None


__all__ = ["FIELDS", "rejection"]
