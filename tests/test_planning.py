"""
The planning phase (behaviour.md section 11): a conversation's first turns
on the strong model with its overrides, counted, and the client's own
route back at either limit; asserted on what the fake upstream received.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from hypothesis import given, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.config import ConfigError
from llmproxy.config.session import PlanningConfig
from llmproxy.exchange.planning import (
    WRITE_TOOLS, WriteTap, check_strong_model, is_file_write, planned_body,
)
from llmproxy.exchange.runtime import Runtime, Upstreams
from llmproxy.exchange.sessions import MemorySessions
from llmproxy.sse import DONE, encode_event
from llmproxy.startup import StartupError
from llmproxy.testing import (
    Reply, Stream, backend_data, chat_chunk, chat_chunks, chat_request, chat_tool_chunks,
    chat_tool_completion, config_data, function_call_events, function_call_response,
    make_config, openai_config,
)
from llmproxy.translate import transforms
from tests.harness import MemoryProxy, post, start
from tests.test_tap import TapTestCase

STRONG = "gpt-strong"
CHAT = "/v1/chat/completions"


def planning(**fields: Any) -> dict[str, Any]:
    """
    A C{session} section with the planning phase on (strong model
    C{openai:gpt-strong?reasoning_effort=high}, C{temperature} 0.2 and
    C{top_p} 0.5 as overrides), C{fields} on top.
    """
    phase = {"enabled": True, "strong_model": f"openai:{STRONG}?reasoning_effort=high",
             "max_turns": 3, "max_file_writes": 1,
             "overrides": {"temperature": 0.2, "top_p": 0.5}, **fields}
    return {"planning_phase": phase}


def proxy(backend: str = "openai", **fields: Any) -> MemoryProxy:
    return MemoryProxy(lambda u: config_data(
        {"openai": backend_data(u, "sk-test-1", type=backend)}, session=planning(**fields)))


def ask(p: MemoryProxy, session: str | None = "conv-1", **fields: Any) -> Any:
    headers = {"session_id": session} if session else {}
    body = chat_request(model="gpt-4o", temperature=0.9, **fields)
    return p.post(CHAT, body, headers)


def tool_call(p: MemoryProxy, name: str) -> None:
    """
    The strong model's next answer calls tool C{name}.
    """
    p.fake.by_model[STRONG] = [Reply(200, chat_tool_completion(STRONG, name, "{}")),
                               Reply(200, chat_tool_completion(STRONG, "read_file", "{}"))]


class ToolNameTests(SynchronousTestCase):
    @given(st.sampled_from(sorted(WRITE_TOOLS)), st.data())
    def test_any_case_matches(self, name: str, data: st.DataObject) -> None:
        flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        cased = "".join(c.upper() if f else c for c, f in zip(name, flips))
        self.assertTrue(is_file_write(cased))

    @given(st.text(max_size=30))
    def test_others_do_not(self, name: str) -> None:
        self.assertEqual(is_file_write(name), name.isascii() and name.lower() in WRITE_TOOLS)

    @given(st.sampled_from(sorted(WRITE_TOOLS)), st.text(min_size=1, max_size=5))
    def test_no_partial_names(self, name: str, extra: str) -> None:
        self.assertFalse(is_file_write(extra + name + extra))
        self.assertFalse(is_file_write(name + "x"))
        self.assertFalse(is_file_write("mcp__" + name))

    def test_not_a_string(self) -> None:
        self.assertFalse(is_file_write(None))
        self.assertFalse(is_file_write(["write_file"]))


tool_names = st.one_of(st.sampled_from(sorted(WRITE_TOOLS)).map(str.upper),
                       st.sampled_from(sorted(WRITE_TOOLS)),
                       st.text(alphabet="abcdefilnoprstw_", min_size=1, max_size=12))


class WriteTapTests(SynchronousTestCase):
    """
    Streamed tool calls, counted from the relayed events.
    """

    @given(st.lists(tool_names, max_size=6), st.booleans())
    def test_chat_calls(self, names: list[str], repeat: bool) -> None:
        """
        One count per call (its name shows in its first delta; a server
        that repeats it in later deltas is not counted twice).
        """
        tap = WriteTap(transforms.passthrough("chat"))
        chunks = [chat_chunk(STRONG, {"role": "assistant", "content": None})]
        for i, name in enumerate(names):
            chunks.append(chat_chunk(STRONG, {"tool_calls": [{
                "index": i, "id": f"c{i}", "type": "function",
                "function": {"name": name, "arguments": ""}}]}))
            chunks.append(chat_chunk(STRONG, {"tool_calls": [{
                "index": i, "function": {"arguments": "{}",
                                         **({"name": name} if repeat else {})}}]}))
        chunks.append(chat_chunk(STRONG, {}, "tool_calls"))
        raw = [encode_event(c) for c in chunks] + [DONE]
        out = b"".join(tap.events([item]) for item in raw) + tap.end()
        self.assertEqual(out, b"".join(raw))
        self.assertEqual(tap.writes, sum(map(is_file_write, names)))
        self.assertTrue(tap.ended)
        self.assertFalse(tap.failed)

    @given(tool_names)
    def test_responses_call(self, name: str) -> None:
        tap = WriteTap(transforms.passthrough("responses"))
        for item in function_call_events(STRONG, name, ["{", "}"]):
            tap.events([item])
        tap.end()
        self.assertEqual(tap.writes, int(is_file_write(name)))

    def test_an_error_event_fails_it(self) -> None:
        tap = WriteTap(transforms.passthrough("chat"))
        tap.events([encode_event({"error": {"message": "overloaded"}})])
        self.assertTrue(tap.failed)


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = make_config({})
        self.assertEqual((config.session.max_conversations, config.session.max_idle),
                         (10_000, 86_400.0))
        limits = config.session.planning
        self.assertEqual((limits.enabled, limits.max_turns, limits.max_file_writes),
                         (False, 10, 1))

    def test_both_limits_zero_rejected(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            make_config({"session": planning(max_turns=0, max_file_writes=0)})
        message = str(caught.exception)
        self.assertIn("test.yaml", message)
        self.assertIn("session.planning_phase.max_turns", message)
        self.assertIn("session.planning_phase.max_file_writes", message)

    def test_one_limit_zero_is_fine(self) -> None:
        config = make_config({"session": planning(max_file_writes=0)})
        self.assertEqual(config.session.planning.max_file_writes, 0)
        config = make_config({"session": planning(max_turns=0)})
        self.assertEqual(config.session.planning.max_turns, 0)

    def test_enabled_needs_a_strong_model(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            make_config({"session": planning(strong_model="")})
        self.assertIn("session.planning_phase.strong_model", str(caught.exception))

    def test_overrides_checked(self) -> None:
        for bad in ({"temperature": 3}, {"top_p": -0.1}, {"thinking_budget": -1},
                    {"temprature": 0.1}, {"reasoning_effort": 1}):
            with self.assertRaises(ConfigError) as caught:
                make_config({"session": planning(overrides=bad)})
            self.assertIn("session.planning_phase.overrides.", str(caught.exception))

    def test_strong_model_must_route(self) -> None:
        for bad in ("nowhere:o3", "openai:o3?temperature=9", "openai:o3?colour=red"):
            config = make_config({"session": planning(strong_model=bad)})
            with self.assertRaises(ConfigError) as caught:
                check_strong_model(config)
            self.assertIn("test.yaml: session.planning_phase.strong_model: ",
                          str(caught.exception))
        check_strong_model(make_config({"session": planning()}))
        check_strong_model(make_config({"session": planning(strong_model="nowhere:x",
                                                            enabled=False)}))

    def test_store_bounds(self) -> None:
        config = make_config({"session": {"max_conversations": 7, "max_idle": 60}})
        runtime = Runtime.of(config, Upstreams({}, {}, {}), Clock())
        sessions = runtime.sessions
        assert isinstance(sessions, MemorySessions)
        self.assertEqual((sessions.max_items, sessions.max_idle), (7, 60.0))


    def test_a_reload_keeps_the_state_with_new_bounds(self) -> None:
        p = MemoryProxy(lambda u: openai_config(u, session=planning()))
        ask(p)
        sessions = p.service.app.runtime.sessions
        p.service.use_config(make_config(openai_config(
            "http://upstream.test/v1", session={"max_conversations": 5, "max_idle": 30,
                                               **planning()})))
        assert isinstance(sessions, MemorySessions)
        self.assertIs(p.service.app.runtime.sessions, sessions)
        self.assertEqual((sessions.max_items, sessions.max_idle), (5, 30.0))
        self.assertEqual(len(sessions), 1)


class StartupTests(TapTestCase):
    def test_bad_strong_model_stops_the_start(self) -> None:
        path = self.write("session:\n  planning_phase:\n    enabled: true\n"
                          "    strong_model: nowhere:o3\n")
        with self.assertRaises(StartupError) as caught:
            self.parse("--config", path)
        self.assertIn(f"{path}: session.planning_phase.strong_model: ", str(caught.exception))
        self.assertIn("nowhere", str(caught.exception))

    def test_both_zero_stops_the_start(self) -> None:
        path = self.write("session:\n  planning_phase:\n    max_turns: 0\n"
                          "    max_file_writes: 0\n")
        with self.assertRaises(StartupError) as caught:
            self.parse("--config", path)
        self.assertIn("max_file_writes", str(caught.exception))


class BodyTests(SynchronousTestCase):
    def test_responses_reasoning_effort_nests(self) -> None:
        limits = PlanningConfig(True, "o3", overrides={"reasoning_effort": "high"})
        body = planned_body({"model": "x", "reasoning": {"summary": "auto"}}, "responses",
                            limits)
        self.assertEqual(body["reasoning"], {"summary": "auto", "effort": "high"})
        body = planned_body({"model": "x"}, "chat", limits)
        self.assertEqual(body, {"model": "o3", "reasoning_effort": "high"})


class PhaseTests(SynchronousTestCase):
    """
    Through the proxy, on the fake upstream.
    """

    def upstream(self, p: MemoryProxy) -> Mapping[str, Any]:
        return p.fake.requests[-1].body

    def test_switch_with_overrides(self) -> None:
        p = proxy()
        answer = ask(p)
        self.assertEqual(answer.status, 200)
        got = self.upstream(p)
        self.assertEqual(got["model"], STRONG)
        self.assertEqual((got["temperature"], got["top_p"], got["reasoning_effort"]),
                         (0.2, 0.5, "high"))
        self.assertEqual(got["messages"], [{"role": "user", "content": "hi"}])
        self.assertEqual(answer.headers["x-llmproxy-phase"], "planning (turn 1/3, writes 0/1)")
        self.assertEqual(answer.headers["x-llmproxy-route"].split(":")[0], "openai")

    def test_turns_counted_then_restored(self) -> None:
        p = proxy()
        shown = [ask(p).headers["x-llmproxy-phase"] for _ in range(3)]
        self.assertEqual(shown, [f"planning (turn {n}/3, writes 0/1)" for n in (1, 2, 3)])
        self.assertEqual([r.body["model"] for r in p.fake.requests], [STRONG] * 3)
        after = ask(p)
        self.assertNotIn("x-llmproxy-phase", after.headers)
        got = self.upstream(p)
        self.assertEqual((got["model"], got["temperature"]), ("gpt-4o", 0.9))
        self.assertNotIn("top_p", got)
        self.assertNotIn("reasoning_effort", got)

    def test_a_file_write_ends_it(self) -> None:
        p = proxy(max_turns=10)
        ask(p)
        tool_call(p, "Write_To_File")
        self.assertEqual(ask(p).headers["x-llmproxy-phase"], "planning (turn 2/10, writes 0/1)")
        after = ask(p)
        self.assertNotIn("x-llmproxy-phase", after.headers)
        self.assertEqual(self.upstream(p)["model"], "gpt-4o")

    def test_other_tools_are_no_writes(self) -> None:
        p = proxy(max_turns=10)
        p.fake.by_model[STRONG] = [Reply(200, chat_tool_completion(STRONG, "read_file", "{}"))]
        ask(p)
        self.assertEqual(ask(p).headers["x-llmproxy-phase"], "planning (turn 2/10, writes 0/1)")

    def test_no_write_limit(self) -> None:
        """
        C{max_file_writes: 0}: writes never end the phase (the reference
        proxy's C{0 >= 0} never started it); the turns do.
        """
        p = proxy(max_turns=3, max_file_writes=0)
        p.fake.by_model[STRONG] = [Reply(200, chat_tool_completion(STRONG, "apply_patch", "{}"))]
        shown = [ask(p).headers["x-llmproxy-phase"] for _ in range(3)]
        self.assertEqual(shown, ["planning (turn 1/3, writes 0)",
                                 "planning (turn 2/3, writes 1)",
                                 "planning (turn 3/3, writes 2)"])
        self.assertNotIn("x-llmproxy-phase", ask(p).headers)
        self.assertEqual(self.upstream(p)["model"], "gpt-4o")

    def test_no_turn_limit(self) -> None:
        p = proxy(max_turns=0, max_file_writes=2)
        for n in range(1, 13):
            self.assertEqual(ask(p).headers["x-llmproxy-phase"],
                             f"planning (turn {n}, writes 0/2)")

    def test_the_selector_beats_the_overrides(self) -> None:
        p = proxy(overrides={"reasoning_effort": "low", "temperature": 0.3})
        ask(p, reasoning_effort="medium")
        got = self.upstream(p)
        self.assertEqual((got["reasoning_effort"], got["temperature"]), ("high", 0.3))

    def test_disabled_untouched(self) -> None:
        p = proxy(enabled=False)
        answer = ask(p)
        self.assertNotIn("x-llmproxy-phase", answer.headers)
        self.assertEqual(p.fake.requests[-1].body, chat_request(model="gpt-4o", temperature=0.9))

    def test_strong_model_through_an_alias(self) -> None:
        p = MemoryProxy(lambda u: openai_config(
            u, model_aliases=[{"pattern": "^planner$", "replacement": f"openai:{STRONG}"}],
            session=planning(strong_model="planner", overrides={})))
        ask(p)
        got = self.upstream(p)
        self.assertEqual((got["model"], got["temperature"]), (STRONG, 0.9))

    def test_without_a_conversation_untouched(self) -> None:
        p = proxy()
        answer = ask(p, session=None)
        self.assertNotIn("x-llmproxy-phase", answer.headers)
        got = p.fake.requests[-1]
        self.assertEqual(got.body, chat_request(model="gpt-4o", temperature=0.9))

    def test_already_on_the_strong_model_untouched(self) -> None:
        p = proxy()
        body = chat_request(model=STRONG, temperature=0.9)
        answer = p.post(CHAT, body, {"session_id": "conv-1"})
        self.assertEqual(p.fake.requests[-1].body, body)
        self.assertEqual(answer.headers["x-llmproxy-phase"], "planning (turn 1/3, writes 0/1)")

    def test_conversations_are_independent(self) -> None:
        p = proxy(max_turns=10)
        tool_call(p, "edit_file")
        ask(p, session="a")
        self.assertNotIn("x-llmproxy-phase", ask(p, session="a").headers)
        self.assertEqual(self.upstream(p)["model"], "gpt-4o")
        self.assertEqual(ask(p, session="b").headers["x-llmproxy-phase"],
                         "planning (turn 1/10, writes 0/1)")
        self.assertEqual(self.upstream(p)["model"], STRONG)

    def test_failed_answers_are_no_turns(self) -> None:
        p = proxy()
        p.fake.by_model[STRONG] = [Reply(400, {"error": {
            "message": "bad", "type": "invalid_request_error", "param": None, "code": None}}),
            Reply(200, chat_tool_completion(STRONG, "read_file", "{}"))]
        self.assertEqual(ask(p).status, 400)
        self.assertEqual(ask(p).headers["x-llmproxy-phase"], "planning (turn 1/3, writes 0/1)")

    def test_streamed_tool_call_counted(self) -> None:
        p = proxy(max_turns=10)
        p.fake.by_model[STRONG] = [Stream(chat_tool_chunks(STRONG, "search_replace",
                                                           ['{"a"', ': 1}'])),
                                   Reply(200, chat_tool_completion(STRONG, "x", "{}"))]
        answer = ask(p, stream=True)
        self.assertEqual(answer.headers["x-llmproxy-phase"], "planning (turn 1/10, writes 0/1)")
        self.assertIn(b"search_replace", answer.content)
        self.assertNotIn("x-llmproxy-phase", ask(p).headers)

    def test_streamed_other_tool_not_counted(self) -> None:
        p = proxy(max_turns=10)
        p.fake.by_model[STRONG] = [Stream(chat_tool_chunks(STRONG, "read_file", ["{}"]))]
        ask(p, stream=True)
        self.assertEqual(ask(p, stream=True).headers["x-llmproxy-phase"],
                         "planning (turn 2/10, writes 0/1)")

    def test_broken_stream_is_no_turn(self) -> None:
        p = proxy(max_turns=10)
        chunks = chat_tool_chunks(STRONG, "write_file", ["{}"])
        p.fake.by_model[STRONG] = [Stream(chunks[:-1], end="drop"),
                                   Reply(200, chat_tool_completion(STRONG, "x", "{}"))]
        ask(p, stream=True)
        self.assertEqual(ask(p).headers["x-llmproxy-phase"], "planning (turn 1/10, writes 0/1)")

    def test_a_continued_stream_counts(self) -> None:
        """
        A stream cut mid-answer and continued on the other key (the same
        strong model) is one whole answer: one turn.
        """
        p = MemoryProxy(lambda u: config_data(
            {"openai": backend_data(u, "sk-1", "sk-2")}, session=planning(max_turns=10)))
        chunks = chat_chunks(STRONG, ["Hello ", "there ", "friend"])
        p.fake.by_model[STRONG] = [Stream(chunks[:3], end="drop"), Stream(chunks),
                                   Reply(200, chat_tool_completion(STRONG, "x", "{}"))]
        answer = ask(p, stream=True)
        self.assertIn(b"x_llmproxy_continued", answer.content)
        self.assertEqual(ask(p).headers["x-llmproxy-phase"], "planning (turn 2/10, writes 0/1)")

    def test_a_failing_store_fails_no_answer(self) -> None:
        p = proxy()
        clock = p.clock

        class Failing(MemorySessions):
            async def update(self, key: str, change: Any) -> Any:
                raise RuntimeError("store down")

        app = p.service.app
        app.runtime = replace(app.runtime, sessions=Failing(clock))
        answer = ask(p)
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["x-llmproxy-phase"], "planning (turn 1/3, writes 0/1)")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def responses(self, p: MemoryProxy, **fields: Any) -> Any:
        body = {"model": "gpt-4o", "input": "hi", "temperature": 0.9, **fields}
        return p.post("/v1/responses", body, {"session_id": "conv-r"})

    def test_responses_whole_answer(self) -> None:
        p = proxy("openai-responses", max_turns=10)
        p.fake.by_model[STRONG] = [Reply(200, function_call_response(STRONG, "edit_file", "{}"))]
        answer = self.responses(p)
        self.assertEqual(answer.headers["x-llmproxy-phase"], "planning (turn 1/10, writes 0/1)")
        got = self.upstream(p)
        self.assertEqual((got["model"], got["temperature"]), (STRONG, 0.2))
        self.assertEqual(got["reasoning"], {"effort": "high"})
        self.assertNotIn("x-llmproxy-phase", self.responses(p).headers)

    def test_responses_streamed(self) -> None:
        p = proxy("openai-responses", max_turns=10)
        p.fake.by_model[STRONG] = [Stream(function_call_events(STRONG, "APPLY_PATCH", ["{}"]))]
        answer = self.responses(p, stream=True)
        self.assertEqual(answer.status, 200)
        self.assertIn(b"response.completed", answer.content)
        self.assertNotIn("x-llmproxy-phase", self.responses(p, stream=True).headers)


class RealConnectionTests(TestCase):
    """
    Over real sockets: a new conversation plans on the strong model and
    comes back to its own route after its first file write.
    """

    async def test_done_when(self) -> None:
        proxy = await start(self, lambda u: openai_config(u, session=planning(max_turns=10)))
        proxy.fake.by_model[STRONG] = [
            Reply(200, chat_tool_completion(STRONG, "read_file", "{}")),
            Stream(chat_tool_chunks(STRONG, "write_to_file", ['{"path"', ': "a"}'])),
        ]
        url = proxy.url + CHAT
        headers = {"x-session-id": "agent-42"}
        first = await post(self, url, chat_request(model="gpt-4o"), headers)
        second = await post(self, url, chat_request(model="gpt-4o", stream=True), headers)
        third = await post(self, url, chat_request(model="gpt-4o"), headers)
        self.assertEqual([first[1]["x-llmproxy-phase"], second[1]["x-llmproxy-phase"]],
                         ["planning (turn 1/10, writes 0/1)", "planning (turn 2/10, writes 0/1)"])
        self.assertNotIn("x-llmproxy-phase", third[1])
        self.assertEqual([r.body["model"] for r in proxy.fake.requests],
                         [STRONG, STRONG, "gpt-4o"])

