"""
The C{openai-codex} backend over real HTTP: the OpenAI SDK through
llmproxy to L{FakeChatGPT}, with Codex C{auth.json} files from the
fixtures; accounts rotating and cooling like keys; the pooled usage, the
models and the status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from hypothesis import given
from hypothesis import strategies as st
import treq
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from llmproxy.backends import REGISTRY
from llmproxy.backends.codex import (
    CodexBackend, account_path, codex_keys, default_auth_file, rewrap_detail, usage_limit_reset, windows_of,
)
from llmproxy.backends.codex_stream import FillCompleted
from llmproxy.backends.keypool import KeyPool
from llmproxy.config import ApiKey, ConfigError, build_config
from llmproxy.exchange.outcome import Outcome, classify_status
from llmproxy.service import ProxyService
from llmproxy.testing import FakeChatGPT, config_data, listen_chatgpt, sse_json
from llmproxy.sse import encode_event
from llmproxy.testing.chatgpt import stream_events
from llmproxy.testing.codex import auth_data, write_auth_file
from llmproxy.testing.tokens import listen_tokens
from tests.harness import client, in_thread, post, sdk

#: Far beyond any test's clock.
EXP = 4_000_000_000
MESSAGES = [{"role": "user", "content": "hello codex"}]
CHAT_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather",
                    "parameters": CHAT_TOOLS[0]["function"]["parameters"]}]


class Codex(NamedTuple):
    """
    llmproxy with one C{openai-codex} backend, C{chatgpt}, at a fake.
    """

    url: str
    fake: FakeChatGPT
    service: ProxyService
    files: list[Path]
    clock: Any

    @property
    def backend(self) -> CodexBackend:
        backend = self.service.app.runtime.upstreams.backends["chatgpt"]
        assert isinstance(backend, CodexBackend)
        return backend


async def start_codex(
    case: TestCase, accounts: int = 1, clock: Any = None, **settings: Any
) -> Codex:
    """
    Start a L{FakeChatGPT} that accepts C{accounts} logins (tokens
    C{tok-N}, accounts C{acct-N}), their auth files, and llmproxy (proxy
    key C{pk}) with a backend C{chatgpt} rotating over them.
    """
    fake, port, base_url = await listen_chatgpt(reactor)
    case.addCleanup(port.stopListening)
    home = Path(case.mktemp())
    files = []
    for n in range(1, accounts + 1):
        fake.accept(f"tok-{n}", f"acct-{n}")
        files.append(write_auth_file(home / f"acct{n}" / "auth.json",
                                     auth_data(f"tok-{n}", exp=EXP, account_id=f"acct-{n}")))
    backend = {"type": "openai-codex", "base_url": base_url,
               "accounts": [str(f) for f in files], **settings}
    data = config_data({"chatgpt": backend}, proxy_keys=["pk"])
    config = build_config(data, environ={}, source="test.yaml", kinds=REGISTRY.kinds)
    service = ProxyService(config, reactor, clock=clock)
    proxy_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        service.app.site())
    case.addCleanup(service.pool.closeCachedConnections)
    case.addCleanup(proxy_port.stopListening)
    url = f"http://127.0.0.1:{proxy_port.getHost().port}"
    return Codex(url, fake, service, files, clock or reactor)


AUTH = {"authorization": "Bearer pk"}


class SDKTests(TestCase):
    async def test_streaming_chat_text(self) -> None:
        codex = await start_codex(self)

        def call() -> str:
            with sdk(codex.url, "pk") as c:
                stream = c.chat.completions.create(model="gpt-5.1-codex", messages=MESSAGES,
                                                   stream=True)
                return "".join(chunk.choices[0].delta.content or ""
                               for chunk in stream if chunk.choices)

        self.assertEqual(await in_thread(call), "chatgpt: hello codex")
        [seen] = codex.fake.requests
        self.assertEqual(seen.path, "/backend-api/codex/responses")
        self.assertIs(seen.body["store"], False)
        self.assertIs(seen.body["stream"], True)

    async def test_codex_headers(self) -> None:
        codex = await start_codex(self, client_version="0.77.0")
        status, headers, _ = await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "stream": True}, AUTH)
        self.assertEqual(status, 200)
        [seen] = codex.fake.requests
        token = json.loads(codex.files[0].read_text())["tokens"]["access_token"]
        got = seen.headers
        self.assertEqual(got["authorization"], f"Bearer {token}")
        self.assertEqual(got["chatgpt-account-id"], "acct-1")
        self.assertEqual(got["originator"], "codex_cli_rs")
        self.assertTrue(got["user-agent"].startswith("codex_cli_rs/0.77.0 ("), got["user-agent"])
        self.assertEqual(got["version"], "0.77.0")
        self.assertEqual(got["openai-beta"], "responses=experimental")
        self.assertEqual(got["accept"], "text/event-stream")
        self.assertEqual(got["session_id"], seen.body["prompt_cache_key"])
        self.assertEqual(headers["x-llmproxy-key"], "chatgpt#1")

    async def test_streaming_chat_tools(self) -> None:
        codex = await start_codex(self)
        codex.fake.calls.append(("get_weather", '{"city": "Paris"}'))

        def call() -> Any:
            with sdk(codex.url, "pk") as c:
                with c.chat.completions.stream(model="gpt-5.1-codex", messages=MESSAGES,
                                               tools=CHAT_TOOLS) as stream:
                    return stream.get_final_completion()

        final = await in_thread(call)
        [tool_call] = final.choices[0].message.tool_calls
        self.assertEqual((tool_call.function.name, json.loads(tool_call.function.arguments)),
                         ("get_weather", {"city": "Paris"}))
        self.assertEqual(final.choices[0].finish_reason, "tool_calls")
        self.assertEqual([t["name"] for t in codex.fake.requests[0].body["tools"]],
                         ["get_weather"])

    async def test_streaming_responses_text_and_tools(self) -> None:
        codex = await start_codex(self)
        codex.fake.calls.append(("get_weather", '{"city": "Oslo"}'))

        def call() -> tuple[list[Any], list[Any]]:
            with sdk(codex.url, "pk") as c:
                calls = list(c.responses.create(model="gpt-5.1-codex", input="weather?",
                                                tools=RESPONSES_TOOLS, stream=True))
                text = list(c.responses.create(model="gpt-5.1-codex", input="hello codex",
                                               instructions="Be brief.", stream=True))
                return calls, text

        calls, text = await in_thread(call)
        done = [e.item for e in calls if e.type == "response.output_item.done"]
        self.assertEqual([(i.type, i.name, i.arguments) for i in done],
                         [("function_call", "get_weather", '{"city": "Oslo"}')])
        self.assertEqual(calls[-1].type, "response.completed")
        deltas = "".join(e.delta for e in text if e.type == "response.output_text.delta")
        self.assertEqual(deltas, "chatgpt: hello codex")
        self.assertEqual(text[-1].type, "response.completed")
        self.assertEqual(codex.fake.requests[1].body["instructions"], "Be brief.")

    async def test_final_response_has_the_streamed_items(self) -> None:
        codex = await start_codex(self)
        codex.fake.calls.append(("get_weather", '{"city": "Rome"}'))

        def call() -> tuple[Any, Any]:
            with sdk(codex.url, "pk") as c:
                with c.responses.stream(model="gpt-5.1-codex", input="weather?",
                                        tools=RESPONSES_TOOLS) as stream:
                    calls = stream.get_final_response()
                with c.responses.stream(model="gpt-5.1-codex", input="hello codex") as stream:
                    text = stream.get_final_response()
                return calls, text

        calls, text = await in_thread(call)
        self.assertEqual([(i.type, i.name) for i in calls.output],
                         [("function_call", "get_weather")])
        self.assertEqual(text.output_text, "chatgpt: hello codex")


class NonStreamingTests(TestCase):
    """
    The ChatGPT backend only streams: whole answers are its stream,
    aggregated.
    """

    async def test_chat_text_and_tools(self) -> None:
        codex = await start_codex(self)
        codex.fake.calls.append(("get_weather", '{"city": "Lima"}'))

        def call() -> tuple[Any, Any]:
            with sdk(codex.url, "pk") as c:
                calls = c.chat.completions.create(model="gpt-5.1-codex", messages=MESSAGES,
                                                  tools=CHAT_TOOLS, max_tokens=50)
                text = c.chat.completions.create(model="gpt-5.1-codex", messages=MESSAGES)
                return calls, text

        calls, text = await in_thread(call)
        [tool_call] = calls.choices[0].message.tool_calls
        self.assertEqual((tool_call.function.name, json.loads(tool_call.function.arguments)),
                         ("get_weather", {"city": "Lima"}))
        self.assertEqual(calls.choices[0].finish_reason, "tool_calls")
        self.assertEqual(text.choices[0].message.content, "chatgpt: hello codex")
        self.assertIsNotNone(text.usage)
        for seen in codex.fake.requests:
            self.assertIs(seen.body["stream"], True)
            self.assertNotIn("max_output_tokens", seen.body)

    async def test_responses_text_tools_and_continuation(self) -> None:
        codex = await start_codex(self)
        codex.fake.calls.append(("get_weather", '{"city": "Kyiv"}'))

        def call() -> tuple[Any, Any]:
            with sdk(codex.url, "pk") as c:
                first = c.responses.create(model="gpt-5.1-codex", input="weather?",
                                           tools=RESPONSES_TOOLS)
                [fc] = first.output
                second = c.responses.create(
                    model="gpt-5.1-codex", previous_response_id=first.id, tools=RESPONSES_TOOLS,
                    input=[{"type": "function_call_output", "call_id": fc.call_id,
                            "output": "sunny"}])
                return first, second

        first, second = await in_thread(call)
        self.assertEqual([(i.type, i.name) for i in first.output],
                         [("function_call", "get_weather")])
        self.assertTrue(second.output_text)
        # The upstream stores nothing: llmproxy sends the whole conversation.
        seen = codex.fake.requests[1].body
        self.assertNotIn("previous_response_id", seen)
        kinds = [item.get("type", "message") for item in seen["input"]]
        self.assertEqual(kinds, ["message", "function_call", "function_call_output"])


    async def test_a_streamed_answer_can_be_continued(self) -> None:
        codex = await start_codex(self)

        def call() -> Any:
            with sdk(codex.url, "pk") as c:
                with c.responses.stream(model="gpt-5.1-codex", input="hello codex") as stream:
                    first = stream.get_final_response()
                return c.responses.create(model="gpt-5.1-codex", input="again",
                                          previous_response_id=first.id, stream=True)

        list(await in_thread(call))
        seen = codex.fake.requests[1].body
        self.assertNotIn("previous_response_id", seen)
        self.assertEqual([item.get("role") for item in seen["input"]],
                         ["user", "assistant", "user"])

    async def test_an_unknown_previous_response_is_a_404(self) -> None:
        codex = await start_codex(self)
        status, _, body = await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "previous_response_id": "resp_nope"}, AUTH)
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "previous_response_not_found")
        self.assertEqual(codex.fake.requests, [])


class WireRuleTests(TestCase):
    async def test_dropped_params_reported(self) -> None:
        codex = await start_codex(self)
        status, headers, body = await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "stream": True, "temperature": 0.2,
            "max_output_tokens": 50, "metadata": {"a": "b"}, "store": True}, AUTH)
        self.assertEqual(status, 200, body)
        self.assertEqual(set(headers["x-llmproxy-dropped-params"].split(",")),
                         {"temperature", "max_output_tokens", "metadata", "store"})
        sent = codex.fake.requests[0].body
        for name in ("temperature", "max_output_tokens", "metadata"):
            self.assertNotIn(name, sent)
        self.assertIs(sent["store"], False)
        self.assertTrue(sent["instructions"])

    async def test_one_conversation_one_session(self) -> None:
        codex = await start_codex(self)
        first = {"role": "user", "content": "start"}
        turns = [[first], [first, {"role": "assistant", "content": "ok"},
                           {"role": "user", "content": "more"}],
                 [{"role": "user", "content": "another conversation"}]]
        for messages in turns:
            status, _, _ = await post(self, codex.url + "/v1/chat/completions", {
                "model": "gpt-5.1-codex", "messages": messages, "stream": True}, AUTH)
            self.assertEqual(status, 200)
        sessions = [r.headers["session_id"] for r in codex.fake.requests]
        self.assertEqual(sessions[0], sessions[1])
        self.assertNotEqual(sessions[0], sessions[2])
        self.assertEqual([r.body["prompt_cache_key"] for r in codex.fake.requests], sessions)

    async def test_client_session_kept(self) -> None:
        codex = await start_codex(self)
        await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "stream": True,
            "prompt_cache_key": "my-session"}, AUTH)
        self.assertEqual(codex.fake.requests[0].headers["session_id"], "my-session")

    async def test_detail_errors_rewrapped(self) -> None:
        codex = await start_codex(self)
        codex.fake.errors.append((400, {"detail": "Unsupported model"}))
        status, _, body = await post(self, codex.url + "/v1/responses", {
            "model": "nope", "input": "hi", "stream": True}, AUTH)
        self.assertEqual(status, 400)
        self.assertEqual(json.loads(body)["error"]["message"], "Unsupported model")
        self.assertEqual(json.loads(body)["error"]["type"], "invalid_request_error")


class LoginTests(TestCase):
    async def test_401_rereads_newer_token_and_retries_once(self) -> None:
        codex = await start_codex(self)
        path = codex.files[0]
        write_auth_file(path, auth_data("tok-old", exp=EXP, account_id="acct-1"))

        def refreshed_meanwhile(recorded: Any) -> None:
            # The Codex CLI refreshes the file while llmproxy's request runs.
            write_auth_file(path, auth_data("tok-1", exp=EXP, account_id="acct-1"))

        codex.fake.on_request = refreshed_meanwhile
        status, _, body = await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "stream": True}, AUTH)
        self.assertEqual(status, 200, body)
        subjects = [codex.fake._subject(r) for r in codex.fake.requests]
        self.assertEqual(subjects, ["tok-old", "tok-1"])

    async def test_401_without_newer_token_says_what_to_do(self) -> None:
        codex = await start_codex(self)
        write_auth_file(codex.files[0], auth_data("tok-stale", exp=EXP, account_id="acct-1"))
        status, _, body = await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "stream": True}, AUTH)
        self.assertEqual(status, 401)
        message = json.loads(body)["error"]["message"]
        self.assertIn(f"refused the access token in {codex.files[0]}", message)
        self.assertIn("run any `codex` command", message)
        self.assertEqual(len(codex.fake.requests), 1)

    async def test_no_login_is_a_401_and_the_next_account_serves(self) -> None:
        codex = await start_codex(self, accounts=2)
        codex.files[0].unlink()
        for expected in ("chatgpt#2", "chatgpt#2"):
            status, headers, body = await post(self, codex.url + "/v1/responses", {
                "model": "gpt-5.1-codex", "input": "hi", "stream": True}, AUTH)
            self.assertEqual((status, headers["x-llmproxy-key"]), (200, expected))
        codex.files[1].unlink()
        codex.service.app.runtime.upstreams.pools["chatgpt"].mark_ok(
            codex.service.app.runtime.upstreams.pools["chatgpt"].keys[0])
        status, _, body = await post(self, codex.url + "/v1/responses", {
            "model": "gpt-5.1-codex", "input": "hi", "stream": True}, AUTH)
        self.assertEqual(status, 401)
        message = json.loads(body)["error"]["message"]
        self.assertIn("codex login", message)
        self.assertNotIn("tok-", message)

    async def test_a_fixed_login_serves_at_once(self) -> None:
        """
        An account whose login is missing is not rested for the hour a
        rejected API key gets: the user may log in the next minute.
        """
        codex = await start_codex(self)
        auth = codex.files[0].read_text()
        codex.files[0].unlink()
        status, _, body = await _post_responses(self, codex)
        self.assertEqual(status, 401)
        # The message names the file to fix.
        self.assertIn(f"{codex.files[0]} does not exist: run `codex login`",
                      json.loads(body)["error"]["message"])
        codex.files[0].write_text(auth)
        status, _, body = await _post_responses(self, codex)
        self.assertEqual(status, 200, body)


class OwnedCustodyTests(TestCase):
    """
    C{tokens: owned} through the backend: llmproxy refreshes its own copy
    of the login at the token endpoint, before expiry and on a 401.
    """

    async def _owned(self) -> tuple[Codex, Any, Path]:
        tokens, port, token_url = await listen_tokens(reactor, ttl=3600.0)
        self.addCleanup(port.stopListening)
        store = Path(self.mktemp()).absolute()
        codex = await start_codex(self, tokens="owned", token_url=token_url,
                                  token_store=str(store))
        for n in (1, 2):
            codex.fake.accept(f"access-{n}", "acct-1")
        return codex, tokens, store

    async def test_near_expiry_it_refreshes_first(self) -> None:
        codex, tokens, store = await self._owned()
        # The login's token expires in a minute: refreshed before use.
        write_auth_file(codex.files[0], auth_data(
            "tok-1", exp=reactor.seconds() + 60, account_id="acct-1", refresh="rt-1"))
        before = codex.files[0].read_bytes()
        status, _, body = await _post_responses(self, codex)
        self.assertEqual(status, 200, body)
        self.assertEqual(codex.fake._subject(codex.fake.requests[-1]), "access-1")
        self.assertEqual([c.outcome for c in tokens.calls], ["rotated"])
        # llmproxy keeps its own copy; the CLI's file is never written.
        self.assertEqual(codex.files[0].read_bytes(), before)
        [kept] = [p for p in store.iterdir() if p.suffix == ".json"]
        self.assertEqual(kept.stat().st_mode & 0o777, 0o600)

    async def test_a_401_refreshes_once_and_retries(self) -> None:
        codex, tokens, _ = await self._owned()
        write_auth_file(codex.files[0], auth_data(
            "tok-refused", exp=EXP, account_id="acct-1", refresh="rt-1"))
        status, _, body = await _post_responses(self, codex)
        self.assertEqual(status, 200, body)
        self.assertEqual([codex.fake._subject(r) for r in codex.fake.requests],
                         ["tok-refused", "access-1"])
        self.assertEqual([c.outcome for c in tokens.calls], ["rotated"])


def _post_responses(case: TestCase, codex: Codex) -> Any:
    return post(case, codex.url + "/v1/responses",
                {"model": "gpt-5.1-codex", "input": "hi", "stream": True}, AUTH)


class AccountRotationTests(TestCase):
    async def test_usage_limit_cools_the_account_until_its_reset(self) -> None:
        clock = Clock()
        clock.advance(1000)
        codex = await start_codex(self, accounts=2, clock=clock)
        codex.fake.exhausted["tok-1"] = 7200
        status, headers, _ = await _post_responses(self, codex)
        self.assertEqual((status, headers["x-llmproxy-key"]), (200, "chatgpt#2"))
        pool = codex.service.app.runtime.upstreams.pools["chatgpt"]
        first = pool.keys[0]
        self.assertEqual(pool.state(first).cooldown_until, 1000 + 7200)
        for _ in range(3):
            status, headers, _ = await _post_responses(self, codex)
            self.assertEqual(headers["x-llmproxy-key"], "chatgpt#2")
        clock.advance(7199)
        self.assertFalse(pool.available(first))
        del codex.fake.exhausted["tok-1"]
        clock.advance(1)
        keys = set()
        for _ in range(2):
            status, headers, _ = await _post_responses(self, codex)
            keys.add(headers["x-llmproxy-key"])
        self.assertEqual(keys, {"chatgpt#1", "chatgpt#2"})

    async def test_all_exhausted_is_a_429_with_a_truthful_retry_after(self) -> None:
        codex = await start_codex(self, accounts=2, clock=Clock())
        codex.fake.exhausted.update({"tok-1": 7200, "tok-2": 1800})
        status, headers, body = await _post_responses(self, codex)
        self.assertEqual(status, 429, body)
        self.assertEqual(headers["retry-after"], "1800")
        self.assertEqual(json.loads(body)["error"]["code"], "rate_limit_exceeded")

    async def test_the_account_with_most_left_is_preferred(self) -> None:
        codex = await start_codex(self, accounts=2)
        codex.fake.used.update({"tok-1": 90.0, "tok-2": 20.0})
        seen = []
        for _ in range(5):
            _, headers, _ = await _post_responses(self, codex)
            seen.append(headers["x-llmproxy-key"])
        # Round robin until each account said how much it has left.
        self.assertEqual(seen[:2], ["chatgpt#1", "chatgpt#2"])
        self.assertEqual(seen[2:], ["chatgpt#2"] * 3)


class SurfaceTests(TestCase):
    async def test_pooled_usage(self) -> None:
        codex = await start_codex(self, accounts=2)
        codex.fake.used.update({"tok-1": 90.0, "tok-2": 10.0})
        for _ in range(2):
            await _post_responses(self, codex)
        for path in ("/backend-api/wham/usage", "/api/codex/usage"):
            response = await client(self).get(codex.url + path, headers=AUTH)
            self.assertEqual(response.code, 200)
            usage = json.loads(await treq.content(response))
            self.assertEqual(usage["plan_type"], "plus")
            limits = usage["rate_limit"]
            self.assertEqual((limits["allowed"], limits["limit_reached"]), (True, False))
            self.assertEqual(limits["primary_window"]["used_percent"], 50)
            self.assertEqual(limits["primary_window"]["limit_window_seconds"], 300 * 60)
            self.assertEqual(limits["secondary_window"]["limit_window_seconds"], 10080 * 60)
            for window in (limits["primary_window"], limits["secondary_window"]):
                self.assertTrue(all(isinstance(v, int) for v in window.values()), window)
        response = await client(self).get(codex.url + "/backend-api/wham/usage")
        self.assertEqual(response.code, 401)

    async def test_pooled_usage_when_every_account_is_limited(self) -> None:
        codex = await start_codex(self, accounts=2, clock=Clock())
        codex.fake.exhausted.update({"tok-1": 7200, "tok-2": 1800})
        status, _, _ = await _post_responses(self, codex)
        self.assertEqual(status, 429)
        response = await client(self).get(codex.url + "/backend-api/wham/usage", headers=AUTH)
        limits = json.loads(await treq.content(response))["rate_limit"]
        self.assertEqual((limits["allowed"], limits["limit_reached"]), (False, True))
        self.assertEqual(limits["primary_window"]["used_percent"], 100)
        self.assertEqual(limits["primary_window"]["reset_after_seconds"], 1800)
        codex.clock.advance(1800)
        response = await client(self).get(codex.url + "/api/codex/usage", headers=AUTH)
        limits = json.loads(await treq.content(response))["rate_limit"]
        self.assertEqual((limits["allowed"], limits["limit_reached"]), (True, False))

    async def test_models_listed(self) -> None:
        codex = await start_codex(self, client_version="0.88.0")
        response = await client(self).get(codex.url + "/v1/models", headers=AUTH)
        ids = [m["id"] for m in json.loads(await treq.content(response))["data"]]
        self.assertIn("chatgpt:gpt-5.1-codex", ids)
        self.assertIn("gpt-5.1", ids)
        [seen] = codex.fake.requests
        self.assertEqual(seen.path, "/backend-api/codex/models?client_version=0.88.0")
        self.assertEqual(seen.headers["chatgpt-account-id"], "acct-1")

    async def test_models_fall_back_to_config(self) -> None:
        codex = await start_codex(self, models=["gpt-5-configured"])
        codex.fake.accounts.clear()
        response = await client(self).get(codex.url + "/v1/models", headers=AUTH)
        ids = [m["id"] for m in json.loads(await treq.content(response))["data"]]
        self.assertIn("chatgpt:gpt-5-configured", ids)

    async def test_status_shows_accounts_without_tokens(self) -> None:
        codex = await start_codex(self, accounts=2)
        codex.fake.used["tok-1"] = 42.0
        await _post_responses(self, codex)
        response = await client(self).get(codex.url + "/v1/llmproxy/status", headers=AUTH)
        text = await treq.content(response)
        accounts = json.loads(text)["backends"]["chatgpt"]["accounts"]
        self.assertEqual([a["name"] for a in accounts], ["chatgpt#1", "chatgpt#2"])
        self.assertEqual((accounts[0]["plan"], accounts[0]["expires_at"]),
                         ("plus", "2096-10-02T07:06:40Z"))
        self.assertEqual(accounts[0]["windows"]["primary"]["used_percent"], 42.0)
        for path in codex.files:
            tokens = json.loads(path.read_text())["tokens"]
            for name in ("id_token", "access_token", "refresh_token"):
                self.assertNotIn(tokens[name].encode(), text)


class FakeChatGPTTests(TestCase):
    async def test_enforces_the_wire_rules(self) -> None:
        fake, port, base_url = await listen_chatgpt(reactor)
        self.addCleanup(port.stopListening)
        fake.accept("tok-1", "acct-1")
        write = auth_data("tok-1", exp=EXP)["tokens"]["access_token"]
        headers = {"authorization": f"Bearer {write}", "chatgpt-account-id": "acct-1"}
        good = {"model": "m", "input": "hi", "store": False, "stream": True,
                "instructions": "x"}
        cases = [({**good, "store": True}, "Store must be set to false"),
                 ({**good, "stream": False}, "Stream must be set to true"),
                 ({k: v for k, v in good.items() if k != "instructions"},
                  "Instructions are required"),
                 ({**good, "max_output_tokens": 5}, "Unsupported parameter: max_output_tokens"),
                 ({**good, "temperature": 1}, "Unsupported parameter: temperature")]
        for body, detail in cases:
            status, _, answer = await post(self, base_url + "/responses", body, headers)
            self.assertEqual((status, json.loads(answer)), (400, {"detail": detail}))
        status, _, _ = await post(self, base_url + "/responses", good,
                                  {**headers, "chatgpt-account-id": "other"})
        self.assertEqual(status, 403)
        status, _, _ = await post(self, base_url + "/responses", good, {})
        self.assertEqual(status, 401)
        status, got, answer = await post(self, base_url + "/responses", good, headers)
        self.assertEqual(status, 200)
        self.assertIn("x-codex-primary-used-percent", got)
        events = sse_json(answer)
        self.assertEqual(events[-1]["response"]["output"], [])


class ConfigTests(SynchronousTestCase):
    def config(self, environ: dict[str, str] | None = None, **backend: Any) -> Any:
        data = config_data({"chatgpt": {"type": "openai-codex", **backend}})
        return build_config(data, environ=environ or {}, source="test.yaml",
                            kinds=REGISTRY.kinds).backends["chatgpt"]

    def test_accounts_are_keys(self) -> None:
        backend = self.config({"HOME": "/home/u", "ACCT": "/srv/b"},
                              accounts=["~/a/auth.json", "${ACCT}/auth.json"])
        self.assertEqual([(k.name, str(account_path(k))) for k in backend.keys],
                         [("chatgpt#1", "/home/u/a/auth.json"),
                          ("chatgpt#2", "/srv/b/auth.json")])
        self.assertNotIn("/home/u", repr(backend.keys))

    def test_default_auth_file(self) -> None:
        for environ, expected in [
            ({"HOME": "/h"}, "/h/.codex/auth.json"),
            ({"HOME": "/h", "CODEX_HOME": "/c"}, "/c/auth.json"),
            ({"HOME": "/h", "OPENAI_CODEX_PATH": "~/o"}, "/h/o/auth.json"),
        ]:
            self.assertEqual(default_auth_file(environ), expected)
            self.assertEqual([str(account_path(k)) for k in self.config(environ).keys], [expected])
        backend = self.config({"HOME": "/h"}, auth_file="~/x.json")
        self.assertEqual([str(account_path(k)) for k in backend.keys], ["/h/x.json"])

    def test_custody_is_checked(self) -> None:
        self.assertEqual(self.config(tokens="owned").options["tokens"], "owned")
        self.assertEqual(self.config().options["tokens"], "read-only")
        e = self.assertRaises(ConfigError, self.config, tokens="mine")
        self.assertIn("backends.chatgpt.tokens", str(e))

    def test_api_keys_are_not_its_keys(self) -> None:
        e = self.assertRaises(ConfigError, self.config, api_key="sk-x")
        self.assertIn("api_key", str(e))

    def test_an_account_listed_twice_is_one_key(self) -> None:
        keys = codex_keys("b", {"accounts": ("/a", "/a", "/b")}, {})
        self.assertEqual([(k.name, str(account_path(k))) for k in keys], [("b#1", "/a"), ("b#2", "/b")])

    def test_auth_file_and_accounts_together(self) -> None:
        keys = codex_keys("b", {"auth_file": "/c", "accounts": ("/a", "/c")}, {})
        self.assertEqual([str(account_path(k)) for k in keys], ["/c", "/a"])


class WireParsingTests(SynchronousTestCase):
    def test_windows(self) -> None:
        headers = Headers({"x-codex-primary-used-percent": ["12.5"],
                           "x-codex-primary-window-minutes": ["300"],
                           "x-codex-primary-reset-at": ["5000"],
                           "x-codex-secondary-used-percent": ["80"],
                           "x-codex-secondary-reset-after-seconds": ["60"]})
        found = windows_of(headers, 100.0)
        self.assertEqual((found["primary"].used_percent, found["primary"].window_minutes,
                          found["primary"].resets_at), (12.5, 300, 5000.0))
        self.assertEqual((found["secondary"].used_percent, found["secondary"].resets_at),
                         (80.0, 160.0))
        self.assertEqual(windows_of(Headers({"x-codex-primary-used-percent": ["nan"]}), 0), {})

    def test_usage_limit_reset(self) -> None:
        def body(**error: Any) -> bytes:
            return json.dumps({"error": {"type": "usage_limit_reached", **error}}).encode()

        self.assertEqual(usage_limit_reset(body(resets_at=900, resets_in_seconds=5), 100), 900)
        self.assertEqual(usage_limit_reset(body(resets_in_seconds=5), 100), 105)
        self.assertIsNone(usage_limit_reset(body(), 100))
        self.assertIsNone(usage_limit_reset(b'{"error": {"type": "other", "resets_at": 1}}', 0))
        self.assertIsNone(usage_limit_reset(b"not json", 0))

    def test_rewrap_detail(self) -> None:
        self.assertEqual(json.loads(rewrap_detail(400, b'{"detail": "Store must be false"}')),
                         {"error": {"message": "Store must be false",
                                    "type": "invalid_request_error", "param": None,
                                    "code": None}})
        self.assertEqual(json.loads(rewrap_detail(502, b'{"detail": {"x": 1}}'))["error"]["type"],
                         "server_error")
        for kept in (b'{"error": {"message": "m"}}', b"plain", b"[1]"):
            self.assertEqual(rewrap_detail(400, kept), kept)


class AccountPoolTests(SynchronousTestCase):
    """
    What the key pool and the outcome classification learnt for accounts.
    """

    def pool(self) -> Any:
        clock = Clock()
        return KeyPool("b", [ApiKey(f"b#{i}", f"/a{i}") for i in (1, 2, 3)], clock,
                       max_cooldown=60.0), clock

    def test_a_usage_limit_cools_exactly(self) -> None:
        pool, clock = self.pool()
        first, second = pool.keys[:2]
        pool.mark_rate_limited(first, 7200.0, exact=True)
        pool.mark_rate_limited(second, 7200.0)
        self.assertEqual(pool.state(first).cooldown_until, 7200.0)
        self.assertEqual(pool.state(second).cooldown_until, 60.0)
        pool.mark_rate_limited(pool.keys[2], None, exact=True)
        self.assertEqual(pool.state(pool.keys[2]).cooldown_until, 5.0)

    def test_preference_orders_the_free_keys(self) -> None:
        pool, clock = self.pool()
        left = {"b#1": 10.0, "b#2": 80.0, "b#3": 80.0}
        pool.mark_rate_limited(pool.keys[1], 30.0)
        orders = [[k.name for k in pool.ordered(lambda k: left[k.name])] for _ in range(2)]
        self.assertEqual(orders, [["b#3", "b#1", "b#2"], ["b#3", "b#1", "b#2"]])
        pool.mark_ok(pool.keys[1])
        # Equals keep their round-robin order (this turn starts at b#3).
        self.assertEqual([k.name for k in pool.ordered(lambda k: left[k.name])],
                         ["b#3", "b#2", "b#1"])
        self.assertEqual([k.name for k in pool.ordered()], ["b#1", "b#2", "b#3"])

    def test_usage_limit_reached_is_exact(self) -> None:
        body = b'{"error": {"type": "usage_limit_reached", "resets_in_seconds": 9000}}'
        verdict = classify_status(429, body, {"retry-after": "9000"}, 0.0)
        self.assertEqual((verdict.outcome, verdict.retry_after, verdict.exact),
                         (Outcome.RATE_LIMITED, 9000.0, True))
        plain = classify_status(429, b'{"error": {"type": "requests"}}',
                                {"retry-after": "9000"}, 0.0)
        self.assertFalse(plain.exact)


class _Reader(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.ended = True


class FillCompletedTests(SynchronousTestCase):
    @given(st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
           st.booleans())
    def test_completed_filled_others_byte_for_byte(self, cuts: list[int], call: bool) -> None:
        raw = b"".join(stream_events("m", "hello", ("f", '{"a": 1}') if call else None))
        reader = _Reader()
        fill = FillCompleted(reader)
        fill.makeConnection(None)  # type: ignore[arg-type]
        points = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
        for a, b in zip(points, points[1:]):
            fill.dataReceived(raw[a:b])
        fill.connectionLost(None)  # type: ignore[arg-type]
        self.assertTrue(reader.ended)
        before, after = sse_json(raw), sse_json(reader.data)
        self.assertEqual(before[:-1], after[:-1])
        self.assertTrue(reader.data.startswith(raw[:raw.index(b"response.completed")]))
        done = [e["item"] for e in before if e["type"] == "response.output_item.done"]
        self.assertEqual(after[-1]["response"]["output"], done)
        self.assertEqual({**after[-1]["response"], "output": []}, before[-1]["response"])

    def test_a_completed_output_is_kept(self) -> None:
        raw = (encode_event({"type": "response.output_item.done", "output_index": 0,
                             "item": {"id": "a"}})
               + encode_event({"type": "response.completed",
                               "response": {"output": [{"id": "b"}]}}))
        reader = _Reader()
        fill = FillCompleted(reader)
        fill.makeConnection(None)  # type: ignore[arg-type]
        fill.dataReceived(raw)
        self.assertEqual(reader.data, raw)
