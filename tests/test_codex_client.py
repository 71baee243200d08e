"""
What a strict client (the Codex CLI) trips over: the count of attempts a
relayed upstream error reports, and the reason phrase of every status.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase, TestCase

from llmproxy.dialects import CHAT, RESPONSES
from llmproxy.errors import ProxyError, UpstreamError
from llmproxy.frontends.rejections import reason
from llmproxy.sse import encode_event
from llmproxy.testing import (
    Reply, Stream, backend_data, chat_request, chat_tool_chunks, chat_tool_completion,
    config_data, openai_config, sse_events, sse_json,
)
from llmproxy.translate.namespaces import NamespaceTable
from llmproxy.translate.responses import chat_completion_to_response, responses_to_chat_completion
from llmproxy.translate.responses_request import responses_to_chat_request
from llmproxy.translate.transforms import (
    ChatToResponses, ResponsesPassthrough, failed_error, in_band_error,
)
from tests.harness import MemoryProxy, client, start

BAD_REQUEST = Reply(400, {"error": {"message": "bad", "type": "invalid_request_error",
                                    "param": None, "code": None}})
RATE_LIMITED = Reply(429, {"error": {"message": "slow down", "type": "requests",
                                     "param": None, "code": "rate_limit_exceeded"}},
                     {"retry-after": "30"})


class AttemptsHeaderTests(SynchronousTestCase):
    def test_a_relayed_client_error_is_one_attempt(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["k"]))
        proxy.fake.by_key["k"] = [BAD_REQUEST]
        status, headers, _ = proxy.chat()
        self.assertEqual((status, headers["x-llmproxy-attempts"]), (400, "1"))
        self.assertEqual(len(proxy.fake.requests), 1)

    def test_a_relayed_client_error_after_a_failover(self) -> None:
        proxy = MemoryProxy(lambda u: openai_config(u, ["a", "b"]))
        proxy.fake.by_key["a"] = [Reply(503, {"error": {"message": "down"}})]
        proxy.fake.by_key["b"] = [BAD_REQUEST]
        status, headers, _ = proxy.chat()
        self.assertEqual((status, headers["x-llmproxy-attempts"]), (400, "2"))


class ReasonPhraseTests(SynchronousTestCase):
    def test_standard_phrases(self) -> None:
        self.assertEqual(reason(429), b"Too Many Requests")
        self.assertEqual(reason(431), b"Request Header Fields Too Large")
        self.assertEqual(reason(200), b"OK")
        self.assertEqual(reason(599), b"Error")


class ReasonPhraseOnTheWireTests(TestCase):
    async def test_429_says_too_many_requests(self) -> None:
        proxy = await start(self, lambda u: openai_config(u, ["only"]))
        proxy.fake.by_key["only"] = [RATE_LIMITED]
        response = await client(self).post(
            proxy.url + "/v1/chat/completions", data=json.dumps(chat_request()).encode(),
            headers={"content-type": "application/json"})
        await treq.content(response)
        self.assertEqual((response.code, response.phrase), (429, b"Too Many Requests"))


class ResponsesFailureShapeTests(SynchronousTestCase):
    """
    A Responses stream that fails after it started ends with
    C{response.failed}, whatever relayed it, with the error code a Codex
    client tells apart.
    """

    def _failed(self, raw: bytes) -> dict[str, Any]:
        [event] = sse_events(raw)
        self.assertEqual(event.event, "response.failed")
        data = event.json()
        self.assertEqual(data["type"], "response.failed")
        return data  # type: ignore[no-any-return]

    def test_pass_through_fails_the_upstream_response(self) -> None:
        transform = ResponsesPassthrough("resp_ours")
        created = {"type": "response.created", "sequence_number": 0,
                   "response": {"id": "resp_up", "object": "response", "created_at": 7,
                                "status": "in_progress", "model": "gpt-x", "output": []}}
        transform.events([encode_event(created, "response.created")])
        data = self._failed(transform.error(UpstreamError("cut", code="upstream_timeout")))
        self.assertEqual(data["sequence_number"], 1)
        self.assertEqual((data["response"]["id"], data["response"]["model"]), ("resp_up", "gpt-x"))
        self.assertEqual(data["response"]["status"], "failed")
        self.assertEqual(data["response"]["error"], {"code": "server_error", "message": "cut"})

    def test_upstream_error_event_becomes_response_failed(self) -> None:
        transform = ResponsesPassthrough("resp_ours")
        created = encode_event({"type": "response.created", "sequence_number": 0,
                                "response": {"id": "resp_up", "object": "response",
                                             "status": "in_progress", "output": []}},
                               "response.created")
        delta = encode_event({"type": "response.output_text.delta", "sequence_number": 1,
                              "delta": "x"}, "response.output_text.delta")
        error = encode_event({"type": "error", "sequence_number": 2,
                              "code": "context_length_exceeded", "message": "too long"},
                             "error")
        out = transform.events([created, delta, error])
        self.assertTrue(out.startswith(created + delta), "the other events are untouched")
        data = self._failed(out[len(created + delta):])
        self.assertEqual(data["sequence_number"], 2)
        self.assertEqual(data["response"]["id"], "resp_up")
        self.assertEqual(data["response"]["error"],
                         {"code": "context_length_exceeded", "message": "too long"})
        self.assertTrue(transform.finished)
        self.assertEqual(transform.error(ProxyError("late")), b"")

    def test_before_any_upstream_event(self) -> None:
        raw = in_band_error(RESPONSES, ProxyError("gone", code="upstream_unreachable"), "resp_1")
        self.assertEqual(self._failed(raw)["response"]["id"], "resp_1")

    def test_chat_frontend_keeps_its_error_event(self) -> None:
        raw = in_band_error(CHAT, ProxyError("gone", code="upstream_unreachable"))
        self.assertEqual(sse_json(raw)[0]["error"]["code"], "upstream_unreachable")

    def test_codes(self) -> None:
        cases = {
            "context_length_exceeded": "context_length_exceeded",
            "insufficient_quota": "insufficient_quota",
            "quota_exceeded": "insufficient_quota",
            "rate_limit_exceeded": "rate_limit_exceeded",
            "upstream_timeout": "server_error",
            None: "server_error",
        }
        for code, expected in cases.items():
            self.assertEqual(failed_error(ProxyError("x", code=code))["code"], expected, code)

    def test_rate_limit_hint(self) -> None:
        error = ProxyError("Every API key is rate limited", code="rate_limit_exceeded",
                           headers={"retry-after": "12"})
        self.assertEqual(failed_error(error)["message"],
                         "Every API key is rate limited. Please try again in 12s.")
        hinted = ProxyError("Please try again in 3s", code="rate_limit_exceeded",
                            headers={"retry-after": "3"})
        self.assertEqual(failed_error(hinted)["message"], "Please try again in 3s")

    def test_bridged_stream_uses_the_same_codes(self) -> None:
        transform = ChatToResponses("resp_b", 0, {"model": "m", "input": "hi"})
        events = sse_events(transform.error(ProxyError("no quota", code="quota_exceeded")))
        self.assertEqual(events[-1].event, "response.failed")
        self.assertEqual(events[-1].json()["response"]["error"]["code"], "insufficient_quota")


CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "description": "run", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
    {"type": "namespace", "name": "multi_agent_v1",
     "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}]},
    {"type": "web_search"},
]


class CodexToolsTests(SynchronousTestCase):
    """
    The tools the Codex CLI sends with every turn: on a chat backend the
    ones it cannot run are left out and reported, never a 400; a Responses
    backend gets them untouched.
    """

    def _proxy(self) -> MemoryProxy:
        return MemoryProxy(lambda u: config_data({
            "chat": backend_data(u, "sk-c"),
            "resp": backend_data(u, "sk-r", type="openai-responses"),
        }))

    def test_chat_backend(self) -> None:
        proxy = self._proxy()
        status, headers, _ = proxy.post("/v1/responses", {
            "model": "chat:gpt-x", "input": "hi", "tools": CODEX_TOOLS, "tool_choice": "auto"})
        self.assertEqual(status, 200)
        [seen] = proxy.fake.requests
        self.assertEqual([t["function"]["name"] for t in seen.body["tools"]],
                         ["exec_command", "multi_agent_v1__spawn"])
        self.assertEqual(seen.body["tool_choice"], "auto")
        self.assertNotIn("tools.namespace", headers["x-llmproxy-dropped-params"].split(","))
        self.assertIn("tools.web_search", headers["x-llmproxy-dropped-params"].split(","))

    def test_responses_backend(self) -> None:
        proxy = self._proxy()
        status, headers, _ = proxy.post("/v1/responses", {
            "model": "resp:gpt-x", "input": "hi", "tools": CODEX_TOOLS})
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].body["tools"], CODEX_TOOLS)
        self.assertNotIn("x-llmproxy-dropped-params", headers)

    def _call(self, proxy: MemoryProxy, stream: bool) -> list[dict[str, Any]]:
        """
        The C{function_call} items of a chat backend's answer calling
        C{multi_agent_v1__spawn}, whole or streamed.
        """
        proxy.fake.script.append(
            Stream(chat_tool_chunks("gpt-x", "multi_agent_v1__spawn", ['{"a"', ':1}']))
            if stream else Reply(200, chat_tool_completion("gpt-x", "multi_agent_v1__spawn",
                                                           '{"a":1}')))
        status, _, body = proxy.post("/v1/responses", {
            "model": "chat:gpt-x", "input": "hi", "tools": CODEX_TOOLS, "stream": stream})
        self.assertEqual(status, 200)
        if not stream:
            return [i for i in json.loads(body)["output"] if i["type"] == "function_call"]
        done = [e.json()["item"] for e in sse_events(body)
                if e.event == "response.output_item.done"]
        completed = sse_events(body)[-1].json()["response"]["output"]
        self.assertEqual(done, completed)
        added = [e.json()["item"] for e in sse_events(body)
                 if e.event == "response.output_item.added"]
        self.assertEqual([(i["name"], i["namespace"]) for i in added], [("spawn", "multi_agent_v1")])
        return done

    def test_call_maps_back_to_the_namespace(self) -> None:
        for stream in (False, True):
            [call] = self._call(self._proxy(), stream)
            self.assertEqual((call["namespace"], call["name"], call["arguments"]),
                             ("multi_agent_v1", "spawn", '{"a":1}'), stream)

    def test_plain_call_has_no_namespace(self) -> None:
        proxy = self._proxy()
        proxy.fake.script.append(Reply(200, chat_tool_completion("gpt-x", "exec_command", "{}")))
        _, _, body = proxy.post("/v1/responses", {
            "model": "chat:gpt-x", "input": "hi", "tools": CODEX_TOOLS})
        [call] = json.loads(body)["output"]
        self.assertEqual(call["name"], "exec_command")
        self.assertNotIn("namespace", call)

    def test_history_call_is_flattened(self) -> None:
        proxy = self._proxy()
        proxy.post("/v1/responses", {"model": "chat:gpt-x", "tools": CODEX_TOOLS, "input": [
            {"type": "message", "role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "namespace": "multi_agent_v1",
             "name": "spawn", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
        ]})
        [seen] = proxy.fake.requests
        [call] = seen.body["messages"][1]["tool_calls"]
        self.assertEqual(call["function"]["name"], "multi_agent_v1__spawn")

    def test_hosted_tool_choice_falls_back_to_auto(self) -> None:
        proxy = self._proxy()
        status, headers, _ = proxy.post("/v1/responses", {
            "model": "chat:gpt-x", "input": "hi", "tools": CODEX_TOOLS,
            "tool_choice": {"type": "web_search"}})
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].body["tool_choice"], "auto")
        self.assertIn("tool_choice", headers["x-llmproxy-dropped-params"].split(","))

    def test_hosted_tool_choice_on_responses_backend(self) -> None:
        proxy = self._proxy()
        status, headers, _ = proxy.post("/v1/responses", {
            "model": "resp:gpt-x", "input": "hi", "tools": CODEX_TOOLS,
            "tool_choice": {"type": "web_search"}})
        self.assertEqual(status, 200)
        self.assertEqual(proxy.fake.requests[0].body["tool_choice"], {"type": "web_search"})
        self.assertNotIn("x-llmproxy-dropped-params", headers)

    def test_allowed_tools_lose_hosted_ones(self) -> None:
        choice = {"type": "allowed_tools", "mode": "auto", "tools": [
            {"type": "function", "name": "exec_command"}, {"type": "web_search"}]}
        translated = responses_to_chat_request({"input": "hi", "tools": CODEX_TOOLS,
                                                "tool_choice": choice})
        self.assertEqual(translated.body["tool_choice"], {"type": "allowed_tools", "allowed_tools": {
            "tools": [{"type": "function", "function": {"name": "exec_command"}}], "mode": "auto"}})
        self.assertIn("tool_choice", translated.dropped)
        only_hosted = {**choice, "tools": [{"type": "web_search"}]}
        self.assertEqual(responses_to_chat_request({"input": "hi", "tool_choice": only_hosted})
                         .body["tool_choice"], "auto")

    def test_namespaced_call_to_a_chat_client(self) -> None:
        """
        A Responses upstream's call to a namespace tool reaches a Chat
        client (and llmproxy's own conversation store) by its flat name.
        """
        chat = responses_to_chat_completion({"id": "r", "status": "completed", "output": [
            {"type": "function_call", "call_id": "c", "namespace": "ns", "name": "t",
             "arguments": "{}"}]})
        self.assertEqual(chat["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
                         "ns__t")


_CHAT_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyzAB0123456789_-", min_size=1, max_size=40)


def _namespace(name: str, tools: list[str]) -> dict[str, Any]:
    return {"type": "namespace", "name": name, "description": "",
            "tools": [{"type": "function", "name": t, "parameters": {}} for t in tools]}


class NamespaceNamesTests(SynchronousTestCase):
    """
    The flat names of namespace tools: valid Chat names that map back to
    their tool, or a reported drop.
    """

    @given(st.lists(st.tuples(_CHAT_NAME, st.lists(_CHAT_NAME, max_size=4)), max_size=4),
           st.lists(_CHAT_NAME, max_size=3))
    def test_round_trip(self, groups: list[tuple[str, list[str]]], plain: list[str]) -> None:
        tools: list[Any] = [{"type": "function", "name": p} for p in plain]
        tools += [_namespace(ns, names) for ns, names in groups]
        table = NamespaceTable.of(tools)
        flat = [t["name"] for _, t in table.tools]
        self.assertEqual(len(flat), len(set(flat)))
        self.assertFalse(set(flat) & set(plain))
        for name in flat:
            self.assertRegex(name, r"^[a-zA-Z0-9_-]{1,64}$")
            namespace, original = table.call(name)
            self.assertIn((namespace, original), [(ns, n) for ns, names in groups for n in names])
        self.assertEqual(table.call("not_flattened"), (None, "not_flattened"))
        kept = set(table.names.values())
        for ns, names in groups:
            for n in names:
                self.assertTrue((ns, n) in kept or f"tools.namespace.{ns}.{n}" in table.dropped)

    @given(st.lists(st.tuples(_CHAT_NAME, st.lists(_CHAT_NAME, max_size=3)), max_size=3))
    def test_answer_round_trip(self, groups: list[tuple[str, list[str]]]) -> None:
        """
        What the Chat upstream was offered, it can call, and the Responses
        answer names the namespace's own tool.
        """
        request = {"model": "m", "input": "hi", "tools": [_namespace(ns, n) for ns, n in groups]}
        offered = responses_to_chat_request(request).body.get("tools", [])
        table = NamespaceTable.of(request["tools"])
        for tool in offered:
            flat = tool["function"]["name"]
            answer = chat_completion_to_response(
                chat_tool_completion("m", flat, "{}"), response_id="resp_x", request=request)
            [call] = answer["output"]
            self.assertEqual((call["namespace"], call["name"]), table.call(flat))

    def test_too_long_is_dropped(self) -> None:
        table = NamespaceTable.of([_namespace("n" * 40, ["t" * 30, "ok"])])
        self.assertEqual([t["name"] for _, t in table.tools], ["n" * 40 + "__ok"])
        self.assertEqual(table.dropped, (f"tools.namespace.{'n' * 40}.{'t' * 30}",))

    def test_collision_with_a_plain_tool_is_dropped(self) -> None:
        translated = responses_to_chat_request({"input": "hi", "tools": [
            {"type": "function", "name": "a__b"}, _namespace("a", ["b", "c"])]})
        self.assertEqual([t["function"]["name"] for t in translated.body["tools"]],
                         ["a__b", "a__c"])
        self.assertEqual(translated.dropped, ("tools.namespace.a.b",))

    def test_collision_between_namespaces_drops_both(self) -> None:
        table = NamespaceTable.of([_namespace("a", ["b__c"]), _namespace("a__b", ["c"]),
                                   _namespace("x", ["y"])])
        self.assertEqual(list(table.names), ["x__y"])
        self.assertEqual(table.dropped, ("tools.namespace.a.b__c", "tools.namespace.a__b.c"))

    def test_descriptions_and_odd_entries(self) -> None:
        table = NamespaceTable.of([{"type": "namespace", "name": "ns", "description": "Group.",
                                    "tools": [{"type": "function", "name": "f",
                                               "description": "Does f.", "strict": False},
                                              {"type": "custom", "name": "g"}]},
                                   {"type": "namespace", "name": "empty", "tools": []}])
        [(_, tool)] = table.tools
        self.assertEqual(tool, {"type": "function", "name": "ns__f",
                                "description": "Group.\n\nDoes f.", "strict": False})
        self.assertEqual(table.dropped, ("tools.namespace.ns.g", "tools.namespace"))
