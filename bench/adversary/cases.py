"""
Every request of the bad-request phase: the classes of bad requests
(L{bench.adversary.httpcases}, L{bench.adversary.apicases}), the heavy
ones run alone (uploads past the body limit, huge failover lists), and the
valid requests that must be served (C{"stream": null} and friends).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable, Iterator

from bench.adversary import BODY_LIMIT, GOOD, PROXY_KEY
from bench.adversary.apicases import (
    auth, double_slash, field_types, invalid_json, nesting, non_object, responses_api,
    selectors, unknown_paths, utf8, wrong_methods,
)
from bench.adversary.build import (
    ACCEPT, CHAT, OK_BODY, REJECT, RESPONSES, Case, chat_body, chat_request, chunk, get, raw,
    request,
)
from bench.adversary.httpcases import (
    bare_lf, chunk_sizes, control_bytes, framing, header_count, header_syntax, methods,
    oversize, request_line, versions,
)

#: The groups of bad requests, in run order.
GROUPS: dict[str, Callable[[], Iterator[tuple[str, bytes]]]] = {
    "request-line": request_line, "method": methods, "version": versions,
    "control-bytes": control_bytes, "oversize": oversize, "header-count": header_count,
    "header-syntax": header_syntax, "framing": framing, "chunk-size": chunk_sizes,
    "bare-lf": bare_lf, "double-slash": double_slash, "unknown-path": unknown_paths,
    "wrong-method": wrong_methods, "auth": auth, "invalid-json": invalid_json,
    "non-object": non_object, "field-types": field_types, "nesting": nesting,
    "utf8": utf8, "selector": selectors, "responses": responses_api,
}


_NOT_IMPLEMENTED = (501,)
_NO_VERSION = (505,)
#: Statuses besides 4xx that are right answers to some bad requests: 501
#: for a method or a transfer coding the server does not implement, 505 for
#: an HTTP major version other than 1 (RFC 9110 15.6.2 and 15.6.6, RFC 9112
#: 6.1).
ALSO: dict[str, tuple[int, ...]] = {
    **{f"method: {m}": _NOT_IMPLEMENTED for m in (
        "lowercase get", "FOO", "BREW", "M-SEARCH", "PROPFIND", "digits", "1000-char method")},
    "request-line: CONNECT authority": _NOT_IMPLEMENTED,
    "wrong-method: TRACE /healthz": _NOT_IMPLEMENTED,
    **{f"framing: {label}": _NOT_IMPLEMENTED for label in (
        "TE chunked, identity", "TE identity", "TE gzip only", "TE xchunked")},
    **{f"version: {v}": _NO_VERSION for v in ("HTTP/2.0", "HTTP/3", "HTTP/9.9")},
    "request-line: HTTP/2 preface": _NO_VERSION,
}


def body_limits() -> Iterator[Case]:
    """
    Uploads past the body limit; run alone, each one is heavy.
    """
    group = "body-limit"
    over = BODY_LIMIT + 1
    piece = b"x" * 65536

    def head(*headers: str, key: bool = True) -> bytes:
        auth_line = (f"Authorization: Bearer {PROXY_KEY}",) if key else ()
        return raw(f"POST {CHAT} HTTP/1.1".encode(), b"Host: 127.0.0.1",
                   b"Content-Type: application/json",
                   *(h.encode() for h in (*auth_line, *headers)))

    yield Case("CL over the limit, body never sent", group, head(f"Content-Length: {over}"),
               exclusive=True)
    yield Case("CL of 10 GB, body never sent", group, head("Content-Length: 10000000000"),
               exclusive=True)
    yield Case("no key, CL over the limit", group, head(f"Content-Length: {over}", key=False),
               exclusive=True)
    yield Case("no key, upload never ends", group, head("Content-Length: 1000000000000",
                                                         key=False), upload=piece, exclusive=True)
    yield Case("no key, chunked upload never ends", group,
               head("Transfer-Encoding: chunked", key=False), upload=chunk(piece), exclusive=True)
    yield Case("chunked body passing the limit", group, head("Transfer-Encoding: chunked"),
               upload=chunk(piece), exclusive=True)
    yield Case("whole body over the limit", group,
               head(f"Content-Length: {BODY_LIMIT + 65536}") + b"x" * (BODY_LIMIT + 65536),
               exclusive=True)
    for count in (150_000, 20_000):
        model = "|".join("ab"[i % 2] for i in range(count))
        yield Case(f"model of {count:,} 'a|b|…' elements", "selector",
                   chat_request(chat_body(model=model)), exclusive=True)


def valid() -> Iterator[Case]:
    """
    Valid requests that must be served: optional fields set to null count
    as not set (OpenAI accepts that), and a few plain ones as controls.
    """
    group = "must-succeed"
    yield Case("plain chat", group, chat_request(OK_BODY), ACCEPT)
    yield Case("chat stream: true", group, chat_request(chat_body(stream=True)), ACCEPT)
    for name in ["stream", "stream_options", "temperature", "top_p", "max_tokens", "n", "stop",
                 "user", "tools", "tool_choice", "response_format", "seed", "metadata"]:
        yield Case(f"chat {name}: null", group, chat_request(chat_body(**{name: None})), ACCEPT)
    responses = {"model": f"{GOOD}:m", "input": "hi"}
    yield Case("responses", group, request("POST", RESPONSES, json.dumps(responses).encode()),
               ACCEPT)
    yield Case("responses stream: null", group, request(
        "POST", RESPONSES, json.dumps({**responses, "stream": None}).encode()), ACCEPT)
    yield Case("GET /healthz", group, get("/healthz", auth=False), ACCEPT)
    yield Case("GET /healthz HTTP/1.0", group, get("/healthz", auth=False, version="HTTP/1.0"),
               ACCEPT)
    yield Case("GET /v1/models", group, get("/v1/models"), ACCEPT)
    yield Case("GET /v1/llmproxy/status", group, get("/v1/llmproxy/status"), ACCEPT)
    yield Case("lowercase bearer scheme", group, request(
        "POST", CHAT, OK_BODY, (("Authorization", f"bearer {PROXY_KEY}"),), auth=False), ACCEPT)


def all_cases() -> list[Case]:
    """
    Every case: the bad requests by group, the heavy ones, the valid ones.
    """
    cases = [Case(f"{group}: {label}", group, data, also=ALSO.get(f"{group}: {label}", ()))
             for group, make in GROUPS.items() for label, data in make()]
    cases += [replace(c, name=f"{c.group}: {c.name}") for c in (*body_limits(), *valid())]
    return cases


__all__ = ["ACCEPT", "ALSO", "CHAT", "GROUPS", "REJECT", "Case", "all_cases", "body_limits",
           "chat_body", "request", "valid"]
