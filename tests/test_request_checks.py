"""
What llmproxy checks in a request body, through real HTTP against the fake
upstream: null optional fields mean "not set" everywhere (and an untouched
body still goes upstream byte for byte), JSON is UTF-8 with finite numbers,
and the fields llmproxy only passes through are left to the upstream.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from twisted.trial.unittest import SynchronousTestCase, TestCase

from bench.adversary.typecheck import rejection
from llmproxy.testing import Reply
from tests.harness import Proxy, post, start

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"

#: Every optional field of a Chat Completions request (openai-python's
#: completion_create_params).
CHAT_OPTIONAL = (
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format",
    "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options",
)
#: Every optional field of a Responses request (openai-python's
#: response_create_params), but C{input}, which llmproxy requires.
RESPONSES_OPTIONAL = (
    "background", "conversation", "include", "instructions", "max_output_tokens",
    "max_tool_calls", "metadata", "parallel_tool_calls", "previous_response_id", "prompt",
    "prompt_cache_key", "reasoning", "safety_identifier", "service_tier", "store", "stream",
    "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p",
    "truncation", "user",
)
USER = [{"role": "user", "content": "hi"}]


def two_dialects(upstream: str) -> dict[str, Any]:
    """
    A Chat upstream C{c} (the default) and a Responses one C{r}, both the fake.
    """
    return {"default_backend": "c", "backends": {
        "c": {"type": "openai", "base_url": upstream, "api_key": "sk-c"},
        "r": {"type": "openai-responses", "base_url": upstream, "api_key": "sk-r"}}}


class Sent:
    """
    One request through the proxy: the client's answer and what the
    upstream got.
    """

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes,
                 upstream: list[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.upstream = upstream

    @property
    def error(self) -> dict[str, Any]:
        return dict(json.loads(self.body)["error"])

    @property
    def forwarded(self) -> dict[str, Any]:
        [raw] = self.upstream
        return dict(json.loads(raw))

    @property
    def dropped(self) -> str | None:
        return self.headers.get("x-llmproxy-dropped-params")


class Checks(TestCase):
    proxy: Proxy

    async def setUp(self) -> None:  # type: ignore[override]
        self.proxy = await start(self, two_dialects)

    async def send(self, path: str, body: bytes | Mapping[str, Any]) -> Sent:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        before = len(self.proxy.fake.requests)
        status, headers, content = await post(self, self.proxy.url + path, raw)
        return Sent(status, headers, content,
                    [r.raw for r in self.proxy.fake.requests[before:]])

    def assertUntouched(self, sent: Sent, raw: bytes) -> None:
        self.assertEqual((sent.status, sent.upstream), (200, [raw]), sent.body[:300])
        self.assertIsNone(sent.dropped)


class NullMeansNotSet(Checks):
    """
    OpenAI reads a null optional field as "not set"; so does llmproxy, for
    every field it reads, on both frontends.
    """

    async def test_null_stream_chat(self) -> None:
        """
        C{"stream": null} is a non-streamed request, and the client's own
        bytes go upstream.
        """
        raw = json.dumps({"model": "gpt-4o", "messages": USER, "stream": None}).encode()
        sent = await self.send(CHAT_PATH, raw)
        self.assertUntouched(sent, raw)
        self.assertEqual(json.loads(sent.body)["object"], "chat.completion")

    async def test_null_stream_responses(self) -> None:
        for backend in ("c", "r"):
            sent = await self.send(RESPONSES_PATH, {"model": f"{backend}:gpt-4o", "input": "hi",
                                                    "stream": None})
            self.assertEqual(sent.status, 200, sent.body)
            self.assertEqual(json.loads(sent.body)["object"], "response")

    async def test_null_stream_with_stream_options(self) -> None:
        raw = json.dumps({"model": "gpt-4o", "messages": USER, "stream": None,
                          "stream_options": {"include_usage": True}}).encode()
        self.assertUntouched(await self.send(CHAT_PATH, raw), raw)

    async def test_every_null_chat_field_goes_upstream_untouched(self) -> None:
        """
        Each optional Chat field set to null is served, and the body, which
        nothing had to change, goes upstream byte for byte.
        """
        for name in CHAT_OPTIONAL:
            raw = json.dumps({"model": "gpt-4o", "messages": USER, name: None}).encode()
            sent = await self.send(CHAT_PATH, raw)
            self.assertUntouched(sent, raw)

    async def test_every_null_responses_field_goes_upstream_untouched(self) -> None:
        for name in RESPONSES_OPTIONAL:
            raw = json.dumps({"model": "r:gpt-4o", "input": "hi", name: None}).encode()
            sent = await self.send(RESPONSES_PATH, raw)
            self.assertEqual(sent.status, 200, (name, sent.body))
            self.assertEqual(sent.forwarded, {"model": "gpt-4o", "input": "hi", name: None})
            self.assertIsNone(sent.dropped, name)

    async def test_all_null_at_once(self) -> None:
        """
        Every optional field null in one request, on both frontends, both
        upstream dialects, plain and reasoning models: served, nothing
        reported dropped, and between the same dialects the client's bytes.
        """
        for path, fields, base, same in [
            (CHAT_PATH, CHAT_OPTIONAL, {"messages": USER}, "c"),
            (RESPONSES_PATH, RESPONSES_OPTIONAL, {"input": "hi"}, "r"),
        ]:
            for backend in ("c", "r"):
                for model in ("gpt-4o", "o3", "o1-mini"):
                    body = {"model": f"{backend}:{model}", **base,
                            **{name: None for name in fields}}
                    sent = await self.send(path, body)
                    self.assertEqual(sent.status, 200, (path, backend, model, sent.body))
                    self.assertIsNone(sent.dropped)
                    if backend == same:
                        self.assertEqual(sent.forwarded, {**body, "model": model})

    async def test_null_fields_are_not_reported_as_dropped_by_translation(self) -> None:
        """
        A null field translation has no equivalent for is not worth a
        report: it was not set.
        """
        for name in CHAT_OPTIONAL:
            sent = await self.send(CHAT_PATH, {"model": "r:gpt-4o", "messages": USER, name: None})
            self.assertEqual(sent.status, 200, (name, sent.body))
            self.assertIsNone(sent.dropped, name)
            self.assertNotIn(name, sent.forwarded)
        for name in RESPONSES_OPTIONAL:
            sent = await self.send(RESPONSES_PATH, {"model": "c:gpt-4o", "input": "hi", name: None})
            self.assertEqual(sent.status, 200, (name, sent.body))
            self.assertIsNone(sent.dropped, name)

    async def test_null_fields_are_not_adapted_for_reasoning_models(self) -> None:
        """
        A null sampling parameter is not "dropped" for a reasoning model,
        and a body whose only such fields are null goes upstream untouched.
        """
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                     "logprobs", "top_logprobs", "logit_bias", "max_tokens", "reasoning_effort"):
            for model in ("o3", "o1-mini"):
                raw = json.dumps({"model": model, "messages": USER, name: None}).encode()
                sent = await self.send(CHAT_PATH, raw)
                self.assertUntouched(sent, raw)

    async def test_null_fields_go_when_a_reasoning_body_is_rewritten(self) -> None:
        """
        When the body is rewritten for a reasoning model anyway, the null
        fields it would drop go silently, and a null C{max_tokens} is not
        renamed.
        """
        sent = await self.send(CHAT_PATH, {"model": "o3", "messages": USER, "temperature": None,
                                           "top_p": 0.5, "max_tokens": None})
        self.assertEqual(sent.status, 200, sent.body)
        self.assertEqual(sent.forwarded, {"model": "o3", "messages": USER})
        self.assertEqual(sent.dropped, "top_p")

    async def test_null_max_completion_tokens_keeps_the_cap(self) -> None:
        """
        C{max_tokens} with a null C{max_completion_tokens} is the cap a
        reasoning model gets (it used to be dropped, leaving no cap).
        """
        body = {"model": "c:o3", "messages": USER, "max_completion_tokens": None,
                "max_tokens": 5}
        sent = await self.send(CHAT_PATH, body)
        self.assertEqual(sent.status, 200, sent.body)
        self.assertEqual(sent.forwarded, {"model": "o3", "messages": USER,
                                          "max_completion_tokens": 5})
        self.assertIsNone(sent.dropped)
        sent = await self.send(CHAT_PATH, {**body, "model": "r:o3"})
        self.assertEqual(sent.forwarded["max_output_tokens"], 5)
        self.assertIsNone(sent.dropped)

    async def test_null_max_tokens_beside_the_cap_is_not_dropped(self) -> None:
        sent = await self.send(CHAT_PATH, {"model": "c:o3", "messages": USER,
                                           "max_tokens": None, "max_completion_tokens": 7})
        self.assertEqual(sent.forwarded["max_completion_tokens"], 7)
        self.assertIsNone(sent.dropped)

    async def test_null_input_beside_messages(self) -> None:
        """
        A Responses request with C{"input": null} takes its input from
        C{messages}, as when C{input} is absent, on a Chat upstream too.
        """
        sent = await self.send(RESPONSES_PATH, {"model": "c:gpt-4o", "input": None,
                                                "messages": USER})
        self.assertEqual(sent.status, 200, sent.body)
        self.assertEqual(sent.forwarded["messages"], USER)

    async def test_null_input_alone_is_missing(self) -> None:
        """
        C{"input": null} and nothing else to answer: the 400 of a missing
        input, on every upstream; nothing goes upstream.
        """
        for backend in ("c", "r"):
            sent = await self.send(RESPONSES_PATH, {"model": f"{backend}:gpt-4o", "input": None})
            self.assertEqual((sent.status, sent.upstream), (400, []))
            self.assertEqual((sent.error["param"], sent.error["code"]),
                             ("input", "missing_required_parameter"))

    async def test_required_fields_null(self) -> None:
        for path, body, param in [
            (CHAT_PATH, {"model": None, "messages": USER}, "model"),
            (CHAT_PATH, {"model": "gpt-4o", "messages": None}, "messages"),
            (RESPONSES_PATH, {"model": None, "input": "hi"}, "model"),
        ]:
            sent = await self.send(path, body)
            self.assertEqual((sent.status, sent.error["param"], sent.error["code"]),
                             (400, param, "missing_required_parameter"))


class JsonSyntax(Checks):
    """
    JSON exchanged between systems is UTF-8 and its numbers are finite
    (RFC 8259); Python's json module is more lenient, llmproxy is not.
    """

    async def assertInvalidJson(self, raw: bytes, path: str = CHAT_PATH) -> dict[str, Any]:
        sent = await self.send(path, raw)
        self.assertEqual((sent.status, sent.upstream), (400, []), sent.body)
        error = sent.error
        self.assertEqual((error["type"], error["code"]), ("invalid_request_error", "invalid_json"))
        return error

    async def test_nan_and_infinities(self) -> None:
        for word in (b"NaN", b"Infinity", b"-Infinity"):
            for path in (CHAT_PATH, RESPONSES_PATH):
                raw = (b'{"model": "gpt-4o", "messages": [], "input": "hi", "temperature": '
                       + word + b"}")
                error = await self.assertInvalidJson(raw, path)
                self.assertIn("NaN", error["message"])

    async def test_number_out_of_range(self) -> None:
        """
        C{1e999} is JSON, but no double holds it: Python reads infinity,
        which would go upstream as C{Infinity}, not JSON.
        """
        for number in (b"1e999", b"-1e400"):
            raw = b'{"model": "gpt-4o", "messages": [], "temperature": ' + number + b"}"
            error = await self.assertInvalidJson(raw)
            self.assertIn("finite", error["message"])

    async def test_utf16_and_utf32(self) -> None:
        text = json.dumps({"model": "gpt-4o", "messages": USER})
        for raw in (b"\xff\xfe" + text.encode("utf-16-le"), text.encode("utf-16-be"),
                    text.encode("utf-16-le"), text.encode("utf-32"),
                    text.encode("utf-32-be")):
            await self.assertInvalidJson(raw)

    async def test_invalid_utf8(self) -> None:
        """
        Bytes that are not UTF-8 (here an encoded surrogate, which Python's
        json module lets through) are refused, naming the encoding.
        """
        for bad in (b"\xed\xa0\x80", b"\xff", b"\xc0\xaf"):
            raw = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "h' + bad + b'"}]}'
            error = await self.assertInvalidJson(raw)
            self.assertIn("UTF-8", error["message"])

    async def test_utf8_bom_still_accepted(self) -> None:
        """
        RFC 8259 lets a parser ignore a UTF-8 byte order mark, and llmproxy
        always has: the body is served, as sent.
        """
        raw = b"\xef\xbb\xbf" + json.dumps({"model": "gpt-4o", "messages": USER}).encode()
        self.assertUntouched(await self.send(CHAT_PATH, raw), raw)

    async def test_finite_floats_untouched(self) -> None:
        raw = (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], '
               b'"temperature": 1.5e-3, "top_p": 1E0, "seed": 12345678901234567890}')
        self.assertUntouched(await self.send(CHAT_PATH, raw), raw)


class FieldTypes(Checks):
    """
    llmproxy checks the type of the fields it reads itself; the fields it
    only passes through are the upstream's to judge.
    """

    async def test_model_of_the_wrong_type(self) -> None:
        for model in (123, True, [], {"a": 1}):
            sent = await self.send(CHAT_PATH, {"model": model, "messages": USER})
            self.assertEqual((sent.status, sent.upstream), (400, []))
            self.assertEqual((sent.error["param"], sent.error["code"]), ("model", "invalid_type"))

    async def test_stream_of_the_wrong_type(self) -> None:
        for path, body in [(CHAT_PATH, {"model": "gpt-4o", "messages": USER}),
                           (RESPONSES_PATH, {"model": "gpt-4o", "input": "hi"})]:
            for value in ("yes", 1, 0, [], {}):
                sent = await self.send(path, {**body, "stream": value})
                self.assertEqual((sent.status, sent.error["param"]), (400, "stream"))

    async def test_pass_through_fields_are_the_upstreams_to_judge(self) -> None:
        """
        A field llmproxy does not read goes upstream as sent, and the
        upstream's own 400 reaches the client.
        """
        upstream_error = {"error": {
            "message": "Invalid type for 'temperature': expected a decimal, but got a string.",
            "type": "invalid_request_error", "param": "temperature",
            "code": "invalid_type"}}
        self.proxy.fake.script.append(Reply(400, upstream_error))
        raw = json.dumps({"model": "gpt-4o", "messages": USER, "temperature": "hot"}).encode()
        sent = await self.send(CHAT_PATH, raw)
        self.assertEqual((sent.status, sent.upstream), (400, [raw]))
        self.assertEqual(sent.error["param"], "temperature")


class AdversaryUpstream(SynchronousTestCase):
    """
    The adversarial run's healthy upstream judges the pass-through fields as
    OpenAI does (bench/adversary/typecheck.py), so its field-type cases
    measure what a client gets through the proxy in production.
    """

    def test_wrong_types_get_openais_400(self) -> None:
        for name, value in [("temperature", "hot"), ("temperature", True), ("max_tokens", 1.5),
                            ("n", "2"), ("tools", [1]), ("tool_choice", 5), ("stop", 5),
                            ("user", 5), ("response_format", "json"), ("seed", "s")]:
            answer = rejection({"model": "m", name: value})
            assert answer is not None, name
            head, _, body = answer.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 400 "), head)
            error = json.loads(body)["error"]
            self.assertEqual((error["param"], error["code"]), (name, "invalid_type"))

    def test_right_types_and_nulls_pass(self) -> None:
        for name, value in [("temperature", 0), ("temperature", 0.5), ("max_tokens", 5),
                            ("stop", "x"), ("stop", ["x"]), ("tools", [{}]),
                            ("tool_choice", "auto"), ("tool_choice", {}), ("seed", None),
                            ("stream", None), ("n", None)]:
            self.assertIsNone(rejection({"model": "m", name: value}), name)
