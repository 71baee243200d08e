"""
The real Codex CLI, with its default tools, through llmproxy: a text turn
and a tool turn (a shell command run by Codex, its output sent back) on a
chat backend and on a Responses backend, and a turn on the mock.

Skipped, saying how to install it, where the CLI is absent (C{.ci/run}
installs it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from llmproxy.testing import (
    Recorded, Stream, backend_data, chat_chunks, chat_tool_chunks, config_data,
    function_call_events, responses_events,
)
from llmproxy.testing.chatgpt import FakeChatGPT, listen_chatgpt
from llmproxy.testing.codex import auth_data, write_auth_file
from llmproxy.testing.tokens import listen_tokens
from tests.codex_cli import CodexResult, Provider, codex_binary, codex_on, run_codex
from tests.harness import Proxy, post, start

ANSWER = "The command printed it."
#: A harmless command whose output is not in its own text.
COMMAND = "echo llmproxy-$((6 * 7))"
OUTPUT = "llmproxy-42"
SHELL_TOOLS = ("exec_command", "shell_command", "shell")


def _chat(upstream: str) -> Mapping[str, Any]:
    return config_data({"up": backend_data(upstream, "sk-up", models=["gpt-x"])})


def _responses(upstream: str) -> Mapping[str, Any]:
    return config_data({"up": backend_data(upstream, "sk-up", type="openai-responses",
                                           models=["gpt-x"])})


def _mock(upstream: str) -> Mapping[str, Any]:
    return config_data({"mock": {"type": "mock", "models": ["mock-echo"]}})


def _tool_names(tools: list[Any]) -> list[str]:
    """
    The function names a request offers, in either dialect.
    """
    return [t["function"]["name"] if "function" in t else t.get("name", "") for t in tools]


def shell_call(tools: list[Any]) -> tuple[str, str]:
    """
    The shell tool this Codex version declares among C{tools}, and the
    arguments that run L{COMMAND} with it.
    """
    names = _tool_names(tools)
    name = next((n for n in SHELL_TOOLS if n in names), None)
    assert name is not None, f"no shell tool among {names}"
    arguments = {"exec_command": {"cmd": COMMAND}, "shell_command": {"command": COMMAND},
                 "shell": {"command": ["bash", "-c", COMMAND]}}[name]
    return name, json.dumps(arguments)


def _script_tool_turn(proxy: Proxy, responses: bool) -> None:
    """
    Make the fake upstream answer Codex's first request with a call of its
    shell tool, and the next with text.
    """
    fake = proxy.fake

    def answer(recorded: Recorded) -> None:
        if len(fake.requests) == 1:
            name, arguments = shell_call(recorded.body["tools"])
            fake.script.append(Stream(
                function_call_events("gpt-x", name, [arguments]) if responses
                else chat_tool_chunks("gpt-x", name, [arguments])))
        else:
            fake.script.append(_text(responses))

    fake.on_request = answer


def _text(responses: bool) -> Stream:
    pieces = [w + " " for w in ANSWER.split(" ")]
    pieces[-1] = pieces[-1].strip()
    return Stream(responses_events("gpt-x", pieces) if responses
                  else chat_chunks("gpt-x", pieces, usage=True))


class CodexCLITests(TestCase):
    """
    C{codex exec} completes its turns (exit 0, the answer on stdout).
    """

    timeout = 300

    def setUp(self) -> None:
        codex_binary()

    def _ok(self, result: CodexResult) -> None:
        run = result.run
        self.assertFalse(run.timed_out, run.stderr)
        self.assertEqual(run.code, 0, run.stderr)

    def _codex_request(self, result: CodexResult) -> Any:
        [first, *_] = [e for e in result.exchanged if e.path == "/v1/responses"]
        return first

    async def test_mock(self) -> None:
        result = await codex_on(self, _mock, "Hello llmproxy", model="mock-echo")
        self._ok(result)
        # The mock calls Codex's first tool with its echo; Codex's refusal
        # of those arguments comes back as the mock's text.
        self.assertIn("Tool result:", result.run.stdout)
        self.assertEqual([e.status for e in result.exchanged], [200, 200])

    async def test_chat_text_turn(self) -> None:
        result = await codex_on(self, _chat, "Say hi", model="gpt-x",
                                prepare=lambda p: p.fake.script.append(_text(False)))
        self._ok(result)
        self.assertIn(ANSWER, result.run.stdout)
        sent = self._codex_request(result)
        kinds = {t["type"] for t in sent.body["tools"]}
        self.assertTrue({"namespace", "web_search"} <= kinds, kinds)
        dropped = sent.headers["x-llmproxy-dropped-params"].split(",")
        self.assertIn("tools.web_search", dropped)
        self.assertFalse([d for d in dropped if d.startswith("tools.namespace")], dropped)
        [upstream] = result.proxy.fake.requests
        offered = _tool_names(upstream.body["tools"])
        namespace = next(t for t in sent.body["tools"] if t["type"] == "namespace")
        for tool in namespace["tools"]:
            self.assertIn(f"{namespace['name']}__{tool['name']}", offered)
        self.assertNotIn("web_search", json.dumps(upstream.body["tools"]))

    async def test_chat_tool_turn(self) -> None:
        result = await codex_on(self, _chat, "Run the command", model="gpt-x",
                                prepare=lambda p: _script_tool_turn(p, responses=False))
        self._ok(result)
        self.assertIn(ANSWER, result.run.stdout)
        first, second = result.proxy.fake.requests
        [tool_message] = [m for m in second.body["messages"] if m["role"] == "tool"]
        self.assertIn(OUTPUT, json.dumps(tool_message["content"]))

    async def test_responses_text_turn(self) -> None:
        result = await codex_on(self, _responses, "Say hi", model="gpt-x",
                                prepare=lambda p: p.fake.script.append(_text(True)))
        self._ok(result)
        self.assertIn(ANSWER, result.run.stdout)
        sent = self._codex_request(result)
        [upstream] = result.proxy.fake.requests
        self.assertEqual(upstream.body["tools"], sent.body["tools"])
        self.assertNotIn("x-llmproxy-dropped-params", sent.headers)

    async def test_responses_tool_turn(self) -> None:
        result = await codex_on(self, _responses, "Run the command", model="gpt-x",
                                prepare=lambda p: _script_tool_turn(p, responses=True))
        self._ok(result)
        self.assertIn(ANSWER, result.run.stdout)
        first, second = result.proxy.fake.requests
        [output] = [i for i in second.body["input"] if i.get("type") == "function_call_output"]
        self.assertIn(OUTPUT, json.dumps(output["output"]))


class CodexCLIOnChatGPTTests(TestCase):
    """
    The Codex CLI through llmproxy's ChatGPT-login backend (C{openai-codex},
    here at a L{FakeChatGPT} that enforces the real backend's rules).
    """

    timeout = 300

    def setUp(self) -> None:
        codex_binary()

    async def _turn(self, prompt: str, tool: bool) -> tuple[CodexResult, FakeChatGPT]:
        fake, port, base_url = await listen_chatgpt(reactor)
        self.addCleanup(port.stopListening)
        fake.accept("tok-1", "acct-1")
        auth = write_auth_file(Path(self.mktemp()) / "auth.json",
                               auth_data("tok-1", exp=4_000_000_000, account_id="acct-1"))

        def answer(recorded: Recorded) -> None:
            if tool and len(fake.requests) == 1:
                fake.calls.append(shell_call(recorded.body["tools"]))

        fake.on_request = answer

        def config(upstream: str) -> Mapping[str, Any]:
            return config_data({"chatgpt": {"type": "openai-codex", "base_url": base_url,
                                            "auth_file": str(auth)}})

        result = await codex_on(self, config, prompt, model="gpt-5.1-codex")
        self.assertFalse(result.run.timed_out, result.run.stderr)
        self.assertEqual(result.run.code, 0, result.run.stderr)
        return result, fake

    async def test_text_turn(self) -> None:
        result, fake = await self._turn("Say hi", tool=False)
        [seen] = fake.requests
        self.assertIn("chatgpt: Say hi", result.run.stdout)
        self.assertIs(seen.body["store"], False)
        # Codex's own tools reach the ChatGPT backend as Codex sent them.
        sent = [e for e in result.exchanged if e.path == "/v1/responses"][0]
        self.assertEqual(seen.body["tools"], sent.body["tools"])

    async def test_tool_turn(self) -> None:
        result, fake = await self._turn("Run the command", tool=True)
        first, second = fake.requests
        [output] = [i for i in second.body["input"] if i.get("type") == "function_call_output"]
        self.assertIn(OUTPUT, json.dumps(output["output"]))
        self.assertEqual(second.headers["session_id"], first.headers["session_id"])


class CodexCLIBesideLlmproxyTests(TestCase):
    """
    A Codex CLI logged in with ChatGPT keeps working while llmproxy serves
    the same login in read-only custody: the CLI refreshes (its refresh
    token rotates), llmproxy only ever reads what the CLI wrote, so the CLI
    never finds its refresh token burnt.
    """

    timeout = 300

    def setUp(self) -> None:
        codex_binary()

    async def test_the_cli_refreshes_and_llmproxy_follows(self) -> None:
        chatgpt, port, base_url = await listen_chatgpt(reactor)
        self.addCleanup(port.stopListening)
        tokens, token_port, token_url = await listen_tokens(reactor)
        self.addCleanup(token_port.stopListening)
        for n in (1, 2, 3):
            chatgpt.accept(f"access-{n}", "acct-1")
        home = Path(self.mktemp()).absolute()
        # The login the CLI made nine days ago: its access token is no longer
        # accepted, and the CLI refreshes a login that old before using it.
        write_auth_file(home / "auth.json", auth_data(
            "access-0", exp=None, account_id="acct-1", refresh="rt-1",
            last_refresh="2026-01-01T00:00:00Z"))

        def config(upstream: str) -> Mapping[str, Any]:
            return config_data({"chatgpt": {
                "type": "openai-codex", "base_url": base_url, "token_url": token_url,
                "auth_file": str(home / "auth.json")}}, proxy_keys=["pk"])

        proxy = await start(self, config)

        async def through_llmproxy() -> tuple[int, Any]:
            status, _, body = await post(self, proxy.url + "/v1/responses", {
                "model": "gpt-5.1-codex", "input": "hi", "stream": False},
                {"authorization": "Bearer pk"})
            return status, json.loads(body)

        status, body = await through_llmproxy()
        self.assertEqual(status, 401, body)
        self.assertIn("codex", body["error"]["message"])

        chatgpt.require_instructions = False  # what the CLI sends is its business
        cli = Provider(base_url, id="chatgpt", env_key=None,
                       extra={"requires_openai_auth": True})
        env = {"CODEX_REFRESH_TOKEN_URL_OVERRIDE": token_url}
        run = await run_codex(self, cli, "Say hi", model="gpt-5.1-codex", codex_home=home,
                              environ=env)
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual([c.outcome for c in tokens.calls], ["rotated"])

        status, body = await through_llmproxy()
        self.assertEqual(status, 200, body)
        self.assertEqual(chatgpt._subject(chatgpt.requests[-1]), "access-1")

        # Nine more days: the CLI refreshes again, with the refresh token it
        # saved, which llmproxy (reading the same file meanwhile) never traded.
        saved = json.loads((home / "auth.json").read_text())
        write_auth_file(home / "auth.json", {**saved, "last_refresh": "2026-01-01T00:00:00Z"})
        run = await run_codex(self, cli, "Say hi again", model="gpt-5.1-codex",
                              codex_home=home, environ=env)
        self.assertEqual(run.code, 0, run.stderr)
        self.assertEqual([c.outcome for c in tokens.calls], ["rotated", "rotated"])
        status, body = await through_llmproxy()
        self.assertEqual(status, 200, body)
        self.assertEqual(chatgpt._subject(chatgpt.requests[-1]), "access-2")
