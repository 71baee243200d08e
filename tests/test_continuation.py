"""
Mid-stream continuation (#15 item 5): a stream that broke after content
reached the client is continued on the route's next target inside the same
response (prefill, or restart + splice), its seams marked; when it cannot
be, the client is told the original failure.

In memory on a L{Clock} (L{MemoryProxy}) for what llmproxy decides; the
OpenAI SDK over real connections for what a client makes of it; the pure
splice (L{llmproxy.translate.splice}) under hypothesis.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.config import ConfigError
from llmproxy.config.load import load_yaml
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.exchange.events import ATTEMPT_NAMESPACE, BROKEN, OK, REPLY_NAMESPACE
from llmproxy.sse import SSEFramer
from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunks, chat_tool_chunks, config_data,
    function_call_events, make_config, responses_events, sse_json,
)
from llmproxy.testing.continuation import INVALID_PREFILL, Speak, SpeakingOpenAI, words
from llmproxy.translate import transforms
from llmproxy.translate.splice import (
    CONTINUED, PREFILL, RESTART, SpliceMismatch, partial_from, prefill_body, seam_comment, splicer,
)
from tests.harness import Answer, MemoryProxy, in_thread, sdk, start

TEXT = "The quick brown fox jumps over the lazy dog and runs far away"
ROUTE = "first:m1|second:m2"
SERVICE_UNAVAILABLE = Reply(503, {"error": {"message": "down", "type": "server_error",
                                            "code": None, "param": None}})


def two_backends(second: str = "restart", **extra: Any) -> Callable[[str], dict[str, Any]]:
    """
    Backends C{first} and C{second} on the fake; C{second} continues by
    C{second}.
    """
    def make(u: str) -> dict[str, Any]:
        return config_data({"first": backend_data(u, "k1", idle_timeout=20),
                            "second": backend_data(u, "k2", continuation=second)}, **extra)
    return make


def three_backends() -> Callable[[str], dict[str, Any]]:
    """
    C{first} (restart), C{second} and C{third} (prefill).
    """
    def make(u: str) -> dict[str, Any]:
        return config_data({"first": backend_data(u, "k1"),
                            "second": backend_data(u, "k2", continuation="prefill"),
                            "third": backend_data(u, "k3", continuation="prefill")})
    return make


def memory(make: Callable[[str], Mapping[str, Any]]) -> MemoryProxy:
    proxy = MemoryProxy(make)
    proxy.fake.__class__ = SpeakingOpenAI  # adds behaviour, no state
    return proxy


def chat(proxy: MemoryProxy, model: str = ROUTE, **fields: Any) -> Answer:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": True}, **fields}
    return proxy.post("/v1/chat/completions", body)


def respond(proxy: MemoryProxy, model: str = ROUTE) -> Answer:
    return proxy.post("/v1/responses", {"model": model, "stream": True, "input": "hi"})


def chat_text(content: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in sse_json(content) if c.get("choices"))


def seams(content: bytes) -> list[bytes]:
    return [line for line in content.split(b"\n")
            if line.startswith(b": llmproxy continuation")]


def last_user(body: Any) -> str:
    return body["messages"][-1]["role"] if "messages" in body else body["input"][-1]["role"]


class ChatContinuationTests(SynchronousTestCase):
    def test_prefill_fields_the_server_wants(self) -> None:
        def make(u: str) -> dict[str, Any]:
            return config_data({"first": backend_data(u, "k1"), "second": backend_data(
                u, "k2", continuation="prefill", prefill_message={"prefix": True},
                prefill_params={"continue_final_message": True,
                                "add_generation_prompt": False})})
        proxy = memory(make)
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=4)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        self.assertEqual(chat_text(chat(proxy).content), TEXT)
        prefill = proxy.fake.requests[1].body
        self.assertEqual(prefill["messages"][-1],
                         {"role": "assistant", "content": "The quick brown fox ", "prefix": True})
        self.assertEqual((prefill["continue_final_message"], prefill["add_generation_prompt"]),
                         (True, False))
        self.assertNotIn("prefix", json.dumps(proxy.fake.requests[0].body))

    def test_prefill_continues_whole_and_marked(self) -> None:
        proxy = memory(two_backends("prefill"))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=4)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        answer = chat(proxy)
        self.assertEqual(answer.status, 200)
        self.assertEqual(chat_text(answer.content), TEXT)
        self.assertEqual(seams(answer.content),
                         [b": llmproxy continuation from second:m2 after stream_cut"])
        chunks = sse_json(answer.content)
        [finish] = [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
        self.assertEqual((finish["choices"][0]["finish_reason"], finish[CONTINUED]), ("stop", 1))
        [usage] = [c for c in chunks if c.get("usage")]
        self.assertEqual(usage[CONTINUED], 1)
        self.assertEqual({c["id"] for c in chunks}, {"chatcmpl-m1"}, "one answer, one id")
        self.assertNotIn(b'"error"', answer.content)
        first, second = proxy.fake.requests
        self.assertEqual(second.body["messages"][-1],
                         {"role": "assistant", "content": "The quick brown fox "})
        self.assertTrue(answer.content.endswith(b"data: [DONE]\n\n"))

    def test_restart_splices_whole_and_marked(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=5)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        answer = chat(proxy)
        self.assertEqual(chat_text(answer.content), TEXT)
        self.assertEqual(len(seams(answer.content)), 1)
        self.assertEqual(last_user(proxy.fake.requests[1].body), "user", "a restart, no prefill")
        [usage] = [c["usage"] for c in sse_json(answer.content) if c.get("usage")]
        self.assertEqual(usage["completion_tokens"], len(words(TEXT)),
                         "the restarted answer's usage counts the whole answer")

    def test_prefill_rejected_then_restart(self) -> None:
        proxy = memory(two_backends("prefill"))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT, prefill="reject")]
        answer = chat(proxy)
        self.assertEqual(chat_text(answer.content), TEXT)
        self.assertEqual([last_user(r.body) for r in proxy.fake.requests],
                         ["user", "assistant", "user"])
        self.assertNotIn(b"invalid_prefill", answer.content)

    def test_prefill_rejected_and_restart_failing_names_the_original_failure(self) -> None:
        proxy = memory(two_backends("prefill"))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Reply(400, INVALID_PREFILL), SERVICE_UNAVAILABLE]
        answer = chat(proxy)
        self.assertEqual(answer.status, 200)
        errors = [c["error"] for c in sse_json(answer.content) if "error" in c]
        self.assertEqual(len(errors), 1)
        self.assertIn("upstream connection lost", errors[0]["message"])
        self.assertNotIn("prefill", json.dumps(errors))
        self.assertEqual(chat_text(answer.content), "The quick brown ")
        self.assertEqual(len(proxy.fake.requests), 3)
        self.assertEqual(seams(answer.content), [])

    def test_splice_mismatch_ends_with_a_clear_error(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak("The quick red fox is a different answer")]
        answer = chat(proxy)
        chunks = sse_json(answer.content)
        [error] = [c["error"] for c in chunks if "error" in c]
        self.assertEqual(error["code"], "continuation_mismatch")
        self.assertIn("cut and could not be continued verbatim", error["message"])
        self.assertEqual(chat_text(answer.content), "The quick brown ")
        self.assertFalse(any(CONTINUED in c for c in chunks), "never claims a whole answer")
        self.assertFalse(any(c.get("choices") and c["choices"][0]["finish_reason"]
                             for c in chunks))
        self.assertTrue(answer.content.endswith(b"data: [DONE]\n\n"))

    def test_restart_shorter_than_what_was_sent_is_a_mismatch(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=6)]
        proxy.fake.by_model["m2"] = [Speak("The quick brown")]
        errors = [c["error"] for c in sse_json(chat(proxy).content) if "error" in c]
        self.assertEqual([e["code"] for e in errors], ["continuation_mismatch"])

    def test_tool_call_in_progress_is_never_continued(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Stream(chat_tool_chunks("m1", "f", ['{"a"', ': 1}'])[:3],
                                            end="drop")]
        answer = chat(proxy)
        self.assertEqual(len(proxy.fake.requests), 1)
        [error] = [c["error"] for c in sse_json(answer.content) if "error" in c]
        self.assertIn("upstream connection lost", error["message"])

    def test_stall_is_continued_after_the_idle_timeout(self) -> None:
        proxy = memory(two_backends("prefill"))
        proxy.fake.by_model["m1"] = [Speak(TEXT, stall_after=2)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        d = proxy.request("POST", "/v1/chat/completions", {
            "model": ROUTE, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        proxy.advance(19.9)
        self.assertEqual(len(proxy.fake.requests), 1, "nothing before the idle timeout")
        proxy.advance(0.2)
        answer = proxy.result(d)
        self.assertEqual(chat_text(answer.content), TEXT)
        self.assertEqual(seams(answer.content),
                         [b": llmproxy continuation from second:m2 after upstream_timeout"])

    def test_continuation_off_globally(self) -> None:
        proxy = memory(two_backends(failure_handling={"continuation": False}))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        answer = chat(proxy)
        self.assertEqual(len(proxy.fake.requests), 1)
        self.assertEqual(len([c for c in sse_json(answer.content) if "error" in c]), 1)

    def test_continuation_off_per_route(self) -> None:
        routes = {"careful": {"elements": ["first:m1", "second:m2"], "continuation": False},
                  "eager": {"elements": ["first:m1", "second:m2"]}}
        proxy = memory(two_backends(failover_routes=routes))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        self.assertIn(b'"error"', chat(proxy, "careful").content)
        self.assertEqual(len(proxy.fake.requests), 1)
        self.assertEqual(chat_text(chat(proxy, "eager").content), TEXT)

    def test_nothing_left_to_try_is_the_original_error(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        answer = chat(proxy, "first:m1")
        self.assertEqual(len(proxy.fake.requests), 1)
        [error] = [c["error"] for c in sse_json(answer.content) if "error" in c]
        self.assertIn("upstream connection lost", error["message"])

    def test_a_continuation_that_breaks_too_ends_in_band(self) -> None:
        proxy = memory(two_backends("prefill"))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT, cut_after=2)]
        answer = chat(proxy)
        chunks = sse_json(answer.content)
        self.assertEqual(chat_text(answer.content), "The quick brown fox jumps ")
        self.assertEqual(len([c for c in chunks if "error" in c]), 1)
        self.assertFalse(any(CONTINUED in c for c in chunks))
        self.assertEqual(len(seams(answer.content)), 1)

    def test_a_continuation_that_breaks_is_continued_in_turn(self) -> None:
        proxy = memory(three_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT, cut_after=2)]
        proxy.fake.by_model["m3"] = [Speak(TEXT)]
        answer = chat(proxy, ROUTE + "|third:m3")
        self.assertEqual(chat_text(answer.content), TEXT)
        self.assertEqual(seams(answer.content), [
            b": llmproxy continuation from second:m2 after stream_cut",
            b": llmproxy continuation from third:m3 after stream_cut"])
        self.assertEqual(proxy.fake.requests[2].body["messages"][-1]["content"],
                         "The quick brown fox jumps ")

    def test_a_responses_backend_continues_a_chat_client(self) -> None:
        proxy = memory(lambda u: config_data({
            "first": backend_data(u, "k1"),
            "second": backend_data(u, "k2", type="openai-responses", continuation="prefill")}))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=4)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        answer = chat(proxy)
        self.assertEqual(chat_text(answer.content), TEXT)
        self.assertEqual({c["id"] for c in sse_json(answer.content)}, {"chatcmpl-m1"})
        self.assertEqual(proxy.fake.requests[1].path, "/v1/responses")

    def test_a_route_without_a_next_attempt_records_nothing(self) -> None:
        """
        The hot path: a stream with nowhere to continue is relayed as
        before, nothing kept.
        """
        from llmproxy.exchange import exchange

        made: list[Any] = []
        real = exchange.Recorder
        self.patch(exchange, "Recorder", lambda t: made.append(t) or real(t))
        proxy = memory(two_backends())
        chat(proxy, "first:m1")
        self.assertEqual(made, [])
        chat(proxy)
        self.assertEqual(len(made), 1)

    def test_an_internal_error_while_continuing_ends_in_band(self) -> None:
        from llmproxy.exchange import continuation

        def broken(*args: Any) -> Any:
            raise RuntimeError("bug")

        self.patch(continuation, "choose_transform", broken)
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        answer = chat(proxy)
        self.assertEqual(answer.status, 200)
        [error] = [c["error"] for c in sse_json(answer.content) if "error" in c]
        self.assertIn("upstream connection lost", error["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_reply_event_notes_the_continuation(self) -> None:
        proxy = memory(two_backends("prefill"))
        seen: list[Any] = []
        proxy.service.app.events.addObserver(seen.append)
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        chat(proxy)
        [reply] = [e for e in seen if e["log_namespace"] == REPLY_NAMESPACE]
        self.assertEqual((reply["continued"], reply["attempts"]), ("second:m2", 2))
        attempts = [e for e in seen if e["log_namespace"] == ATTEMPT_NAMESPACE]
        self.assertEqual([(a["backend"], a["outcome"]) for a in attempts],
                         [("first", BROKEN), ("second", OK)])
        self.assertEqual(reply["usage"]["total_tokens"], 3 + len(words(TEXT)) - 3)


def response_events(content: bytes) -> list[dict[str, Any]]:
    return [e for e in sse_json(content)]


def responses_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


class ResponsesContinuationTests(SynchronousTestCase):
    def check_whole(self, answer: Answer) -> dict[str, Any]:
        """
        One response id, contiguous sequence numbers, one message item:
        the completed response, returned.
        """
        events = response_events(answer.content)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        ids = {e["response"]["id"] for e in events if "response" in e}
        self.assertEqual(len(ids), 1)
        items = {e.get("item_id") or e["item"]["id"] for e in events
                 if "item_id" in e or "item" in e}
        self.assertEqual(len(items), 1)
        self.assertEqual({e["output_index"] for e in events if "output_index" in e}, {0})
        self.assertEqual(responses_text(events), TEXT)
        done = events[-1]
        self.assertEqual(done["type"], "response.completed")
        self.assertEqual(done["response"]["output"][0]["content"][0]["text"], TEXT)
        self.assertEqual(done["response"][CONTINUED], 1)
        self.assertEqual(len(seams(answer.content)), 1)
        return done["response"]

    def test_prefill_on_a_responses_backend(self) -> None:
        proxy = memory(lambda u: config_data({
            "first": backend_data(u, "k1", type="openai-responses"),
            "second": backend_data(u, "k2", type="openai-responses", continuation="prefill")}))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=4)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        response = self.check_whole(respond(proxy))
        self.assertEqual(response["id"], "resp_m1")
        prefill = proxy.fake.requests[1].body["input"][-1]
        self.assertEqual((prefill["role"], prefill["content"][0]["text"]),
                         ("assistant", "The quick brown fox "))

    def test_restart_on_a_chat_backend(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=6)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        response = self.check_whole(respond(proxy))
        self.assertEqual(response["status"], "completed")
        self.assertEqual(response["usage"]["output_tokens"], len(words(TEXT)))

    def test_prefill_rejected_and_nothing_else_is_the_original_failure(self) -> None:
        proxy = memory(two_backends("prefill"))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=2)]
        proxy.fake.by_model["m2"] = [Reply(400, INVALID_PREFILL), SERVICE_UNAVAILABLE]
        events = response_events(respond(proxy).content)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        failed = events[-1]
        self.assertEqual(failed["type"], "response.failed")
        self.assertIn("upstream connection lost", failed["response"]["error"]["message"])

    def test_mismatch_is_a_failed_response(self) -> None:
        proxy = memory(two_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak("Something else entirely")]
        events = response_events(respond(proxy).content)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        self.assertEqual(events[-1]["type"], "response.failed")
        self.assertIn("could not be continued verbatim",
                      events[-1]["response"]["error"]["message"])
        self.assertEqual(len({e["response"]["id"] for e in events if "response" in e}), 1)

    def test_the_continued_answer_is_stored_whole(self) -> None:
        proxy = memory(lambda u: config_data({
            "first": backend_data(u, "k1", type="openai-responses"),
            "second": backend_data(u, "k2", type="openai-responses", continuation="prefill"),
            "chat": backend_data(u, "k3")}))
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=4)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        first = self.check_whole(respond(proxy))
        proxy.post("/v1/responses", {"model": "chat:m3", "input": "more",
                                     "previous_response_id": first["id"]})
        sent = json.dumps(proxy.fake.requests[-1].body)
        self.assertIn(TEXT, sent)

    def test_a_continuation_that_breaks_is_continued_in_turn(self) -> None:
        proxy = memory(three_backends())
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT, cut_after=2)]
        proxy.fake.by_model["m3"] = [Speak(TEXT)]
        answer = respond(proxy, ROUTE + "|third:m3")
        self.assertEqual(len(seams(answer.content)), 2)
        events = response_events(answer.content)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        self.assertEqual(responses_text(events), TEXT)
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"], TEXT)

    def test_function_call_in_progress_is_never_continued(self) -> None:
        proxy = memory(lambda u: config_data({
            "first": backend_data(u, "k1", type="openai-responses"),
            "second": backend_data(u, "k2", type="openai-responses")}))
        proxy.fake.by_model["m1"] = [Stream(function_call_events("m1", "f", ['{"a"', ":1}"])[:4],
                                            end="drop")]
        events = response_events(respond(proxy).content)
        self.assertEqual(len(proxy.fake.requests), 1)
        self.assertEqual(events[-1]["type"], "response.failed")


class SDKTests(TestCase):
    async def started(self, second: str = "prefill") -> Any:
        proxy = await start(self, two_backends(second))
        proxy.fake.__class__ = SpeakingOpenAI
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=5)]
        proxy.fake.by_model["m2"] = [Speak(TEXT)]
        return proxy

    async def test_chat_stream_is_one_whole_answer(self) -> None:
        proxy = await self.started()

        def call() -> tuple[str, Any, Any]:
            with sdk(proxy.url) as client:
                text, finish, usage = "", None, None
                for chunk in client.chat.completions.create(
                        model=ROUTE, messages=[{"role": "user", "content": "hi"}], stream=True,
                        stream_options={"include_usage": True}):
                    if chunk.choices:
                        text += chunk.choices[0].delta.content or ""
                        finish = chunk.choices[0].finish_reason or finish
                    usage = chunk.usage or usage
                return text, finish, usage

        text, finish, usage = await in_thread(call)
        self.assertEqual((text, finish), (TEXT, "stop"))
        self.assertIsNotNone(usage)

    async def test_responses_stream_final_text_is_whole(self) -> None:
        proxy = await self.started("restart")

        def call() -> Any:
            with sdk(proxy.url) as client:
                with client.responses.stream(model=ROUTE, input="hi") as stream:
                    for _ in stream:
                        pass
                    return stream.get_final_response()

        final = await in_thread(call)
        self.assertEqual((final.output_text, final.status), (TEXT, "completed"))


class DisconnectTests(TestCase):
    async def test_a_client_leaving_during_a_continuation_stops_it(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Protocol
        from twisted.internet.task import deferLater

        from tests.harness import client

        proxy = await start(self, two_backends())
        proxy.fake.__class__ = SpeakingOpenAI
        proxy.fake.by_model["m1"] = [Speak(TEXT, cut_after=3)]
        proxy.fake.by_model["m2"] = [Speak(TEXT, stall_after=1)]
        body = {"model": ROUTE, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        response = await client(self).post(proxy.url + "/v1/chat/completions", json=body)

        class Reader(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                pass

        reader = Reader()
        response.deliverBody(reader)
        for _ in range(200):
            if len(proxy.fake.requests) == 2 and proxy.fake.open:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(proxy.fake.requests), 2)
        reader.transport.stopProducing()
        for _ in range(200):
            if not proxy.fake.open:
                break
            await deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(proxy.fake.open, [], "the continuation's upstream was stopped")
        self.assertEqual(proxy.fake.lost, 2)


def chunks_of(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:]) if b > a]


def chat_stream(pieces: list[str]) -> bytes:
    return b"".join(chat_chunks("m", pieces, usage=True))


def run(dialect: str, stream: bytes, sent: bytes, mode: str, batch: int) -> bytes:
    """
    Feed C{stream} (the continuation, in C{dialect}) through a splicer onto
    what C{sent} told the client, C{batch} events at a time.
    """
    splice = splicer(transforms.passthrough(dialect), partial_from(dialect, sent), mode,
                     seam_comment("b:m", "cut"))
    framer = SSEFramer(1 << 20)
    raw = framer.feed(stream)
    out = b"".join(splice.events(raw[i:i + batch]) for i in range(0, len(raw), batch))
    return out + splice.end()


class SpliceTests(SynchronousTestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.text(min_size=1, max_size=40), st.lists(st.integers(0, 60), max_size=6),
           st.integers(0, 40), st.integers(1, 4))
    def test_restart_of_the_same_text_joins_whole(
        self, text: str, cuts: list[int], sent_size: int, batch: int
    ) -> None:
        pieces = chunks_of(text, cuts)
        sent = chat_stream(pieces)
        sent = sent[:sent.find(b"\n\n") + 2] + b"".join(
            chat_chunks("m", [text[:sent_size % (len(text) + 1)]])[1:2])
        partial = partial_from(CHAT, sent)
        out = run(CHAT, chat_stream(chunks_of(text, cuts[::-1])), sent, RESTART, batch)
        self.assertEqual(partial.text + chat_text(out), text)
        self.assertTrue(out.startswith(b": llmproxy continuation from b:m after cut\n\n"))

    @settings(max_examples=60, deadline=None)
    @given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
    def test_restart_of_another_text_never_joins(self, sent_text: str, other: str) -> None:
        sent = b"".join(chat_chunks("m", [sent_text])[:2])
        if other.startswith(sent_text):
            return
        with self.assertRaises(SpliceMismatch):
            run(CHAT, chat_stream([other]), sent, RESTART, 1)

    @settings(max_examples=40, deadline=None)
    @given(st.text(max_size=30), st.text(max_size=30), st.integers(1, 4))
    def test_prefill_relays_everything_after_the_seam(
        self, head: str, rest: str, batch: int
    ) -> None:
        sent = b"".join(responses_events("m", [head])[:5])
        out = run(RESPONSES, b"".join(responses_events("m2", words(rest), "resp_2")), sent,
                  PREFILL, batch)
        events = sse_json(out)
        self.assertEqual(responses_text(events), rest)
        self.assertEqual([e["sequence_number"] for e in events],
                         list(range(5, 5 + len(events))))
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"], head + rest)
        self.assertEqual(events[-1]["response"]["id"], "resp_fake")

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8),
           st.integers(0, 8), st.integers(1, 4))
    def test_responses_restart_of_the_same_text_joins_whole(
        self, pieces: list[str], sent_count: int, batch: int
    ) -> None:
        text, kept = "".join(pieces), min(sent_count, len(pieces))
        sent = b"".join(responses_events("m", pieces)[:4 + kept])
        out = run(RESPONSES, b"".join(responses_events("m2", [text], "resp_2")), sent,
                  RESTART, batch)
        events = sse_json(out)
        self.assertEqual("".join(pieces[:kept]) + responses_text(events), text)
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"], text)
        self.assertEqual({e.get("item_id", "msg_fake") for e in events}, {"msg_fake"})
        self.assertEqual([e["sequence_number"] for e in events],
                         list(range(4 + kept, 4 + kept + len(events))))

    def test_partial_blockers(self) -> None:
        self.assertIsNone(partial_from(CHAT, b"".join(chat_chunks("m", ["a"])[:2])).blocker)
        tool = b"".join(chat_tool_chunks("m", "f", ["{}"])[:2])
        self.assertEqual(partial_from(CHAT, tool).blocker, "a tool call was in progress")
        self.assertEqual(partial_from(CHAT, chat_stream(["a"])).blocker,
                         "the answer already ended")
        call = b"".join(function_call_events("m", "f", ["{}"])[:3])
        self.assertEqual(partial_from(RESPONSES, call).blocker, "a tool call was in progress")

    def test_prefill_bodies(self) -> None:
        self.assertEqual(prefill_body(CHAT, {"messages": [{"role": "user", "content": "q"}]},
                                      "par")["messages"][-1],
                         {"role": "assistant", "content": "par"})
        body = prefill_body(RESPONSES, {"input": "q"}, "par")
        self.assertEqual(body["input"][0], {"role": "user", "content": "q"})
        self.assertEqual(body["input"][1]["content"][0]["text"], "par")

    def test_seam_comment_is_one_line(self) -> None:
        self.assertEqual(seam_comment("a:b\nc", "x\r\ny"),
                         b": llmproxy continuation from a:b c after x y\n\n")


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = make_config(config_data({"a": backend_data("http://x/v1", "k")},
                                         failover_routes={"r": {"elements": ["a:m"]}}))
        self.assertEqual((config.backends["a"].continuation, config.failure.continuation,
                          config.failover_routes["r"].continuation), ("restart", True, True))

    def test_values(self) -> None:
        config = make_config(config_data(
            {"a": backend_data("http://x/v1", "k", continuation="prefill")},
            failure_handling={"continuation": False},
            failover_routes={"r": {"elements": ["a:m"], "continuation": False}}))
        self.assertEqual((config.backends["a"].continuation, config.failure.continuation,
                          config.failover_routes["r"].continuation), ("prefill", False, False))

    def test_off_in_yaml(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("backends: {a: {type: openai, base_url: 'http://x/v1', api_key: k}}\n"
                    "failure_handling: {continuation: off}\n"
                    "failover_routes: {r: {elements: ['a:m'], continuation: off}}\n")
        config = make_config(load_yaml(path))
        self.assertEqual((config.failure.continuation, config.failover_routes["r"].continuation),
                         (False, False))

    def test_bad_values_name_the_key(self) -> None:
        with self.assertRaises(ConfigError) as e:
            make_config(config_data({"a": backend_data("http://x/v1", "k",
                                                       continuation="guess")}))
        self.assertIn("continuation", str(e.exception))
        with self.assertRaises(ConfigError):
            make_config(config_data({"a": backend_data("http://x/v1", "k")},
                                    failure_handling={"continuation": "maybe"}))
        with self.assertRaises(ConfigError) as e:
            make_config(config_data({"a": backend_data("http://x/v1", "k",
                                                       prefill_params=["x"])}))
        self.assertIn("prefill_params", str(e.exception))
