"""
Stream time limits (#15 items 3 and 4): C{first_token_timeout} (model-aware,
C{reasoning_first_token_timeout} for reasoning models) fails an attempt
whose answer has not started over, invisibly to the client;
C{stream_idle_timeout} cuts an answer that stalls, with a recognisable
in-band error.  Everything on a L{Clock}.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from hypothesis import given, strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.config import ConfigError
from llmproxy.config.model import BackendConfig, FailureConfig
from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import FirstTokenTimeout, StreamStalled
from llmproxy.exchange.limits import StreamLimits, header_wait, stream_limits
from llmproxy.exchange.relay import HOLD_LIMIT, AnswerWatch, StreamRelay
from llmproxy.translate.transforms import passthrough
from llmproxy.sse import DONE, encode_event
from llmproxy.testing import (
    Stall, Stream, chat_chunk, chat_chunks, chat_completion, chat_tool_chunks,
    function_call_events, make_config, openai_config, responses_events, sse_data, sse_json,
)
from llmproxy.translate.content import answer_starts, chat_starts, raw_starts, responses_starts
from tests.harness import Answer, MemoryProxy, in_thread, sdk, start

ROUTE = "openai:slow|openai:fast"


def config(**backend: Any) -> Any:
    """
    One openai backend (one key) with these settings on top; the failure
    handling's own settings come as C{failure_handling=...} (keepalives off
    unless they say otherwise: the route header then names what answered;
    continuation off: these tests are about how a stream ends, not how it is
    rescued, which tests/test_continuation.py covers).
    """
    failure = {"keepalive_after": 0, "continuation": False,
               **backend.pop("failure_handling", {})}

    def make(upstream: str) -> dict[str, Any]:
        data = openai_config(upstream, ["k"], failure_handling=failure)
        data["backends"]["openai"].update(backend)
        return data
    return make


def slow_first_token(model: str, after: float = 20.0) -> Stream:
    """
    Headers and the role chunk at once, the rest of the answer C{after}
    seconds later.
    """
    role, *rest = chat_chunks(model, ["late", " answer"])
    return Stream([role, b"".join(rest)], delay=after)


def stalled_after(model: str, tokens: int) -> Stream:
    """
    Headers, the role chunk and C{tokens} pieces at once, then silence.
    """
    return Stream(chat_chunks(model, ["w "] * (tokens + 5))[:tokens + 1], end="stall")


def start_chat(proxy: MemoryProxy, model: str = ROUTE, **fields: Any) -> Deferred[Answer]:
    return proxy.chat_d(model=model, stream=True, **fields)


def pending(proxy: MemoryProxy, d: Deferred[Answer]) -> bool:
    proxy.pump()
    return not d.called


class FirstTokenTests(SynchronousTestCase):
    def test_slow_first_token_fails_over_at_15_s(self) -> None:
        """
        Headers at once, the first token after 20 s: at 15 s the attempt is
        dropped and the fallback answers; the client sees one clean stream
        of the fallback's (its held-back role chunk included once), after
        the keepalives that covered the wait.
        """
        proxy = MemoryProxy(config(failure_handling={"keepalive_after": 5}))
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        d = start_chat(proxy)
        proxy.advance(14.9)
        self.assertTrue(pending(proxy, d))
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow"])
        proxy.advance(0.1)
        answer = proxy.result(d)
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow", "fast"])
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.content.startswith(b": keepalive\n\n"))
        chunks = sse_json(answer.content)
        self.assertEqual({c["model"] for c in chunks}, {"fast"})
        self.assertEqual(sum(1 for c in chunks if c["choices"][0]["delta"].get("role")), 1)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        self.assertEqual(text, "fake: hi ")
        self.assertNotIn(b"error", answer.content)
        self.assertEqual(sse_data(answer.content)[-1], "[DONE]")
        self.assertEqual(proxy.fake.lost, 1, "the slow upstream's connection is closed")

    def test_attempt_is_a_timeout(self) -> None:
        proxy = MemoryProxy(config())
        seen: list[Any] = []
        proxy.service.app.events.addObserver(seen.append)
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        d = start_chat(proxy)
        proxy.advance(15)
        proxy.result(d)
        attempts = [(e["model"], e["outcome"], e["error"]) for e in seen if "outcome" in e]
        self.assertEqual(attempts, [("slow", "timeout", "FirstTokenTimeout"),
                                    ("fast", "ok", None)])

    def test_responses_client_sees_one_response(self) -> None:
        """
        A Responses client (chat upstream): the events of the fallback
        only, one response id, sequence numbers from 0 without a gap.
        """
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        d = proxy.request("POST", "/v1/responses",
                          {"model": ROUTE, "input": "hi", "stream": True})
        proxy.advance(15)
        answer = proxy.result(d)
        events = sse_json(answer.content)
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        self.assertEqual(events[0]["type"], "response.created")
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual(sum(1 for e in events if e["type"] == "response.created"), 1)
        ids = {e["response"]["id"] for e in events if "response" in e}
        self.assertEqual(len(ids), 1)
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"],
                         "fake: hi ")

    def test_responses_upstream(self) -> None:
        """
        A Responses upstream whose C{response.created} and
        C{response.in_progress} come at once and its text after 20 s: the
        client sees the fallback's events only.
        """
        proxy = MemoryProxy(config(type="openai-responses"))
        created, progress, *rest = responses_events("slow", ["late"])
        proxy.fake.by_model["slow"] = [Stream([created + progress, b"".join(rest)], delay=20)]
        d = proxy.request("POST", "/v1/responses",
                          {"model": ROUTE, "input": "hi", "stream": True})
        proxy.advance(15)
        events = sse_json(proxy.result(d).content)
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow", "fast"])
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        self.assertEqual({e["response"]["model"] for e in events if "response" in e}, {"fast"})
        self.assertEqual(events[-1]["type"], "response.completed")

    def test_no_headers_within_the_limit_fails_over_too(self) -> None:
        """
        The first-token limit caps the wait for a stream's headers (the
        backend's C{timeout} is 600 s).
        """
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [Stall()]
        d = start_chat(proxy)
        proxy.advance(14.9)
        self.assertTrue(pending(proxy, d))
        proxy.advance(0.1)
        answer = proxy.result(d)
        self.assertEqual(answer.headers["x-llmproxy-route"], "openai:fast")
        self.assertIn(b"fake: ", answer.content)

    def test_an_answer_in_time_is_relayed(self) -> None:
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [slow_first_token("slow", after=14)]
        answer = self._after(proxy, start_chat(proxy), 14 * 3)
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow"])
        self.assertIn(b"late", answer.content)

    def _after(self, proxy: MemoryProxy, d: Deferred[Answer], seconds: float) -> Answer:
        for _ in range(int(seconds)):
            proxy.advance(1)
        return proxy.result(d)

    def test_reasoning_model_waits_longer(self) -> None:
        """
        A model the backend's C{reasoning_models} matches waits for its
        first token up to C{reasoning_first_token_timeout} (300 s).
        """
        proxy = MemoryProxy(config(reasoning_models="^slow",
                                   failure_handling={"total_timeout_budget": 400}))
        proxy.fake.by_model["slow"] = [slow_first_token("slow", after=100)]
        answer = self._after(proxy, start_chat(proxy), 200)
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow"])
        self.assertEqual(answer.headers["x-llmproxy-route"], "openai:slow")
        self.assertIn(b"late", answer.content)

    def test_default_reasoning_models_wait_longer(self) -> None:
        proxy = MemoryProxy(config(failure_handling={"total_timeout_budget": 400}))
        proxy.fake.by_model["o3"] = [slow_first_token("o3", after=100)]
        d = start_chat(proxy, "openai:o3|openai:fast")
        proxy.advance(100)
        answer = self._after(proxy, d, 100)
        self.assertEqual([r.model for r in proxy.fake.requests], ["o3"])
        self.assertIn(b"late", answer.content)

    def test_reasoning_limit_applies(self) -> None:
        proxy = MemoryProxy(config(reasoning_models="^slow",
                                   failure_handling={"reasoning_first_token_timeout": 40}))
        proxy.fake.by_model["slow"] = [slow_first_token("slow", after=100)]
        d = start_chat(proxy)
        proxy.advance(39.9)
        self.assertTrue(pending(proxy, d))
        proxy.advance(0.1)
        self.assertEqual(proxy.result(d).headers["x-llmproxy-route"], "openai:fast")

    def test_off(self) -> None:
        proxy = MemoryProxy(config(failure_handling={"first_token_timeout": 0}))
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        answer = self._after(proxy, start_chat(proxy), 40)
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow"])
        self.assertIn(b"late", answer.content)

    def test_backend_override(self) -> None:
        proxy = MemoryProxy(config(first_token_timeout=5))
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        d = start_chat(proxy)
        proxy.advance(4.9)
        self.assertTrue(pending(proxy, d))
        proxy.advance(0.1)
        self.assertEqual(proxy.result(d).headers["x-llmproxy-route"], "openai:fast")

    def test_nothing_left_names_the_limit(self) -> None:
        """
        With no element left, the client is told the answer did not start
        in time: a 504, or in-band once keepalives committed the stream.
        """
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        d = start_chat(proxy, "openai:slow")
        proxy.advance(15)
        answer = proxy.result(d)
        self.assertEqual(answer.status, 504)
        self.assertIn("did not start within 15 s", answer.json()["error"]["message"])
        breaker = proxy.service.app.runtime.upstreams.breakers["openai"].breaker("slow")
        assert breaker is not None, "the model is blamed, as for a timeout"
        self.assertEqual(breaker.consecutive_failures, 1)
        proxy = MemoryProxy(config(failure_handling={"keepalive_after": 5}))
        proxy.fake.by_model["slow"] = [slow_first_token("slow")]
        d = start_chat(proxy, "openai:slow")
        proxy.advance(5)
        proxy.advance(10)
        answer = proxy.result(d)
        [error] = [e["error"] for e in sse_json(answer.content) if "error" in e]
        self.assertIn("did not start within 15 s", error["message"])
        self.assertEqual(error["status_code"], 504)
        self.assertNotIn(b'"role"', answer.content, "the held-back role chunk is never sent")

    def test_empty_answer_is_relayed_whole(self) -> None:
        """
        A stream with no content (role, finish, C{[DONE]}) ends the wait:
        the held-back events reach the client.
        """
        proxy = MemoryProxy(config())
        events = [encode_event(chat_chunk("slow", {"role": "assistant", "content": ""})),
                  encode_event(chat_chunk("slow", {}, "stop")), DONE]
        proxy.fake.by_model["slow"] = [Stream(events)]
        answer = proxy.result(start_chat(proxy))
        self.assertEqual(sse_data(answer.content)[-1], "[DONE]")
        self.assertEqual(len(sse_json(answer.content)), 2)

    def test_non_streamed_requests_are_not_limited(self) -> None:
        """
        A whole answer has no first token: C{timeout} and the budget bound
        it (here its body comes 20 s after its headers).
        """
        proxy = MemoryProxy(config())
        body = json.dumps(chat_completion("slow", "whole")).encode()
        proxy.fake.by_model["slow"] = [Stream([body[:10], body[10:]], delay=20,
                                              headers={"content-type": "application/json"})]
        d = proxy.chat_d(model=ROUTE)
        proxy.advance(20)
        answer = proxy.result(d)
        self.assertEqual(answer.json()["choices"][0]["message"]["content"], "whole")
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow"])


class StallTests(SynchronousTestCase):
    def test_stall_after_tokens_is_cut_at_30_s(self) -> None:
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [stalled_after("slow", 20)]
        d = start_chat(proxy)
        proxy.advance(29.9)
        self.assertTrue(pending(proxy, d))
        proxy.advance(0.1)
        answer = proxy.result(d)
        data = sse_data(answer.content)
        self.assertEqual(data[-1], "[DONE]")
        error = json.loads(data[-2])["error"]
        self.assertIn("stalled", error["message"])
        self.assertIn("30 s", error["message"])
        self.assertEqual((error["status_code"], error["code"]), (504, "upstream_timeout"))
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in sse_json(answer.content) if "choices" in c)
        self.assertEqual(text, "w " * 20)
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow"])
        self.assertEqual(proxy.fake.lost, 1)

    def test_responses_stall_is_a_failed_response(self) -> None:
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [stalled_after("slow", 3)]
        d = proxy.request("POST", "/v1/responses",
                          {"model": "openai:slow", "input": "hi", "stream": True})
        proxy.advance(30)
        events = sse_json(proxy.result(d).content)
        self.assertEqual(events[-1]["type"], "response.failed")
        self.assertIn("stalled", events[-1]["response"]["error"]["message"])

    def test_backend_override(self) -> None:
        proxy = MemoryProxy(config(stream_idle_timeout=10))
        proxy.fake.by_model["slow"] = [stalled_after("slow", 2)]
        d = start_chat(proxy)
        proxy.advance(9.9)
        self.assertTrue(pending(proxy, d))
        proxy.advance(0.1)
        self.assertIn(b"stalled", proxy.result(d).content)

    def test_idle_timeout_still_bounds_it(self) -> None:
        """
        A backend's shorter C{idle_timeout} keeps bounding the gaps inside
        an answer (configs written before C{stream_idle_timeout}).
        """
        proxy = MemoryProxy(config(idle_timeout=8))
        proxy.fake.by_model["slow"] = [stalled_after("slow", 2)]
        d = start_chat(proxy)
        proxy.advance(8)
        self.assertIn(b"stalled", proxy.result(d).content)

    def test_slow_tokens_are_not_a_stall(self) -> None:
        proxy = MemoryProxy(config())
        proxy.fake.by_model["slow"] = [Stream(chat_chunks("slow", ["a", "b", "c"]), delay=12)]
        d = start_chat(proxy, "openai:slow")
        for _ in range(6):
            proxy.advance(12)
        answer = proxy.result(d)
        self.assertNotIn(b"error", answer.content)
        self.assertEqual(sse_data(answer.content)[-1], "[DONE]")


class Consumer(StringTransport):
    """
    A client's request: records whether its connection was aborted.
    """

    aborted = False

    @property
    def transport(self) -> Any:
        return self

    def abortConnection(self) -> None:
        self.aborted = True


def watched(first_token: float = 15.0, stream_idle: float = 30.0, idle: float = 300.0) -> tuple[
        StreamRelay, StringTransport, Consumer, Clock]:
    """
    A chat relay watching for its answer, its upstream a transport the
    test drives.
    """
    clock = Clock()
    consumer = Consumer()
    watch = AnswerWatch(answer_starts(CHAT), first_token, first_token, stream_idle)
    relay = StreamRelay(consumer, passthrough(CHAT), clock, idle, answer=watch)
    upstream = StringTransport()
    relay.makeConnection(upstream)
    return relay, upstream, consumer, clock


class RelayTests(SynchronousTestCase):
    def test_preamble_held_then_written_in_order(self) -> None:
        relay, _, consumer, clock = watched()
        events = chat_chunks("m", ["a"])
        relay.dataReceived(events[0])
        relay.dataReceived(b": ping\n\n")
        self.assertEqual(consumer.value(), b": ping\n\n", "comments pass, the role waits")
        self.assertFalse(relay.wrote)
        relay.dataReceived(events[1])
        self.assertEqual(consumer.value(), b": ping\n\n" + events[0] + events[1])
        self.assertTrue(relay.wrote)

    def test_first_token_timeout(self) -> None:
        relay, upstream, consumer, clock = watched()
        relay.dataReceived(chat_chunks("m", ["a"])[0])
        clock.advance(14.9)
        self.assertFalse(relay.finished.called)
        clock.advance(0.1)
        self.failureResultOf(relay.finished, FirstTokenTimeout)
        self.assertEqual(consumer.value(), b"")
        self.assertEqual(upstream.producerState, "stopped")

    def test_hold_limit(self) -> None:
        """
        No preamble is held beyond L{HOLD_LIMIT} bytes: past it, the answer
        counts as started (nothing piles up in llmproxy).
        """
        relay, _, consumer, _ = watched()
        role = chat_chunks("m", ["a"])[0]
        count = HOLD_LIMIT // len(role) + 1
        for _ in range(count):
            relay.dataReceived(role)
        self.assertEqual(consumer.value(), role * count)
        self.assertTrue(relay.wrote)

    def test_paused_client_keeps_idle_timeout(self) -> None:
        """
        Inside the answer a silent upstream has C{stream_idle}, but a client
        that does not read still has the backend's C{idle_timeout}.
        """
        relay, _, consumer, clock = watched(stream_idle=30, idle=300)
        relay.dataReceived(b"".join(chat_chunks("m", ["a"])[:2]))
        relay.pauseProducing()
        clock.advance(299)
        self.assertFalse(consumer.aborted)
        clock.advance(1)
        self.assertTrue(consumer.aborted)

    def test_stall_after_resume(self) -> None:
        relay, _, consumer, clock = watched(stream_idle=30, idle=300)
        relay.dataReceived(b"".join(chat_chunks("m", ["a"])[:2]))
        relay.pauseProducing()
        clock.advance(100)
        relay.resumeProducing()
        clock.advance(29.9)
        self.assertFalse(relay.finished.called)
        clock.advance(0.1)
        self.failureResultOf(relay.finished, StreamStalled)


class LimitsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        failure = make_config(openai_config("http://u/v1")).failure
        self.assertEqual((failure.first_token_timeout, failure.reasoning_first_token_timeout,
                          failure.stream_idle_timeout), (15.0, 300.0, 30.0))

    def test_read(self) -> None:
        data = openai_config("http://u/v1", failure_handling={
            "first_token_timeout": 7, "reasoning_first_token_timeout": 0,
            "stream_idle_timeout": 12.5})
        data["backends"]["openai"].update(first_token_timeout=3, stream_idle_timeout=4)
        cfg = make_config(data)
        self.assertEqual((cfg.failure.first_token_timeout,
                          cfg.failure.reasoning_first_token_timeout,
                          cfg.failure.stream_idle_timeout), (7.0, 0.0, 12.5))
        backend = cfg.backends["openai"]
        self.assertEqual((backend.first_token_timeout, backend.reasoning_first_token_timeout,
                          backend.stream_idle_timeout), (3.0, None, 4.0))

    def test_negative_rejected(self) -> None:
        data = openai_config("http://u/v1", failure_handling={"first_token_timeout": -1})
        with self.assertRaises(ConfigError) as e:
            make_config(data)
        self.assertIn("first_token_timeout", str(e.exception))
        data = openai_config("http://u/v1")
        data["backends"]["openai"]["stream_idle_timeout"] = "soon"
        with self.assertRaises(ConfigError) as e:
            make_config(data)
        self.assertIn("stream_idle_timeout", str(e.exception))

    def test_model_aware(self) -> None:
        import re
        failure = FailureConfig()
        plain = BackendConfig("b", "openai")
        self.assertEqual(stream_limits(failure, plain, "gpt-4o"), StreamLimits(15.0, 30.0))
        self.assertEqual(stream_limits(failure, plain, "o3-mini").first_token, 300.0)
        custom = BackendConfig("b", "openai", reasoning_models=re.compile("qwq"),
                               reasoning_first_token_timeout=60.0)
        self.assertEqual(stream_limits(failure, custom, "qwq-32b").first_token, 60.0)
        self.assertEqual(stream_limits(failure, custom, "o3").first_token, 15.0)

    def test_idle_within_idle_timeout(self) -> None:
        failure = FailureConfig(stream_idle_timeout=0)
        self.assertEqual(stream_limits(failure, BackendConfig("b", "openai"), "m").stream_idle,
                         300.0)
        short = BackendConfig("b", "openai", idle_timeout=10.0)
        self.assertEqual(stream_limits(FailureConfig(), short, "m").stream_idle, 10.0)

    def test_header_wait(self) -> None:
        self.assertEqual(header_wait(StreamLimits(15, 30), 600), 15)
        self.assertEqual(header_wait(StreamLimits(15, 30), 10), 10)
        self.assertEqual(header_wait(StreamLimits(0, 30), 600), 600)


def raw_chat(chunks: list[Mapping[str, Any]]) -> list[bytes]:
    return [encode_event(c) for c in chunks]


#: Delta fields that carry nothing.
BLANK = st.sampled_from([None, "", [], {}])
CONTENT_KEYS = st.sampled_from(["content", "reasoning_content", "reasoning", "refusal",
                                "tool_calls", "function_call", "audio"])
FILLED = st.one_of(st.text(min_size=1), st.lists(st.integers(), min_size=1),
                   st.dictionaries(st.text(), st.integers(), min_size=1))


@st.composite
def empty_choice(draw: Any) -> dict[str, Any]:
    delta = draw(st.dictionaries(CONTENT_KEYS, BLANK))
    if draw(st.booleans()):
        delta["role"] = "assistant"
    return {"index": draw(st.integers(0, 3)), "delta": delta, "finish_reason": None}


class ContentPredicateTests(SynchronousTestCase):
    @given(st.lists(empty_choice(), max_size=3))
    def test_chat_preamble(self, choices: list[dict[str, Any]]) -> None:
        self.assertFalse(chat_starts({"object": "chat.completion.chunk", "choices": choices}))

    @given(st.lists(empty_choice(), max_size=3), empty_choice(), CONTENT_KEYS, FILLED,
           st.integers(0, 3))
    def test_chat_content(self, others: list[dict[str, Any]], choice: dict[str, Any],
                          key: str, value: Any, at: int) -> None:
        choice["delta"][key] = value
        choices = others[:at] + [choice] + others[at:]
        self.assertTrue(chat_starts({"choices": choices}))

    @given(st.lists(empty_choice(), max_size=3), empty_choice(),
           st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    def test_chat_finish_ends_the_wait(self, others: list[dict[str, Any]],
                                       choice: dict[str, Any], reason: str) -> None:
        choice["finish_reason"] = reason
        self.assertTrue(chat_starts({"choices": [*others, choice]}))

    @given(st.dictionaries(st.text(), st.integers()))
    def test_chat_unknown_shapes_start(self, extra: dict[str, Any]) -> None:
        self.assertTrue(chat_starts({**extra, "error": {"message": "x"}}))
        self.assertTrue(chat_starts({k: v for k, v in extra.items() if k != "choices"}))

    def test_chat_usage_only(self) -> None:
        self.assertFalse(chat_starts({"choices": [], "usage": {"total_tokens": 3}}))

    @given(st.sampled_from(["response.created", "response.in_progress", "response.queued",
                            "response.content_part.added",
                            "response.reasoning_summary_part.added"]),
           st.dictionaries(st.sampled_from(["response", "part", "item_id"]), st.integers()))
    def test_responses_preamble(self, kind: str, extra: dict[str, Any]) -> None:
        self.assertFalse(responses_starts({**extra, "type": kind}))

    @given(st.sampled_from(["response.created", "response.in_progress"]),
           st.booleans())
    def test_responses_preamble_by_name(self, kind: str, named: bool) -> None:
        """
        A preamble event is known by its C{event:} line without parsing
        (its data may be anything), or by its data's type.
        """
        # Data without a type would start the answer, were it parsed.
        data = {"response": {"id": "r"}} if named else {"type": kind, "response": {"id": "r"}}
        raw = encode_event(data, kind if named else None)
        self.assertFalse(raw_starts(responses_starts, [raw]))
        self.assertTrue(raw_starts(responses_starts, [
            raw, encode_event({"type": "response.output_text.delta", "delta": "x"})]))

    @given(st.sampled_from(["message", "reasoning"]))
    def test_responses_shell_items(self, item: str) -> None:
        self.assertFalse(responses_starts({"type": "response.output_item.added",
                                           "item": {"type": item, "content": []}}))
        self.assertTrue(responses_starts({"type": "response.output_item.done",
                                          "item": {"type": item, "content": []}}))

    @given(st.sampled_from(["output_text", "refusal", "reasoning_text", "reasoning_summary_text",
                            "function_call_arguments", "custom_tool_call_input"]),
           st.text(min_size=1))
    def test_responses_deltas(self, what: str, delta: str) -> None:
        kind = f"response.{what}.delta"
        self.assertTrue(responses_starts({"type": kind, "delta": delta}))
        self.assertFalse(responses_starts({"type": kind, "delta": ""}))

    @given(st.sampled_from(["function_call", "custom_tool_call", "web_search_call"]))
    def test_responses_tool_items_start(self, item: str) -> None:
        self.assertTrue(responses_starts({"type": "response.output_item.added",
                                          "item": {"type": item}}))

    @given(st.sampled_from(["response.completed", "response.incomplete", "response.failed",
                            "error", "response.something_new"]))
    def test_responses_ends_and_unknowns_start(self, kind: str) -> None:
        self.assertTrue(responses_starts({"type": kind}))

    @given(st.lists(st.text(alphabet="abc ", max_size=5), max_size=3))
    def test_raw_comments_and_done(self, comments: list[str]) -> None:
        raw = [f": {c}\n\n".encode() for c in comments]
        self.assertFalse(raw_starts(chat_starts, raw))
        self.assertTrue(raw_starts(chat_starts, raw + [DONE]))

    def _first(self, dialect: str, events: list[bytes]) -> int:
        starts = answer_starts(dialect)
        return next(i for i in range(len(events)) if starts(events[:i + 1]))

    def test_first_content_of_canned_streams(self) -> None:
        self.assertEqual(self._first(CHAT, chat_chunks("m", ["a", "b"])), 1)
        self.assertEqual(self._first(CHAT, chat_tool_chunks("m", "f", ["{}"])), 1)
        events = responses_events("m", ["a", "b"])
        first = self._first(RESPONSES, events)
        self.assertEqual(json.loads(sse_data(events[first])[0])["type"],
                         "response.output_text.delta")
        events = function_call_events("m", "f", "{}")
        first = self._first(RESPONSES, events)
        self.assertEqual(json.loads(sse_data(events[first])[0])["type"],
                         "response.output_item.added")

    def test_stalled_error(self) -> None:
        error = StreamStalled("no event for more than 30 s")
        self.assertEqual(error.reason, "no event for more than 30 s")
        self.assertEqual((error.status, error.code), (504, "upstream_timeout"))


async def until(predicate: Any, tries: int = 300) -> None:
    for _ in range(tries):
        if predicate():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("condition never held")


class SDKTests(TestCase):
    """
    The official SDK, on real connections; llmproxy's timers on a
    L{Clock}.  The slow element sends its headers and role chunk, then
    nothing.
    """

    async def _failed_over(self, call: Any) -> Any:
        clock = Clock()
        proxy = await start(self, config(), clock=clock)
        proxy.fake.by_model["slow"] = [Stream(chat_chunks("slow", ["never"])[:1], end="stall")]
        d = in_thread(lambda: call(proxy.url))
        await until(lambda: proxy.fake.requests and proxy.fake.stream_transports)
        await deferLater(reactor, 0.05)
        self.assertFalse(d.called)
        clock.advance(15)
        result = await d
        self.assertEqual([r.model for r in proxy.fake.requests], ["slow", "fast"])
        await until(lambda: proxy.fake.lost == 1)
        return result

    async def test_chat(self) -> None:
        def call(url: str) -> Any:
            with sdk(url) as client:
                chunks = list(client.chat.completions.create(
                    model=ROUTE, messages=[{"role": "user", "content": "hello sdk"}],
                    stream=True))
            return chunks

        chunks = await self._failed_over(call)
        self.assertEqual({c.model for c in chunks}, {"fast"})
        self.assertEqual(len({c.id for c in chunks}), 1)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "fake: hello sdk ")

    async def test_responses(self) -> None:
        def call(url: str) -> Any:
            with sdk(url) as client:
                return list(client.responses.create(model=ROUTE, input="hello sdk",
                                                    stream=True))

        events = await self._failed_over(call)
        self.assertEqual([e.sequence_number for e in events], list(range(len(events))))
        self.assertEqual(events[-1].type, "response.completed")
        self.assertEqual(len({e.response.id for e in events if hasattr(e, "response")}), 1)
        self.assertEqual(events[-1].response.output_text, "fake: hello sdk ")

