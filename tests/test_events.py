"""
The exchange's events (L{llmproxy.exchange.events}): one per attempt and one
per reply, seen by observers; the access log is one of them.  In memory, on
a L{Clock}, through llmproxy's own site.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, strategies as st
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.exchange.events import (
    ATTEMPT_NAMESPACE, OUTCOMES, REPLY_NAMESPACE, AttemptNote, ExchangeEvents, ReplyNote,
    find_usage,
)
from llmproxy.frontends.access import ACCESS_NAMESPACE, AccessLog
from llmproxy.sse import encode_event
from llmproxy.testing import chat_chunks
from tests.memsite import USER, Answer, Conversation, Scripts, config_of, memory_app

SECRET = "sk-secret-value-123456"


class Recorder:
    """
    An observer keeping the attempt and reply events apart.
    """

    def __init__(self) -> None:
        self.attempts: list[LogEvent] = []
        self.replies: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event["log_namespace"] == ATTEMPT_NAMESPACE:
            self.attempts.append(event)
        elif event["log_namespace"] == REPLY_NAMESPACE:
            self.replies.append(event)


class EventsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.scripts = Scripts(self.clock)
        self.recorder = Recorder()

    def app(self, **backends: dict[str, Any]) -> Any:
        # Same-target retries (tests.test_retries) off: one attempt per element.
        app = memory_app(config_of(backends or {"a": {}}, metrics=False,
                                   failure_handling={"retries_per_target": 0}),
                         self.clock, self.scripts)
        app.events.addObserver(self.recorder)
        return app

    def chat(self, app: Any, body: dict[str, Any], seconds: float = 1.0) -> Conversation:
        conversation = Conversation(app, self.clock)
        conversation.send("POST", "/v1/chat/completions", {"messages": USER, **body})
        conversation.run(seconds)
        return conversation


class AttemptEventTests(EventsTestCase):
    def test_failover_is_two_attempts_and_one_reply(self) -> None:
        self.scripts.scripts["a"] = [Answer(500, [b'{"error": {"message": "down"}}'])]
        app = self.app(a={}, b={"api_keys": ["sk-b1"]})
        reply = self.chat(app, {"model": "a:m|b:m"}).reply()
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            [(e["attempt"], e["backend"], e["outcome"], e["status"])
             for e in self.recorder.attempts],
            [(1, "a", "retry_next", 500), (2, "b", "ok", 200)],
        )
        [event] = self.recorder.replies
        self.assertEqual((event["status"], event["attempts"], event["route"], event["key"]),
                         (200, 2, "b:m", "b#1"))

    def test_fields_of_a_streamed_attempt(self) -> None:
        chunks = chat_chunks("m", ["a", "b", "c"])
        self.scripts.scripts["a"] = [Answer(chunks=chunks, after=2.0, delay=0.5)]
        app = self.app(a={"api_keys": [SECRET]})
        self.chat(app, {"model": "a:m", "stream": True}, seconds=5)
        [event] = self.recorder.attempts
        self.assertEqual(
            {k: event[k] for k in ("attempt", "backend", "model", "key", "outcome", "status",
                                   "error")},
            {"attempt": 1, "backend": "a", "model": "m", "key": "a#1", "outcome": "ok",
             "status": 200, "error": None},
        )
        self.assertAlmostEqual(event["time_to_headers"], 2.0)
        # The role chunk is held back: the first event is the first content.
        self.assertAlmostEqual(event["time_to_first_event"], 2.5)
        self.assertAlmostEqual(event["duration"], 2.0 + 0.5 * (len(chunks) - 1), places=5)
        self.assertIn("a:m", formatEvent(event))

    def test_whole_answer_has_no_first_event(self) -> None:
        self.scripts.scripts["a"] = [Answer(after=0.25)]
        self.chat(self.app(), {"model": "a:m"})
        [event] = self.recorder.attempts
        self.assertAlmostEqual(event["time_to_headers"], 0.25)
        self.assertIsNone(event["time_to_first_event"])

    def test_no_answer(self) -> None:
        self.scripts.scripts["a"] = [ConnectionRefusedError()]
        reply = self.chat(self.app(), {"model": "a:m"}).reply()
        self.assertEqual(reply.status, 502)
        [event] = self.recorder.attempts
        self.assertEqual((event["outcome"], event["status"], event["time_to_headers"],
                          event["error"]),
                         ("unreachable", None, None, "ConnectionRefusedError"))
        [reply_event] = self.recorder.replies
        self.assertEqual((reply_event["status"], reply_event["attempts"], reply_event["route"]),
                         (502, 1, None))

    def test_rate_limited_then_client_error(self) -> None:
        self.scripts.scripts["a"] = [
            Answer(429, [b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}']),
            Answer(400, [b'{"error": {"message": "bad", "type": "invalid_request_error"}}']),
        ]
        reply = self.chat(self.app(a={"api_keys": ["k1", "k2"]}), {"model": "a:m"}).reply()
        self.assertEqual(reply.status, 400)
        self.assertEqual([(e["outcome"], e["status"], e["key"]) for e in self.recorder.attempts],
                         [("rate_limited", 429, "a#1"), ("client_error", 400, "a#2")])
        self.assertEqual(self.recorder.replies[0]["route"], "a:m")

    def test_stream_broken_before_its_first_event_fails_over(self) -> None:
        self.scripts.scripts["a"] = [Answer(chunks=[b"data: {\"cut"]), Answer()]
        reply = self.chat(self.app(), {"model": "a:m|a:m2", "stream": True}).reply()
        self.assertEqual(reply.status, 200)
        self.assertEqual([(e["outcome"], e["error"]) for e in self.recorder.attempts],
                         [("broken", "StreamBroken"), ("ok", None)])
        self.assertEqual(self.recorder.replies[0]["route"], "a:m2")

    def test_client_leaving_cancels_the_attempt(self) -> None:
        self.scripts.scripts["a"] = [Answer(chunks=chat_chunks("m", ["x"] * 20), delay=1.0)]
        conversation = self.chat(self.app(), {"model": "a:m", "stream": True}, seconds=2.5)
        conversation.leave()
        [event] = self.recorder.attempts
        self.assertEqual(event["outcome"], "cancelled")
        self.assertAlmostEqual(event["time_to_first_event"], 1.0)
        [reply] = self.recorder.replies
        self.assertEqual((reply["completed"], reply["streamed"], reply["status"]),
                         (False, True, 200))

    def test_outcomes_are_the_documented_ones(self) -> None:
        self.scripts.scripts["a"] = [
            Answer(500), Answer(401), Answer(429), ConnectionRefusedError(), Answer(),
        ]
        self.chat(self.app(a={"api_keys": ["k1", "k2", "k3", "k4", "k5"]}),
                  {"model": "a:m"})
        outcomes = [e["outcome"] for e in self.recorder.attempts]
        self.assertEqual(outcomes, ["retry_next", "next_key", "rate_limited", "unreachable",
                                    "ok"])
        self.assertLessEqual(set(outcomes), OUTCOMES)


class ReplyEventTests(EventsTestCase):
    def test_fields(self) -> None:
        self.scripts.scripts["a"] = [Answer(after=0.5)]
        app = self.app(a={"api_keys": [SECRET]})
        reply = self.chat(app, {"model": "a:m"}).reply()
        [event] = self.recorder.replies
        self.assertEqual(
            {k: event[k] for k in ("method", "path", "protocol", "client", "user_agent",
                                   "status", "bytes", "completed", "route", "key", "attempts",
                                   "streamed")},
            {"method": "POST", "path": "/v1/chat/completions", "protocol": "HTTP/1.1",
             "client": "10.1.2.3", "user_agent": "memsite/1", "status": 200,
             "bytes": len(reply.body), "completed": True, "route": "a:m", "key": "a#1",
             "attempts": 1, "streamed": False},
        )
        self.assertAlmostEqual(event["duration"], 0.5)
        self.assertEqual(event["usage"], json.loads(reply.body)["usage"])

    def test_usage_of_a_stream(self) -> None:
        self.chat(self.app(), {"model": "a:m", "stream": True})
        [event] = self.recorder.replies
        self.assertTrue(event["streamed"])
        self.assertEqual(event["usage"], {"prompt_tokens": 3, "completion_tokens": 2,
                                          "total_tokens": 5})

    def test_usage_of_a_translated_stream(self) -> None:
        conversation = Conversation(self.app(), self.clock)
        conversation.send("POST", "/v1/responses", {"model": "a:m", "input": "hi",
                                                    "stream": True})
        conversation.run(1)
        self.assertIn(b"response.completed", conversation.reply().body)
        self.assertEqual(self.recorder.replies[0]["usage"]["total_tokens"], 5)

    def test_no_usage_when_the_answer_has_none(self) -> None:
        self.scripts.scripts["a"] = [Answer(chunks=chat_chunks("m", ["x"]))]
        self.chat(self.app(), {"model": "a:m", "stream": True})
        self.assertIsNone(self.recorder.replies[0]["usage"])

    def test_requests_needing_no_upstream(self) -> None:
        app = self.app()
        conversation = Conversation(app, self.clock)
        conversation.send("GET", "/healthz")
        conversation.send("POST", "/v1/chat/completions", b"{not json")
        conversation.run()
        self.assertEqual(
            [(e["method"], e["path"], e["status"], e["attempts"], e["route"], e["usage"])
             for e in self.recorder.replies],
            [("GET", "/healthz", 200, 0, None, None),
             ("POST", "/v1/chat/completions", 400, 0, None, None)],
        )
        self.assertEqual(self.recorder.attempts, [])

    def test_never_a_key_value(self) -> None:
        self.scripts.scripts["a"] = [
            Answer(401, [f'{{"error": {{"message": "bad key {SECRET}"}}}}'.encode()]),
            Answer(),
        ]
        app = self.app(a={"api_keys": [SECRET, SECRET + "-2"]})
        self.chat(app, {"model": "a:m"})
        events = self.recorder.attempts + self.recorder.replies
        self.assertEqual(len(events), 3)
        for event in events:
            fields = {k: v for k, v in event.items() if not k.startswith("log_")}
            self.assertNotIn(SECRET, repr(fields))
            self.assertNotIn(SECRET, formatEvent(event))

    def test_events_are_not_computed_without_observers(self) -> None:
        app = self.app()
        app.events.removeObserver(self.recorder)
        self.assertFalse(app.events.observed)
        self.chat(app, {"model": "a:m"})
        self.assertEqual((self.recorder.attempts, self.recorder.replies), ([], []))


class PublisherTests(SynchronousTestCase):
    def test_observers_come_and_go(self) -> None:
        events = ExchangeEvents()
        seen: list[LogEvent] = []
        events.addObserver(seen.append)
        events.addObserver(seen.append)
        note = AttemptNote(1, "a", "m", None, 10.0, outcome="ok", status=200, headers_at=10.5)
        events.attempt(note, 12.0)
        self.assertEqual(len(seen), 1, "an observer added twice sees an event once")
        self.assertEqual((seen[0]["time_to_headers"], seen[0]["duration"]), (0.5, 2.0))
        self.assertEqual((seen[0]["log_namespace"], seen[0]["log_format"]),
                         (ATTEMPT_NAMESPACE, "attempt {attempt} to {backend}:{model} (key "
                                             "{key}): {outcome}, status {status}"))
        events.removeObserver(seen.append)
        self.assertFalse(events.observed)
        events.attempt(note, 12.0)
        self.assertEqual(len(seen), 1)

    def test_a_broken_observer_does_not_stop_the_others(self) -> None:
        events = ExchangeEvents()
        seen: list[LogEvent] = []

        def broken(event: LogEvent) -> None:
            raise RuntimeError("observer bug")

        events.addObserver(broken)
        events.addObserver(seen.append)
        events.reply({"status": 200}, ReplyNote(route="a:m", attempts=1))
        self.assertEqual([e["route"] for e in seen if "route" in e], ["a:m"])
        self.flushLoggedErrors(RuntimeError)


class AccessLogTests(EventsTestCase):
    def test_one_line_per_reply_with_route_and_status(self) -> None:
        lines: list[LogEvent] = []
        app = self.app(a={"api_keys": [SECRET]})
        app.events.addObserver(AccessLog(Logger(observer=lines.append)))
        self.chat(app, {"model": "a:m"})
        [line] = lines
        text = formatEvent(line)
        self.assertRegex(text, r'^10\.1\.2\.3 "POST /v1/chat/completions HTTP/1\.1" 200 \d+ '
                               r'0\.000s route=a:m key=a#1 attempts=1 stream=no prompt=3 completion=2 '
                               r'total=5 cached=0 reasoning=0 "memsite/1"$')
        self.assertNotIn(SECRET, text)

    def test_client_left_and_no_route(self) -> None:
        lines: list[LogEvent] = []
        log = AccessLog(Logger(observer=lines.append))
        log({"log_namespace": ATTEMPT_NAMESPACE})
        log({"log_namespace": REPLY_NAMESPACE, "client": "-", "method": "GET",
             "path": '/x"\n', "protocol": "HTTP/1.0", "status": 404, "bytes": 0,
             "duration": 0.25, "route": None, "key": None, "attempts": 0, "streamed": False,
             "user_agent": None, "completed": False, "usage": None})
        [line] = lines
        self.assertEqual(formatEvent(line), '- "GET /x\\"\\n HTTP/1.0" 404 - 0.250s route=- '
                                            'key=- attempts=0 stream=no "-" client-left')

    def test_on_the_main_log(self) -> None:
        self.assertEqual(AccessLog().log.namespace, ACCESS_NAMESPACE)
        self.assertIs(AccessLog().log.observer, globalLogPublisher)

    def test_the_setting_adds_the_observer(self) -> None:
        on = memory_app(config_of({"a": {}}, access_log=True, metrics=False), self.clock)
        off = memory_app(config_of({"a": {}}, metrics=False), self.clock)
        self.assertTrue(on.events.observed)
        self.assertFalse(off.events.observed)


usage_values = st.dictionaries(
    st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "input_tokens"]),
    st.integers(0, 10**9) | st.dictionaries(st.just("cached_tokens"), st.integers(0, 99)),
    min_size=1,
)


class FindUsageTests(SynchronousTestCase):
    @given(usage_values, st.sampled_from([(",", ":"), (", ", ": "), (",", " :  ")]),
           st.text(max_size=30))
    def test_found_in_a_whole_answer(self, usage: dict[str, Any],
                                     separators: tuple[str, str], text: str) -> None:
        body = {"id": "x", "choices": [{"message": {"content": text + ' "usage": 1'}}],
                "usage": usage}
        self.assertEqual(find_usage(json.dumps(body, separators=separators).encode()), usage)

    @given(st.text(max_size=50))
    def test_text_alone_is_no_usage(self, text: str) -> None:
        body = {"choices": [{"message": {"content": text}}], "usage": None}
        self.assertIsNone(find_usage(json.dumps(body).encode()))

    def test_shapes_that_are_not_usage(self) -> None:
        for data in [b"", b'{"usage"}', b'{"type": "usage"}', b'{"usage": [1]}',
                     b'{"usage": {"a": 1', encode_event({"usage": None})]:
            self.assertIsNone(find_usage(data), data)
