"""
Bad requests at the API layer: paths (C{//} included), methods, auth, JSON
syntax and types, nesting, UTF-8, model selectors and the Responses API.
Each generator yields C{(label, bytes)}.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from bench.adversary import GOOD, PROXY_KEY
from bench.adversary.build import (
    CHAT, DROP, OK_BODY, OK_BODY_TEXT, RESPONSES, chat_body, chat_request, get, get_bytes,
    request,
)


def double_slash() -> Iterator[tuple[str, bytes]]:
    """
    C{//} inside known paths.
    """
    for path in ["/v1//models", "/v1/models//x", "/v1/llmproxy//status", "//healthz", "//",
                 "/v1/models/x//y"]:
        yield f"GET {path}", get(path)
    for path in ["/v1//chat/completions", "//v1/chat/completions", "/v1/chat//completions",
                 "/v1//responses"]:
        yield f"POST {path}", request("POST", path, OK_BODY)


def unknown_paths() -> Iterator[tuple[str, bytes]]:
    """
    Paths that are not served (with the key).
    """
    for path in ["/", "/v2/chat/completions", "/v1/completions", "/v1/embeddings",
                 "/v1/chat/completions/", "/V1/CHAT/COMPLETIONS", "/v1/chat/completions.json"]:
        yield f"POST {path}", request("POST", path, OK_BODY)
    for path in ["/v1/models/", "/v1/llmproxy", "/v1/llmproxy/status/x", "/admin", "/.env",
                 "/%2e%2e/%2e%2e/etc/passwd", "/../../etc/passwd", "/healthz/", "/favicon.ico"]:
        yield f"GET {path}", get(path)


def wrong_methods() -> Iterator[tuple[str, bytes]]:
    """
    Known paths with the wrong method.
    """
    for method, path in [("GET", CHAT), ("PUT", CHAT), ("DELETE", CHAT), ("PATCH", CHAT),
                         ("OPTIONS", CHAT), ("GET", RESPONSES), ("POST", "/healthz"),
                         ("PUT", "/healthz"), ("TRACE", "/healthz"), ("POST", "/v1/models"),
                         ("DELETE", "/v1/models/x"), ("POST", "/v1/llmproxy/status")]:
        body = OK_BODY if method in ("POST", "PUT", "PATCH") else b""
        yield f"{method} {path}", request(method, path, body)


def auth() -> Iterator[tuple[str, bytes]]:
    """
    Missing, wrong and odd proxy keys.
    """
    def chat(*headers: tuple[str, str]) -> bytes:
        return request("POST", CHAT, OK_BODY, headers, auth=False)

    yield "no Authorization (chat)", chat()
    yield "no Authorization (responses)", request(
        "POST", RESPONSES, json.dumps({"model": f"{GOOD}:m", "input": "hi"}).encode(), auth=False)
    yield "no Authorization (models)", get("/v1/models", auth=False)
    yield "no Authorization (model)", get("/v1/models/m", auth=False)
    yield "no Authorization (status)", get("/v1/llmproxy/status", auth=False)
    yield "wrong key", chat(("Authorization", "Bearer wrong-key"))
    yield "key with a suffix", chat(("Authorization", f"Bearer {PROXY_KEY}x"))
    yield "key prefix", chat(("Authorization", f"Bearer {PROXY_KEY[:-1]}"))
    yield "Basic scheme", chat(("Authorization", "Basic YWR2ZXJzYXJ5OmtleQ=="))
    yield "Token scheme", chat(("Authorization", f"Token {PROXY_KEY}"))
    yield "empty bearer", chat(("Authorization", "Bearer "))
    yield "bare Bearer", chat(("Authorization", "Bearer"))
    yield "empty Authorization", chat(("Authorization", ""))
    yield "tab separator", chat(("Authorization", f"Bearer\t{PROXY_KEY}"))
    yield "non-ASCII key", chat(("Authorization", "Bearer cl\xe9"))
    yield "8 KiB key", chat(("Authorization", "Bearer " + "k" * 8192))
    yield "x-api-key only", chat(("X-Api-Key", PROXY_KEY))
    yield "right then wrong Authorization", chat(("Authorization", f"Bearer {PROXY_KEY}"),
                                                 ("Authorization", "Bearer wrong"))
    yield "wrong then right Authorization", chat(("Authorization", "Bearer wrong"),
                                                 ("Authorization", f"Bearer {PROXY_KEY}"))


def invalid_json() -> Iterator[tuple[str, bytes]]:
    """
    Bodies that are not JSON (Python's json module accepts NaN and Infinity; JSON does not).
    """
    half = OK_BODY[: len(OK_BODY) // 2]
    for label, body in [
        ("empty body", b""), ("open brace", b"{"), ("close brace", b"}"),
        ("single quotes", b"{'model': 'm', 'messages': []}"),
        ("trailing comma", OK_BODY[:-1] + b",}"), ("garbage after", OK_BODY + b"garbage"),
        ("two objects", OK_BODY + OK_BODY), ("truncated", half),
        ("NaN", chat_body(temperature=0.5).replace(b"0.5", b"NaN")),
        ("Infinity", chat_body(temperature=0.5).replace(b"0.5", b"Infinity")),
        ("-Infinity", chat_body(temperature=0.5).replace(b"0.5", b"-Infinity")),
        ("comment", b"// hi\n" + OK_BODY), ("whitespace only", b"  \n\t "),
        ("unclosed arrays", b"[" * 10), ("raw tab in string", OK_BODY.replace(b"hi", b"h\ti")),
        ("missing comma", b'{"model": "m" "messages": []}'), ("hex number", b'{"n": 0x10}'),
        ("leading zero", chat_body(n=7).replace(b"7", b"07")), ("bare word", b"tru"),
        ("XML", b"<xml><model>m</model></xml>"), ("form encoded", b"model=m&messages=hi"),
        ("unquoted keys", b'{model: "m"}'),
    ]:
        yield label, chat_request(body)


def non_object() -> Iterator[tuple[str, bytes]]:
    """
    JSON bodies that are not objects.
    """
    for body in [b"null", b"[]", b'[{"model": "m"}]', b'"string"', b"123", b"true", b"false",
                 b"1.5"]:
        yield body.decode(), chat_request(body)


def field_types() -> Iterator[tuple[str, bytes]]:
    """
    Chat fields of the wrong type (and the required ones missing or null).
    """
    wrong: list[tuple[str, Any]] = [
        ("messages", "hi"), ("messages", {}), ("messages", []), ("messages", [1]),
        ("messages", ["hi"]), ("messages", None), ("messages", DROP),
        ("stream", "yes"), ("stream", 1), ("stream", 0), ("stream", {}), ("stream", []),
        ("stream_options", "x"), ("stream_options", []), ("stream_options", 1),
        ("stream_options", True),
        ("model", 123), ("model", None), ("model", []), ("model", {}),
        ("model", True), ("model", DROP),
        ("temperature", "hot"), ("temperature", []), ("temperature", {}), ("temperature", True),
        ("top_p", "x"), ("max_tokens", "many"), ("max_tokens", 1.5), ("max_tokens", []),
        ("n", "2"), ("tools", "x"), ("tools", {}), ("tools", [1]), ("tool_choice", 5),
        ("stop", 5), ("user", 5), ("response_format", "json"), ("seed", "s"),
    ]
    for name, value in wrong:
        shown = "missing" if value is DROP else json.dumps(value)
        yield f"{name}: {shown}", chat_request(chat_body(**{name: value}))
    # Valid JSON syntax, but no double holds it: Python reads inf.
    yield "temperature: 1e999", chat_request(
        chat_body(temperature=0.25).replace(b"0.25", b"1e999"))


def nesting() -> Iterator[tuple[str, bytes]]:
    """
    JSON nested deeper than a parser should follow.
    """
    def deep(depth: int, opener: str = "[", closer: str = "]") -> str:
        return opener * depth + closer * depth

    base = OK_BODY_TEXT[:-1]
    for label, body in [
        ("content arrays 10k", base + ', "x": ' + deep(10_000) + "}"),
        ("content arrays 100k", '{"model": "m", "messages": [{"role": "user", "content": '
         + deep(100_000) + "}]}"),
        ("tools objects 10k", base + ', "tools": [' + '{"a":' * 10_000 + "1" + "}" * 10_000 + "]}"),
        ("metadata objects 50k", base + ', "metadata": ' + '{"a":' * 50_000 + "1"
         + "}" * 50_000 + "}"),
        ("mixed 20k", base + ', "x": ' + '[{"a":' * 10_000 + "1" + "}]" * 10_000 + "}"),
        ("model arrays 10k", '{"model": ' + deep(10_000)
         + ', "messages": [{"role": "user", "content": "hi"}]}'),
    ]:
        yield label, chat_request(body.encode())


def utf8() -> Iterator[tuple[str, bytes]]:
    """
    Bodies and paths that are not UTF-8 (JSON exchanged between systems must be).
    """
    def content(raw_bytes: bytes) -> bytes:
        return OK_BODY.replace(b'"hi"', b'"h' + raw_bytes + b'i"')

    for label, bad in [("0xff", b"\xff"), ("overlong slash", b"\xc0\xaf"),
                       ("lone continuation", b"\x80"), ("truncated sequence", b"\xe2\x82"),
                       ("encoded surrogate", b"\xed\xa0\x80"),
                       ("beyond U+10FFFF", b"\xf5\x80\x80\x80"), ("latin-1 e-acute", b"\xe9")]:
        yield f"{label} in content", chat_request(content(bad))
    yield "invalid UTF-8 in model", chat_request(OK_BODY.replace(b":m", b":m\xff"))
    yield "UTF-16-LE with BOM", chat_request(b"\xff\xfe" + OK_BODY_TEXT.encode("utf-16-le"))
    yield "UTF-16-BE", chat_request(OK_BODY_TEXT.encode("utf-16-be"))
    yield "UTF-32", chat_request(OK_BODY_TEXT.encode("utf-32"))
    yield "0xff in path", get_bytes(b"/v1/models/\xff",
                                     f"Authorization: Bearer {PROXY_KEY}\r\n".encode())


def selectors() -> Iterator[tuple[str, bytes]]:
    """
    Invalid model selectors, URI parameters and backends.
    """
    for model in ["", " ", ":", f"{GOOD}:", ":m", "a||b", "|", "a|", "|a", "^a", "!a",
                  "model with space", "m\tx", "m\nx", "m?temperature=hot", "m?temperature=5",
                  "m?unknown=1", "m?top_k=0", "m?max_tokens=-1", "m?reasoning_effort=bogus",
                  "m?=1", "m?temperature", "m?%zz=1", "m?temperature=0.5&temperature=0.7",
                  "alias:x", "auto:x"]:
        yield f"model {model!r}", chat_request(chat_body(model=model))
    for model in ["nosuch:m", "nosuch.2:m", f"{GOOD}.99:m", f"{GOOD}.0:m", "nosuch:m|other:m"]:
        yield f"unknown backend {model!r}", chat_request(chat_body(model=model))


def responses_api() -> Iterator[tuple[str, bytes]]:
    """
    Bad Responses API requests.
    """
    def post(**fields: Any) -> bytes:
        body = {"model": f"{GOOD}:m", "input": "hi"}
        body.update(fields)
        return request("POST", RESPONSES, json.dumps(
            {k: v for k, v in body.items() if v is not DROP}).encode())

    yield "no input", post(input=DROP)
    yield "input: 5", post(input=5)
    yield "previous_response_id: 5", post(previous_response_id=5)
    yield "unknown previous_response_id", post(previous_response_id="resp_nope")
    yield "stream: yes", post(stream="yes")
    yield "array body", request("POST", RESPONSES, b"[]")


__all__ = ["auth", "double_slash", "field_types", "invalid_json", "nesting", "non_object",
           "responses_api", "selectors", "unknown_paths", "utf8", "wrong_methods"]
