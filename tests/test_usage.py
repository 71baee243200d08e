"""
Usage accounting (#17, section 1): a streaming chat client that did not ask
for its usage still has it counted, and gets exactly the bytes it would
have got; non-streaming replies carry C{x-llmproxy-usage}; the access log
line carries the counts.  Real HTTP (in memory) against the fake upstream.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, strategies as st
from twisted.logger import LogEvent, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.adapt.usage import asks_usage, needs_usage, with_usage
from llmproxy.exchange.events import REPLY_NAMESPACE
from llmproxy.frontends.access import AccessLog
from llmproxy.sse import DONE, encode_event
from llmproxy.testing import chat_chunks, chat_completion, chat_request, responses_object
from llmproxy.testing.builders import chat_chunk
from llmproxy.testing.upstream import Reply, Stream
from llmproxy.translate.transforms import without_usage
from llmproxy.translate.usage import usage_counts, usage_line
from tests.harness import MemoryProxy, in_thread, sdk, start
from tests.test_continuation import TEXT, memory, two_backends

PIECES = ["a", "b", "c"]

#: A usage object as OpenAI reports it, with its details.
DETAILED = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
            "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 0}}


def two_dialects(upstream: str) -> dict[str, Any]:
    return {
        "default_backend": "chat",
        "backends": {
            "chat": {"type": "openai", "base_url": upstream, "api_key": "sk-chat"},
            "resp": {"type": "openai-responses", "base_url": upstream, "api_key": "sk-resp"},
        },
    }


def openai_layout(usage: dict[str, Any] | None = DETAILED) -> list[bytes]:
    """
    A stream as OpenAI sends it when asked for usage: C{"usage": null} on
    every chunk, then the usage-only chunk.
    """
    chunks = [chat_chunk("gpt-4o", {"role": "assistant", "content": ""})]
    chunks += [chat_chunk("gpt-4o", {"content": p}) for p in PIECES]
    chunks.append(chat_chunk("gpt-4o", {}, "stop"))
    out = [encode_event({**c, "usage": None}) for c in chunks]
    if usage is not None:
        out.append(encode_event({**chat_chunk("gpt-4o", {}), "choices": [], "usage": usage}))
    return out + [DONE]


def plain_layout() -> list[bytes]:
    """
    The same stream as OpenAI sends it when nobody asked for usage.
    """
    return chat_chunks("gpt-4o", PIECES)


class Replies:
    """
    The reply events of a proxy.
    """

    def __init__(self, proxy: MemoryProxy) -> None:
        self.events: list[LogEvent] = []
        proxy.service.app.events.addObserver(self)

    def __call__(self, event: LogEvent) -> None:
        if event["log_namespace"] == REPLY_NAMESPACE:
            self.events.append(event)


class StreamedUsageTests(SynchronousTestCase):
    """
    A chat client streaming from a chat upstream without asking for usage.
    """

    def test_asked_upstream_and_stripped(self) -> None:
        proxy = MemoryProxy()
        replies = Replies(proxy)
        proxy.fake.script.append(Stream(openai_layout()))
        answer = proxy.chat(stream=True)
        self.assertEqual(answer.status, 200)
        [sent] = proxy.fake.requests
        self.assertEqual(sent.body["stream_options"], {"include_usage": True})
        self.assertEqual(answer.content, b"".join(plain_layout()))
        self.assertNotIn(b'"usage"', answer.content)
        [event] = replies.events
        self.assertEqual(event["usage"], DETAILED)

    def test_the_rest_of_the_body_goes_as_sent(self) -> None:
        """
        The client's own bytes go up, the option spliced in front; nothing
        is reported as dropped.
        """
        proxy = MemoryProxy()
        proxy.fake.script.append(Stream(openai_layout()))
        client = b'{ "model" : "gpt-4o", "stream": true, "messages": [{"role":"user","content":"hi"}] }'
        answer = proxy.post("/v1/chat/completions", client)
        [sent] = proxy.fake.requests
        self.assertEqual(sent.raw, b'{"stream_options":{"include_usage":true},' + client[1:])
        self.assertNotIn("x-llmproxy-dropped-params", answer.headers)

    def test_fake_default_answer(self) -> None:
        """
        The fake upstream's own usage chunk (it answers with one only when
        asked) is counted and stripped.
        """
        proxy = MemoryProxy()
        replies = Replies(proxy)
        answer = proxy.chat(stream=True)
        self.assertNotIn(b'"usage"', answer.content)
        self.assertTrue(answer.content.endswith(DONE))
        self.assertEqual(replies.events[0]["usage"]["total_tokens"],
                         replies.events[0]["usage"]["prompt_tokens"]
                         + replies.events[0]["usage"]["completion_tokens"])

    def test_include_usage_false_is_honoured_for_the_client(self) -> None:
        proxy = MemoryProxy()
        replies = Replies(proxy)
        proxy.fake.script.append(Stream(openai_layout()))
        answer = proxy.chat(stream=True, stream_options={"include_usage": False})
        self.assertEqual(proxy.fake.requests[0].body["stream_options"], {"include_usage": True})
        self.assertEqual(answer.content, b"".join(plain_layout()))
        self.assertEqual(replies.events[0]["usage"], DETAILED)

    def test_a_client_that_asked_gets_it_untouched(self) -> None:
        proxy = MemoryProxy()
        replies = Replies(proxy)
        chunks = openai_layout()
        proxy.fake.script.append(Stream(chunks))
        body = chat_request(stream=True, stream_options={"include_usage": True})
        raw = json.dumps(body).encode()
        answer = proxy.post("/v1/chat/completions", raw)
        self.assertEqual(proxy.fake.requests[0].raw, raw)
        self.assertEqual(answer.content, b"".join(chunks))
        self.assertEqual(replies.events[0]["usage"], DETAILED)

    def test_a_whole_answer_is_not_asked(self) -> None:
        proxy = MemoryProxy()
        raw = json.dumps(chat_request()).encode()
        proxy.post("/v1/chat/completions", raw)
        self.assertEqual(proxy.fake.requests[0].raw, raw)

    def test_no_usage_from_upstream(self) -> None:
        """
        An upstream that ignores the option: the client's stream is as
        sent, and the usage unknown.
        """
        proxy = MemoryProxy()
        replies = Replies(proxy)
        proxy.fake.script.append(Stream(plain_layout()))
        answer = proxy.chat(stream=True)
        self.assertEqual(answer.content, b"".join(plain_layout()))
        self.assertIsNone(replies.events[0]["usage"])


class SDKTests(TestCase):
    """
    The official client, over real sockets, streaming without asking.
    """

    async def test_stream_without_usage(self) -> None:
        proxy = await start(self)
        replies: list[LogEvent] = []
        proxy.service.app.events.addObserver(
            lambda e: replies.append(e) if e["log_namespace"] == REPLY_NAMESPACE else None)
        proxy.fake.script.append(Stream(openai_layout(), delay=0.01))

        def call() -> list[Any]:
            with sdk(proxy.url) as client:
                return list(client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                    stream=True))

        chunks = await in_thread(call)
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks),
                         "".join(PIECES))
        self.assertTrue(all(c.choices and c.usage is None for c in chunks))
        self.assertEqual(proxy.fake.requests[0].body["stream_options"], {"include_usage": True})
        self.assertEqual(replies[0]["usage"], DETAILED)


class ContinuedStreamTests(SynchronousTestCase):
    """
    A stream broken mid-answer and continued on the next target: the
    continuation's usage is known though the client never asked for it.
    """

    def test_usage_of_the_continuation(self) -> None:
        from llmproxy.testing.continuation import Speak

        for mode in ("prefill", "restart"):
            proxy = memory(two_backends(mode))
            replies = Replies(proxy)
            proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
            proxy.fake.by_model["m2"] = [Speak(TEXT)]
            answer = proxy.post("/v1/chat/completions", {
                "model": "first:m1|second:m2", "stream": True,
                "messages": [{"role": "user", "content": "hi"}]})
            self.assertNotIn(b'"usage"', answer.content, mode)
            self.assertTrue(all(r.body["stream_options"] == {"include_usage": True}
                                for r in proxy.fake.requests), mode)
            [reply] = replies.events
            self.assertEqual(reply["continued"], "second:m2", mode)
            self.assertIsNotNone(reply["usage"], mode)
            self.assertGreaterEqual(reply["usage"]["completion_tokens"], 1, mode)


class OtherDialectsTests(SynchronousTestCase):
    """
    Translated streams and the Responses frontend are as before.
    """

    def test_chat_client_responses_upstream(self) -> None:
        proxy = MemoryProxy(two_dialects)
        replies = Replies(proxy)
        answer = proxy.chat(model="resp:gpt-4o", stream=True)
        self.assertNotIn("stream_options", proxy.fake.requests[0].body)
        self.assertNotIn(b'"usage"', answer.content)
        self.assertIsNotNone(replies.events[0]["usage"])

    def test_chat_client_responses_upstream_asking(self) -> None:
        proxy = MemoryProxy(two_dialects)
        answer = proxy.chat(model="resp:gpt-4o", stream=True,
                            stream_options={"include_usage": True})
        self.assertIn(b'"usage"', answer.content)

    def test_responses_client_chat_upstream(self) -> None:
        proxy = MemoryProxy(two_dialects)
        replies = Replies(proxy)
        answer = proxy.post("/v1/responses", {"model": "chat:gpt-4o", "input": "hi",
                                              "stream": True})
        self.assertEqual(proxy.fake.requests[0].body["stream_options"], {"include_usage": True})
        completed = [line for line in answer.content.split(b"\n\n")
                     if b"response.completed" in line]
        self.assertEqual(len(completed), 1)
        self.assertIn(b'"usage"', completed[0])
        self.assertIsNotNone(replies.events[0]["usage"])

    def test_responses_client_responses_upstream(self) -> None:
        proxy = MemoryProxy(two_dialects)
        raw = json.dumps({"model": "resp:gpt-4o", "input": "hi", "stream": True}).encode()
        proxy.post("/v1/responses", raw)
        self.assertNotIn("stream_options", proxy.fake.requests[0].body)


#: Chunk fields in the order OpenAI writes them.
chunk_dicts = st.builds(
    lambda text, finish, extra: {**chat_chunk("gpt-4o", {"content": text}, finish), **extra},
    st.text(), st.sampled_from([None, "stop", "length"]),
    st.dictionaries(st.sampled_from(["system_fingerprint", "service_tier"]), st.text()))
separators = st.sampled_from([(",", ":"), (", ", ": ")])


class WithoutUsageTests(SynchronousTestCase):
    """
    L{without_usage}: an event as it would have been had nobody asked.
    """

    @given(chunk_dicts, separators)
    def test_null_usage_removed(self, chunk: dict[str, Any], sep: tuple[str, str]) -> None:
        def event(data: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(data, separators=sep).encode() + b"\n\n"

        self.assertEqual(without_usage(event({**chunk, "usage": None})), event(chunk))

    @given(chunk_dicts)
    def test_chunks_without_usage_are_the_same_object(self, chunk: dict[str, Any]) -> None:
        item = encode_event(chunk)
        self.assertIs(without_usage(item), item)

    def test_usage_chunk_dropped(self) -> None:
        item = encode_event({**chat_chunk("m", {}), "choices": [], "usage": DETAILED})
        self.assertEqual(without_usage(item), b"")
        spaced = b"data: " + json.dumps({"choices": [], "usage": DETAILED}).encode() + b"\n\n"
        self.assertEqual(without_usage(spaced), b"")

    def test_other_usage_kept(self) -> None:
        """
        A chunk with choices and a usage (some providers put it on the last
        content chunk) and the end marker are left alone.
        """
        item = encode_event({**chat_chunk("m", {}, "stop"), "usage": DETAILED})
        self.assertEqual(without_usage(item), item)
        self.assertEqual(without_usage(DONE), DONE)


json_keys = st.text(st.characters(codec="ascii", exclude_characters='"\\'), max_size=5)
bodies = st.dictionaries(json_keys.filter(lambda k: k != "stream_options"),
                         st.integers() | st.text() | st.none(), max_size=4)


class WithUsageTests(SynchronousTestCase):
    """
    L{with_usage}: the body, asking for the usage.
    """

    @given(bodies, st.sampled_from(["", " ", "\n  "]))
    def test_spliced(self, body: dict[str, Any], space: str) -> None:
        raw = (space + json.dumps(body, indent=1 if space else None) + space).encode()
        out = with_usage(body, raw)
        self.assertEqual(json.loads(out), {**body, "stream_options": {"include_usage": True}})
        self.assertTrue(out.endswith(raw[raw.find(b"{") + 1:]))

    def test_options_kept(self) -> None:
        body = {"stream": True, "stream_options": {"include_usage": False, "x": 1}}
        self.assertEqual(json.loads(with_usage(body, b"ignored")),
                         {"stream": True, "stream_options": {"include_usage": True, "x": 1}})
        self.assertEqual(json.loads(with_usage({"stream_options": None}))["stream_options"],
                         {"include_usage": True})

    def test_who_needs_it(self) -> None:
        self.assertTrue(needs_usage({"stream": True}))
        self.assertTrue(needs_usage({"stream": True, "stream_options": None}))
        self.assertFalse(needs_usage({"stream": True, "stream_options": {"include_usage": True}}))
        self.assertFalse(needs_usage({"stream": False}))
        self.assertFalse(needs_usage({}))
        self.assertFalse(asks_usage({"stream_options": "yes"}))


class UsageHeaderTests(SynchronousTestCase):
    """
    C{x-llmproxy-usage} on whole answers.
    """

    def test_chat_answer(self) -> None:
        proxy = MemoryProxy()
        proxy.fake.script.append(Reply(200, {**chat_completion("gpt-4o", "hi"),
                                             "usage": DETAILED}))
        answer = proxy.chat()
        self.assertEqual(answer.headers["x-llmproxy-usage"],
                         "prompt=12 completion=5 total=17 cached=8 reasoning=2")
        self.assertEqual(answer.json()["usage"], DETAILED)

    def test_responses_answer(self) -> None:
        proxy = MemoryProxy(two_dialects)
        usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 16},
                 "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 4},
                 "total_tokens": 27}
        proxy.fake.script.append(Reply(200, {**responses_object("gpt-4o", "hi"),
                                             "usage": usage}))
        answer = proxy.post("/v1/responses", {"model": "resp:gpt-4o", "input": "hi"})
        self.assertEqual(answer.headers["x-llmproxy-usage"],
                         "prompt=20 completion=7 total=27 cached=16 reasoning=4")
        self.assertEqual(answer.json()["usage"], usage)

    def test_translated_answer(self) -> None:
        """
        The counts are the upstream's, whichever dialect the client reads.
        """
        proxy = MemoryProxy(two_dialects)
        proxy.fake.script.append(Reply(200, {**chat_completion("gpt-4o", "hi"),
                                             "usage": DETAILED}))
        answer = proxy.post("/v1/responses", {"model": "chat:gpt-4o", "input": "hi"})
        self.assertEqual(answer.headers["x-llmproxy-usage"],
                         "prompt=12 completion=5 total=17 cached=8 reasoning=2")

    def test_no_usage_no_header(self) -> None:
        proxy = MemoryProxy()
        body = chat_completion("gpt-4o", "hi")
        body.pop("usage", None)
        proxy.fake.script.append(Reply(200, body))
        self.assertNotIn("x-llmproxy-usage", proxy.chat().headers)

    def test_not_on_streams(self) -> None:
        self.assertNotIn("x-llmproxy-usage", MemoryProxy().chat(stream=True).headers)

    @given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9),
           st.integers(0, 10**9))
    def test_both_dialects(self, prompt: int, completion: int, cached: int,
                           reasoning: int) -> None:
        chat = {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": reasoning}}
        responses = {"input_tokens": prompt, "output_tokens": completion,
                     "total_tokens": prompt + completion,
                     "input_tokens_details": {"cached_tokens": cached},
                     "output_tokens_details": {"reasoning_tokens": reasoning}}
        expected = (f"prompt={prompt} completion={completion} total={prompt + completion} "
                    f"cached={cached} reasoning={reasoning}")
        self.assertEqual(usage_line(chat), expected)
        self.assertEqual(usage_line(responses), expected)

    def test_counts(self) -> None:
        self.assertEqual(usage_counts({}), {"prompt": 0, "completion": 0, "total": 0,
                                            "cached": 0, "reasoning": 0})
        self.assertEqual(usage_line({"prompt_tokens": 3, "completion_tokens": True,
                                     "prompt_tokens_details": None}),
                         "prompt=3 completion=0 total=3 cached=0 reasoning=0")


class AccessLogTests(SynchronousTestCase):
    """
    The access log line carries the counts when known.
    """

    def lines(self, proxy: MemoryProxy) -> list[LogEvent]:
        lines: list[LogEvent] = []
        proxy.service.app.events.addObserver(AccessLog(Logger(observer=lines.append)))
        return lines

    def test_stream_not_asking(self) -> None:
        proxy = MemoryProxy()
        lines = self.lines(proxy)
        proxy.fake.script.append(Stream(openai_layout()))
        proxy.chat(stream=True)
        self.assertIn(" stream=yes prompt=12 completion=5 total=17 cached=8 reasoning=2 \"",
                      formatEvent(lines[0]))

    def test_unknown(self) -> None:
        proxy = MemoryProxy()
        lines = self.lines(proxy)
        proxy.fake.script.append(Stream(plain_layout()))
        proxy.chat(stream=True)
        self.assertNotIn("prompt=", formatEvent(lines[0]))
