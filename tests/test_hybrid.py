"""
The hybrid backend end to end (L{llmproxy.exchange.hybrid}): a fake
upstream plays the reasoning model (paced C{<think>...</think>} then more
text, or reasoning deltas) and the execution model; in memory on a
L{Clock} for what llmproxy decides, on real connections and through the
OpenAI SDK for what a client sees.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.sse import encode_event
from llmproxy.testing import (
    Reply, Stall, Stream, backend_data, chat_chunk, chat_chunks, chat_tool_chunks, config_data,
    openai_config, reasoning_delta_chunks, responses_events, sse_events, think_chunks,
)
from tests.harness import Answer, MemoryProxy, client, in_thread, sdk, start

HYBRID = "hybrid:[openai:o3-mini,openai:gpt-4o-mini]"
THOUGHTS = ["First ", "read ", "the ", "file, ", "then ", "fix ", "it."]


def _thinking(proxy: Any, delay: float = 1.0, **kwargs: Any) -> list[bytes]:
    """
    Make o3-mini a paced reasoning model; returns its stream's events.
    """
    chunks = think_chunks("o3-mini", THOUGHTS, ["never ", "read ", "by ", "llmproxy"] * 5,
                          **kwargs)
    proxy.fake.by_model["o3-mini"] = [Stream(chunks, delay=delay)]
    return chunks


def _user(text: str = "fix the bug") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _finish(proxy: MemoryProxy, d: Deferred[Answer], seconds: int = 40) -> Answer:
    for _ in range(seconds):
        proxy.advance(1.0)
    return proxy.result(d)


def _bodies(proxy: MemoryProxy, model: str) -> list[Any]:
    return [r.body for r in proxy.fake.requests if r.model == model]


class PhaseTests(SynchronousTestCase):
    """
    The two phases, in memory.
    """

    def test_cut_at_close_tag_and_injected(self) -> None:
        proxy = MemoryProxy()
        chunks = _thinking(proxy)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}))
        self.assertEqual(answer.status, 200)
        message = answer.json()["choices"][0]["message"]
        self.assertEqual(message["reasoning_content"], "".join(THOUGHTS))
        self.assertEqual(message["content"], "fake: fix the bug")
        self.assertTrue(answer.headers["x-llmproxy-hybrid"].startswith(
            "reasoning=ok; by=openai:o3-mini; end=tag"))
        # The reasoning model's connection was dropped at the close tag:
        # its request was lost, long before its last event was due.
        self.assertEqual((proxy.fake.lost, proxy.fake.completed), (1, 1))
        self.assertLess(len(THOUGHTS) + 4, len(chunks) - 5)
        reasoning, = _bodies(proxy, "o3-mini")
        self.assertEqual((reasoning["stream"], reasoning["reasoning_effort"]), (True, "high"))
        execution, = _bodies(proxy, "gpt-4o-mini")
        self.assertEqual(execution["messages"][0]["role"], "system")
        self.assertIn("First read the file, then fix it.", execution["messages"][0]["content"])
        self.assertEqual(execution["messages"][1:], _user())

    def test_user_injection(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy, tag="thinking")
        _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID + "?hybrid_injection=user", "messages": _user()}))
        execution, = _bodies(proxy, "gpt-4o-mini")
        self.assertEqual(len(execution["messages"]), 1)
        content = execution["messages"][0]["content"]
        self.assertTrue(content.endswith("</reasoning>\n\nfix the bug"), content)
        self.assertIn("First read the file, then fix it.", content)

    def test_reasoning_selector_sets_its_effort(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy)
        _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": "hybrid:[openai:o3-mini?reasoning_effort=medium,openai:gpt-4o-mini]",
            "messages": _user(), "reasoning_effort": "low", "max_tokens": 20}))
        reasoning, = _bodies(proxy, "o3-mini")
        self.assertEqual(reasoning["reasoning_effort"], "medium")
        self.assertNotIn("max_completion_tokens", reasoning)
        execution, = _bodies(proxy, "gpt-4o-mini")
        self.assertNotIn("reasoning_effort", execution)
        self.assertEqual(execution["max_tokens"], 20)

    def test_reasoning_deltas(self) -> None:
        proxy = MemoryProxy()
        proxy.fake.by_model["o3-mini"] = [Stream(reasoning_delta_chunks(
            "o3-mini", THOUGHTS, ["x "] * 20), delay=1.0)]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}))
        self.assertIn("end=run", answer.headers["x-llmproxy-hybrid"])
        self.assertEqual(answer.json()["choices"][0]["message"]["reasoning_content"],
                         "".join(THOUGHTS))
        self.assertEqual(proxy.fake.lost, 1)

    def test_stream_order(self) -> None:
        proxy = MemoryProxy(lambda url: openai_config(
            url, failure_handling={"keepalive_after": 100}))
        _thinking(proxy)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user(), "stream": True}))
        self.assertIn("reasoning=ok", answer.headers["x-llmproxy-hybrid"])
        events = sse_events(answer.content)
        self.assertEqual([e.done for e in events].count(True), 1)
        self.assertTrue(events[-1].done)
        deltas = [e.json()["choices"][0]["delta"] for e in events[:-1] if e.json()["choices"]]
        self.assertEqual(deltas[0]["reasoning_content"], "".join(THOUGHTS))
        self.assertEqual("".join(d.get("content") or "" for d in deltas[1:]),
                         "fake: fix the bug ")
        self.assertNotIn("reasoning_content", json.dumps(deltas[1:]))

    def test_keepalive_while_reasoning(self) -> None:
        proxy = MemoryProxy()  # keepalives after 5 s
        _thinking(proxy, delay=2.0)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user(), "stream": True}))
        head, _, rest = answer.content.partition(b"data: ")
        self.assertIn(b": keepalive", head)
        self.assertIn(b"reasoning_content", rest.split(b"\n\n")[0])

    def test_probability_zero_and_one(self) -> None:
        proxy = MemoryProxy(lambda url: openai_config(url, hybrid={
            "hybrid_reasoning_force_initial_turns": 0, "reasoning_injection_probability": 0.5}))
        _thinking(proxy)
        app = proxy.service.app
        for draw, expected in ((0.7, "reasoning=skipped; why=probability"), (0.2, "ok")):
            app.runtime = replace(app.runtime, jitter=lambda: draw)
            answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
                "model": HYBRID, "messages": _user()}))
            self.assertIn(expected, answer.headers["x-llmproxy-hybrid"])
        self.assertEqual(len(_bodies(proxy, "o3-mini")), 1)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID + "?reasoning_injection_probability=0", "messages": _user()}))
        self.assertNotIn("reasoning_content", answer.json()["choices"][0]["message"])
        self.assertEqual(len(_bodies(proxy, "o3-mini")), 1)
        self.assertEqual(_bodies(proxy, "gpt-4o-mini")[-1]["messages"], _user())

    def test_forced_initial_turns(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy)
        said = []
        for session in ["a", "a", "b", "a"]:
            answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
                "model": HYBRID + "?reasoning_injection_probability=0"
                                  "&hybrid_reasoning_force_initial_turns=2",
                "messages": _user()}, headers={"session_id": session}))
            said.append(answer.headers["x-llmproxy-hybrid"].split(";")[0])
        self.assertEqual(said, ["reasoning=ok", "reasoning=ok", "reasoning=ok",
                                "reasoning=skipped"])

    def test_failure_falls_through(self) -> None:
        proxy = MemoryProxy()
        proxy.fake.by_model["o3-mini"] = [Reply(400, {"error": {
            "message": "bad", "type": "invalid_request_error", "param": None, "code": "x"}})]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["x-llmproxy-hybrid"], "reasoning=failed; code=x")
        self.assertEqual(answer.json()["choices"][0]["message"]["content"], "fake: fix the bug")
        self.assertEqual(_bodies(proxy, "gpt-4o-mini")[0]["messages"], _user())

    def test_failover_within_reasoning_phase(self) -> None:
        proxy = MemoryProxy(lambda url: openai_config(url, ["sk-1", "sk-2"]))
        proxy.fake.by_key["sk-1"] = [Reply(401, {"error": {"message": "no"}})]
        _thinking(proxy)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}))
        self.assertIn("reasoning=ok", answer.headers["x-llmproxy-hybrid"])
        keys = [r.headers["authorization"] for r in proxy.fake.requests if r.model == "o3-mini"]
        self.assertEqual(keys, ["Bearer sk-1", "Bearer sk-2"])

    def test_error_in_the_reasoning_stream(self) -> None:
        proxy = MemoryProxy()
        proxy.fake.by_model["o3-mini"] = [Stream([
            encode_event(chat_chunk("o3-mini", {"content": "<think>hm"})),
            encode_event({"error": {"message": "overloaded", "type": "server_error"}})],
            end="stall")]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}))
        self.assertEqual(answer.headers["x-llmproxy-hybrid"],
                         "reasoning=failed; code=reasoning_failed")
        self.assertEqual(answer.json()["choices"][0]["message"]["content"], "fake: fix the bug")
        # A broken stream is retried once on its target, like any other.
        self.assertEqual(proxy.fake.lost, len(_bodies(proxy, "o3-mini")), "each one dropped")
        self.assertEqual(proxy.fake.open, [])

    def test_empty_reasoning(self) -> None:
        proxy = MemoryProxy()
        proxy.fake.by_model["o3-mini"] = [Stream(think_chunks("o3-mini", [" "], ["x"]))]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}))
        self.assertTrue(answer.headers["x-llmproxy-hybrid"].startswith("reasoning=empty"))
        self.assertNotIn("reasoning_content", answer.json()["choices"][0]["message"])
        self.assertEqual(_bodies(proxy, "gpt-4o-mini")[0]["messages"], _user())

    def test_timeout_falls_through(self) -> None:
        proxy = MemoryProxy(lambda url: openai_config(
            url, hybrid={"hybrid_reasoning_model_timeout": 10},
            failure_handling={"first_token_timeout": 30}))
        proxy.fake.by_model["o3-mini"] = [Stall()]
        d = proxy.request("POST", "/v1/chat/completions", {"model": HYBRID, "messages": _user()})
        proxy.advance(9.9)
        self.assertFalse(d.called)
        self.assertEqual(_bodies(proxy, "gpt-4o-mini"), [])
        answer = _finish(proxy, d, 1)
        self.assertEqual(answer.headers["x-llmproxy-hybrid"], "reasoning=timeout")
        self.assertEqual(answer.json()["choices"][0]["message"]["content"], "fake: fix the bug")
        self.assertEqual(proxy.fake.lost, 1, "the stalled reasoning request was cancelled")

    def test_timeout_mid_reasoning(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy, delay=20.0)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user()}), 70)
        self.assertEqual(answer.headers["x-llmproxy-hybrid"], "reasoning=timeout")
        self.assertEqual(proxy.fake.lost, 1)

    def test_tools_only_for_execution(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy)
        tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
        _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user(), "tools": tools, "tool_choice": "auto"}))
        reasoning, = _bodies(proxy, "o3-mini")
        self.assertNotIn("tools", reasoning)
        self.assertNotIn("tool_choice", reasoning)
        self.assertEqual(_bodies(proxy, "gpt-4o-mini")[0]["tools"], tools)

    def test_edit_tuned_request_skips_reasoning(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user(
                "No sufficiently similar match found (88% similar, needs 100%)")}))
        self.assertEqual(answer.headers["x-llmproxy-hybrid"], "reasoning=skipped; why=tuned")
        self.assertEqual(_bodies(proxy, "o3-mini"), [])

    def test_named_backend(self) -> None:
        proxy = MemoryProxy(lambda url: config_data({
            "openai": backend_data(url, "sk-1"),
            "planner": {"type": "hybrid", "reasoning": "openai:o3-mini",
                        "execution": "openai:gpt-4o-mini", "hybrid_injection": "user"},
        }))
        _thinking(proxy)
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": "planner:auto", "messages": _user()}))
        self.assertIn("reasoning=ok", answer.headers["x-llmproxy-hybrid"])
        execution, = _bodies(proxy, "gpt-4o-mini")
        self.assertIn("</reasoning>\n\nfix the bug", execution["messages"][0]["content"])

    def test_named_backend_needs_its_phases(self) -> None:
        from llmproxy.config.error import ConfigError
        with self.assertRaises(ConfigError) as caught:
            MemoryProxy(lambda url: config_data({
                "openai": backend_data(url, "sk-1"),
                "planner": {"type": "hybrid", "reasoning": "openai:o3-mini"}}))
        self.assertIn("planner.execution", str(caught.exception))

    def test_hybrid_as_failover_element(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy)
        proxy.fake.by_model["gpt-4o-mini"] = [Reply(503, {"error": {
            "message": "overloaded", "type": "server_error", "param": None, "code": None}})]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID + "|openai:gpt-4o", "messages": _user()}))
        self.assertEqual(answer.status, 200)
        self.assertEqual(answer.headers["x-llmproxy-route"], "openai:gpt-4o")
        self.assertEqual(answer.json()["choices"][0]["message"]["content"], "fake: fix the bug")

    def test_anywhere_a_selector_goes(self) -> None:
        for extra, model in (({"model_aliases": [{"pattern": "^smart$", "replacement": HYBRID}]},
                              "smart"),
                             ({"force_model": HYBRID}, "gpt-4o"),
                             ({"failover_routes": {"smart": {"policy": "m", "elements": [
                                 HYBRID, "openai:gpt-4o"]}}}, "smart")):
            proxy = MemoryProxy(lambda url: openai_config(url, **extra))
            _thinking(proxy)
            answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
                "model": model, "messages": _user()}))
            self.assertIn("reasoning=ok", answer.headers["x-llmproxy-hybrid"], extra)
            self.assertEqual(answer.headers["x-llmproxy-route"], "openai:gpt-4o-mini")

    def test_responses_reasoning_backend_and_usage(self) -> None:
        proxy = MemoryProxy(lambda url: config_data({
            "openai": backend_data(url, "sk-1"),
            "deep": backend_data(url, "sk-2", type="openai-responses")}))
        proxy.fake.by_model["o3"] = [Stream(responses_events("o3", ["Plan: ", "read it."]))]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": "hybrid:[deep:o3,openai:gpt-4o-mini]", "messages": _user()}))
        reasoning, = [r for r in proxy.fake.requests if r.model == "o3"]
        self.assertEqual(reasoning.path, "/v1/responses")
        self.assertEqual(reasoning.body["reasoning"]["effort"], "high")
        self.assertEqual(answer.json()["choices"][0]["message"]["reasoning_content"],
                         "Plan: read it.")
        phases = dict(p.split(": ") for p in answer.headers["x-llmproxy-hybrid-usage"].split("; "))
        totals = [int(phases[name].split("total=")[1].split()[0])
                  for name in ("reasoning", "execution")]
        self.assertEqual(totals, [6, 7])  # as the fake counts them
        self.assertEqual(answer.json()["usage"]["total_tokens"], 13)
        self.assertIn("total=13", answer.headers["x-llmproxy-usage"])

    def test_hybrid_failing_over_to_a_plain_stream(self) -> None:
        proxy = MemoryProxy(lambda url: openai_config(
            url, failure_handling={"keepalive_after": 100}))
        _thinking(proxy)
        proxy.fake.by_model["gpt-4o-mini"] = [Reply(503, {"error": {
            "message": "overloaded", "type": "server_error", "param": None, "code": None}})]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID + "|openai:gpt-4o", "messages": _user(), "stream": True}))
        self.assertEqual(answer.headers["x-llmproxy-route"], "openai:gpt-4o")
        self.assertNotIn(b"reasoning_content", answer.content)
        self.assertTrue(sse_events(answer.content)[-1].done)

    def test_responses_frontend(self) -> None:
        proxy = MemoryProxy()
        _thinking(proxy)
        answer = _finish(proxy, proxy.request("POST", "/v1/responses", {
            "model": HYBRID, "input": "fix the bug"}))
        output = answer.json()["output"]
        self.assertEqual([i["type"] for i in output], ["reasoning", "message"])
        self.assertEqual(output[0]["summary"][0]["text"], "".join(THOUGHTS))
        reasoning, = _bodies(proxy, "o3-mini")
        self.assertEqual(reasoning["reasoning_effort"], "high")  # a chat upstream

    def test_execution_tool_calls_reach_the_client(self) -> None:
        proxy = MemoryProxy(lambda url: openai_config(
            url, failure_handling={"keepalive_after": 100}))
        _thinking(proxy)
        proxy.fake.by_model["gpt-4o-mini"] = [Stream(chat_tool_chunks(
            "gpt-4o-mini", "read_file", ['{"path":', '"a"}']))]
        tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
        answer = _finish(proxy, proxy.request("POST", "/v1/chat/completions", {
            "model": HYBRID, "messages": _user(), "stream": True, "tools": tools}))
        events = sse_events(answer.content)
        calls = [c for e in events[:-1] for c in e.json()["choices"][0]["delta"].get(
            "tool_calls") or []]
        self.assertEqual(calls[0]["function"]["name"], "read_file")
        self.assertTrue(events[-1].done)


class _Quitter(Protocol):
    """
    Reads a response's body, and leaves on its first byte when asked.
    """

    def __init__(self, leave: bool) -> None:
        self.leave = leave
        self.got: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.leave and not self.got.called:
            self.transport.stopProducing()  # type: ignore[attr-defined]
            self.got.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        pass


async def _until(check: Any, what: str) -> None:
    for _ in range(100):
        if check():
            return
        await deferLater(reactor, 0.02)
    raise AssertionError(f"never: {what}")


class ClientTests(TestCase):
    """
    On real connections, through the OpenAI SDK.
    """

    def setUp(self) -> None:
        # Last, the fake's paced streams see their dropped connections.
        self.addCleanup(deferLater, reactor, 0.15)

    async def test_done_when(self) -> None:
        proxy = await start(self)
        chunks = _thinking(proxy, delay=0.02)

        def ask() -> Any:
            with sdk(proxy.url) as openai:
                return openai.chat.completions.create(
                    model="hybrid:[openai:o3-mini,openai:gpt-4o-mini]",
                    messages=[{"role": "user", "content": "fix the bug"}])
        completion = await in_thread(ask)
        message = completion.choices[0].message
        self.assertEqual(message.reasoning_content, "".join(THOUGHTS))
        self.assertEqual(message.content, "fake: fix the bug")
        # Phase 1 was cut early: its connection closed before its end.
        await _until(lambda: proxy.fake.lost == 1, "the reasoning request lost")
        written = proxy.fake.requests[0]
        self.assertEqual(written.model, "o3-mini")
        self.assertGreater(len(chunks), len(THOUGHTS) + 20)

    async def test_sdk_stream(self) -> None:
        proxy = await start(self)
        _thinking(proxy, delay=0.01)

        def ask() -> list[Any]:
            with sdk(proxy.url) as openai:
                return list(openai.chat.completions.create(
                    model=HYBRID, messages=[{"role": "user", "content": "fix the bug"}],
                    stream=True))
        chunks = await in_thread(ask)
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        self.assertEqual(deltas[0].reasoning_content, "".join(THOUGHTS))
        self.assertEqual("".join(d.content or "" for d in deltas), "fake: fix the bug ")

    async def test_sdk_responses(self) -> None:
        proxy = await start(self)
        _thinking(proxy, delay=0.01)

        def ask() -> tuple[Any, list[Any]]:
            with sdk(proxy.url) as openai:
                whole = openai.responses.create(model=HYBRID, input="fix the bug")
                streamed = list(openai.responses.create(model=HYBRID, input="fix the bug",
                                                        stream=True))
                return whole, streamed
        whole, events = await in_thread(ask)
        self.assertEqual(whole.output[0].type, "reasoning")
        self.assertEqual(whole.output[0].summary[0].text, "".join(THOUGHTS))
        self.assertEqual(whole.output_text, "fake: fix the bug")
        kinds = [e.type for e in events]
        first = kinds.index("response.reasoning_summary_text.delta")
        self.assertLess(first, kinds.index("response.output_text.delta"))
        self.assertEqual(events[-1].type, "response.completed")
        self.assertEqual([i.type for i in events[-1].response.output], ["reasoning", "message"])

    async def _disconnect(self, leave_in_reasoning: bool) -> None:
        proxy = await start(self, lambda url: openai_config(
            url, failure_handling={"keepalive_after": 0.05, "keepalive_interval": 0.1}))
        _thinking(proxy, delay=0.05)
        if not leave_in_reasoning:
            proxy.fake.by_model["gpt-4o-mini"] = [Stream(chat_chunks(
                "gpt-4o-mini", ["x"] * 50), delay=0.05)]
        response = await client(self).post(proxy.url + "/v1/chat/completions", data=json.dumps({
            "model": HYBRID, "messages": _user(), "stream": True}).encode())
        # A keepalive comes while reasoning; the answer's first event after.
        quitter = _Quitter(leave=leave_in_reasoning)
        response.deliverBody(quitter)
        if leave_in_reasoning:
            await quitter.got
        else:
            await _until(lambda: len(proxy.fake.requests) == 2, "the execution phase")
            await deferLater(reactor, 0.2)
            quitter.transport.stopProducing()  # type: ignore[attr-defined]
        await _until(lambda: proxy.fake.lost >= 1, "the running phase cancelled")
        await deferLater(reactor, 0.1)
        models = [r.model for r in proxy.fake.requests]
        self.assertEqual(models, ["o3-mini"] if leave_in_reasoning else ["o3-mini",
                                                                         "gpt-4o-mini"])
        self.assertEqual(proxy.fake.open, [])

    async def test_disconnect_in_reasoning(self) -> None:
        await self._disconnect(True)

    async def test_disconnect_in_execution(self) -> None:
        await self._disconnect(False)
